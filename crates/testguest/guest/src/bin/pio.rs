//! Port I/O benchmark: `count=N` (default 100000) byte writes to `port=P`
//! (default 0x80) from CPL3, timed with the TSC. Each one is a VM exit.
#![no_std]
#![no_main]

use rt::io::{outb, rdtsc};

rt::guest!("pio", main);

fn main() -> ! {
    let count = rt::cmdline::get_u64("count", 100_000);
    let port = rt::cmdline::get_u64("port", 0x80) as u16;
    let start = rdtsc();
    for _ in 0..count {
        outb(port, 0);
    }
    let cycles = rdtsc() - start;
    rt::println!("pio: count={count} cycles={cycles}");
    rt::power::power_off()
}
