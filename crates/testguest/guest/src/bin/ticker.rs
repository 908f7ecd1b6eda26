//! Prints the RTC date, then `tick <n>` every `interval_ms` (default 50)
//! until `ticks` ticks (default 0: forever), then powers off. Tests use it
//! to watch a guest make progress: pause must stop the ticks, resume must
//! bring them back, and the date must be the host's.
//!
//! Between ticks it also reads COM1 (port 0x3f8 while LSR, port 0x3fd, has
//! bit 0 set) and echoes each complete input line (ended by CR or LF) as
//! `input: <the line as text>` (non-UTF-8 bytes shown as U+FFFD, at most
//! 120 bytes of a line kept; an empty line prints nothing). Console tests
//! use it to see that what is typed reaches the guest. It ignores the ACPI
//! power button: only a power-off from the host stops it early.
#![no_std]
#![no_main]

use rt::io::{inb, rdtsc, sleep_until, tsc_hz};

rt::guest!("ticker", main);

const COM1: u16 = 0x3f8;
/// Line status register; bit 0: data ready.
const LSR: u16 = COM1 + 5;
const LSR_DR: u8 = 1 << 0;
/// How often the UART is looked at while waiting for the next tick. Each
/// look is a VM exit and a wake-up from sleep (together ~0.1 ms of host CPU
/// on a PVM host), so not too often: at 10 ms an idle ticker takes ~2% of a
/// host CPU, at 1 ms ~12%.
const POLL_US: u64 = 10_000;

/// The input line being collected.
struct Line {
    buf: [u8; 120],
    len: usize,
}

impl Line {
    /// Takes what the UART has received; prints each completed line.
    fn drain(&mut self) {
        while inb(LSR) & LSR_DR != 0 {
            let b = inb(COM1);
            if b == b'\r' || b == b'\n' {
                if self.len > 0 {
                    let bytes = &self.buf[..self.len];
                    match core::str::from_utf8(bytes) {
                        Ok(s) => rt::println!("input: {s}"),
                        Err(_) => {
                            rt::print!("input: ");
                            for c in bytes.utf8_chunks() {
                                rt::print!("{}", c.valid());
                                if !c.invalid().is_empty() {
                                    rt::print!("\u{fffd}");
                                }
                            }
                            rt::println!();
                        }
                    }
                    self.len = 0;
                }
            } else if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }
}

/// Waits `us` microseconds, echoing console input meanwhile. It sleeps
/// (`rt::io::sleep_until`) between looks at the UART: no interrupts, it
/// polls.
fn wait_reading(us: u64, line: &mut Line) {
    let per_us = tsc_hz() / 1_000_000;
    let end = rdtsc() + per_us * us;
    loop {
        line.drain();
        let now = rdtsc();
        if now >= end {
            return;
        }
        sleep_until((now + per_us * POLL_US).min(end));
    }
}

fn main() -> ! {
    let t = rt::rtc::now();
    rt::println!(
        "rtc: {:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second
    );
    let interval_us = rt::cmdline::get_u64("interval_ms", 50) * 1000;
    let ticks = rt::cmdline::get_u64("ticks", 0);
    let mut line = Line {
        buf: [0; 120],
        len: 0,
    };
    let mut n = 0u64;
    loop {
        n += 1;
        rt::println!("tick {n}");
        if ticks != 0 && n >= ticks {
            rt::power::power_off()
        }
        wait_reading(interval_us, &mut line);
    }
}
