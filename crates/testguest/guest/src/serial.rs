//! The console: 16550 UART COM1 at port 0x3f8, polled. Output from several
//! CPUs is serialised by a spinlock so lines do not interleave.
//!
//! The transmit FIFO is used: once the line status says the transmitter
//! is empty, 16 bytes may be written without looking again. Every port
//! access is a VM exit (~30 µs on PVM hosts), so this halves the cost of
//! printing compared with a status read before every byte.

use crate::io::{inb, outb, pause};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

const COM1: u16 = 0x3f8;
/// FIFO control register (write): enable, clear both FIFOs.
const FCR: u16 = COM1 + 2;
const FCR_ENABLE_CLEAR: u8 = 0x07;
/// Line status register; bit 5: transmit holding register (FIFO) empty.
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 1 << 5;
const TX_FIFO: u8 = 16;

/// Bytes that may still go into the transmit FIFO without a status read;
/// `u8::MAX` until the FIFO has been enabled.
static TX_ROOM: AtomicU8 = AtomicU8::new(u8::MAX);

static LOCK: AtomicBool = AtomicBool::new(false);

/// Writes bytes to COM1. Use it through [`print!`](crate::print) and
/// [`println!`](crate::println), which hold the lock for the whole message.
pub struct Serial;

impl Serial {
    pub fn write_byte(b: u8) {
        let mut room = TX_ROOM.load(Ordering::Relaxed);
        if room == u8::MAX {
            outb(FCR, FCR_ENABLE_CLEAR);
            room = 0;
        }
        if room == 0 {
            // Bounded: a missing UART reads LSR as 0xff, a stuck one must
            // not hang the guest.
            for _ in 0..100_000 {
                if inb(LSR) & LSR_THRE != 0 {
                    break;
                }
                pause();
            }
            room = TX_FIFO;
        }
        outb(COM1, b);
        TX_ROOM.store(room - 1, Ordering::Relaxed);
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(Serial::write_byte);
        Ok(())
    }
}

fn lock() {
    while LOCK.swap(true, Ordering::Acquire) {
        while LOCK.load(Ordering::Relaxed) {
            pause();
        }
    }
}

fn unlock() {
    LOCK.store(false, Ordering::Release);
}

#[doc(hidden)]
pub fn print_fmt(args: fmt::Arguments) {
    lock();
    let _ = Serial.write_fmt(args);
    unlock();
}

/// Prints even if another CPU died holding the lock (exception and panic
/// reports): waits for the lock a while, then prints anyway.
pub fn print_forced(args: fmt::Arguments) {
    let mut locked = false;
    for _ in 0..10_000_000 {
        if !LOCK.swap(true, Ordering::Acquire) {
            locked = true;
            break;
        }
        pause();
    }
    let _ = Serial.write_fmt(args);
    if locked {
        unlock();
    }
}

/// Like `std::print!`, to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::print_fmt(format_args!($($arg)*)) };
}

/// Like `std::println!`, to COM1 ("\n" line ends).
#[macro_export]
macro_rules! println {
    () => { $crate::serial::print_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::print_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
