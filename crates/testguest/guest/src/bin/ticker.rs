//! Prints the RTC date, then `tick <n>` every `interval_ms` (default 50)
//! until `ticks` ticks (default 0: forever), then powers off. Tests use it
//! to watch a guest make progress: pause must stop the ticks, resume must
//! bring them back, and the date must be the host's.
#![no_std]
#![no_main]

use rt::io::{cmos_read, delay_us};

rt::guest!("ticker", main);

const RTC_SECONDS: u8 = 0x00;
const RTC_STATUS_A: u8 = 0x0a;
const RTC_STATUS_B: u8 = 0x0b;
/// Status A bit 7: an update is in progress, the time bytes may be torn.
const UIP: u8 = 0x80;
/// Status B bit 2: binary (not BCD) data mode.
const DM_BINARY: u8 = 0x04;

fn from_bcd(v: u8, binary: bool) -> u32 {
    if binary {
        u32::from(v)
    } else {
        u32::from(v >> 4) * 10 + u32::from(v & 0xf)
    }
}

/// Reads (year, month, day, hour, minute, second) the way firmware does:
/// wait out an update, read, and read again until two reads agree.
fn rtc_now() -> [u32; 6] {
    let read = || {
        while cmos_read(RTC_STATUS_A) & UIP != 0 {
            rt::io::pause();
        }
        [0x32u8, 0x09, 0x08, 0x07, 0x04, 0x02, RTC_SECONDS].map(cmos_read)
    };
    let mut raw = read();
    loop {
        let again = read();
        if again == raw {
            break;
        }
        raw = again;
    }
    let bin = cmos_read(RTC_STATUS_B) & DM_BINARY != 0;
    let v = raw.map(|b| from_bcd(b, bin));
    [v[0] * 100 + v[1], v[2], v[3], v[4], v[5], v[6]]
}

fn main() -> ! {
    let [y, mo, d, h, mi, s] = rtc_now();
    rt::println!("rtc: {y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
    let interval_us = rt::cmdline::get_u64("interval_ms", 50) * 1000;
    let ticks = rt::cmdline::get_u64("ticks", 0);
    let mut n = 0u64;
    loop {
        n += 1;
        rt::println!("tick {n}");
        if ticks != 0 && n >= ticks {
            rt::power::power_off()
        }
        delay_us(interval_us);
    }
}
