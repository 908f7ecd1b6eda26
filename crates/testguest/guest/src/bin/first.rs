//! Writes `!` to COM1 as its very first instruction (see `rt::guest!`'s
//! early mark), then its banner, then powers off. The P2 benchmark times
//! the VMM's start to that first port I/O, which keeps the guest's own
//! boot (slow CPL0 emulation on PVM hosts) out of the figure.
#![no_std]
#![no_main]

rt::guest!("first", main, b'!');

fn main() -> ! {
    rt::power::power_off()
}
