//! Resets the VM `resets=N` times (default 1), counting boots in CMOS NVRAM
//! byte 0x38 (it survives a VM reset), then clears the count and powers off.
#![no_std]
#![no_main]

use rt::io::{cmos_read, cmos_write};

rt::guest!("reset", main);

/// A CMOS NVRAM byte nothing else uses.
const BOOT_COUNTER: u8 = 0x38;

fn main() -> ! {
    let boot = cmos_read(BOOT_COUNTER).wrapping_add(1);
    cmos_write(BOOT_COUNTER, boot);
    rt::println!("reset: boot {boot}");
    let resets = rt::cmdline::get_u64("resets", 1);
    if u64::from(boot) <= resets {
        rt::println!("reset: requesting reset");
        rt::power::reset()
    }
    rt::println!("reset: done after {} resets", boot - 1);
    cmos_write(BOOT_COUNTER, 0);
    rt::power::power_off()
}
