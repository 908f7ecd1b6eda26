//! Starts every CPU of the MADT; each prints `smp: cpu <i> apic <id> online`.
#![no_std]
#![no_main]

rt::guest!("smp", main);

fn main() -> ! {
    let (online, total) = rt::smp::start_aps();
    if online == total {
        rt::println!("smp: {online}/{total} cpus online");
    } else {
        rt::println!("smp: only {online}/{total} cpus online");
    }
    rt::power::power_off()
}
