//! Prints a greeting and powers off through ACPI.
#![no_std]
#![no_main]

rt::guest!("hello", main);

fn main() -> ! {
    rt::println!("hello from testguest");
    rt::power::power_off()
}
