//! Powers off through ACPI straight away.
#![no_std]
#![no_main]

rt::guest!("poweroff", main);

fn main() -> ! {
    rt::println!("poweroff: powering off");
    rt::power::power_off()
}
