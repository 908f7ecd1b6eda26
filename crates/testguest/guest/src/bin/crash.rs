//! Triple-faults: the VMM must report a crash (KVM_EXIT_SHUTDOWN).
#![no_std]
#![no_main]

rt::guest!("crash", main);

fn main() -> ! {
    rt::println!("crash: triple fault next");
    rt::triple_fault()
}
