//! The console: 8250 UART COM1 at port 0x3f8, polled. Output from several
//! CPUs is serialised by a spinlock so lines do not interleave.

use crate::io::{inb, outb, pause};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3f8;
/// Line status register; bit 5: transmit holding register empty.
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 1 << 5;

static LOCK: AtomicBool = AtomicBool::new(false);

/// Writes bytes to COM1. Use it through [`print!`](crate::print) and
/// [`println!`](crate::println), which hold the lock for the whole message.
pub struct Serial;

impl Serial {
    pub fn write_byte(b: u8) {
        // Bounded: a missing UART reads LSR as 0xff, a stuck one must not
        // hang the guest.
        for _ in 0..100_000 {
            if inb(LSR) & LSR_THRE != 0 {
                break;
            }
            pause();
        }
        outb(COM1, b);
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
