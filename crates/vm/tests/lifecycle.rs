//! Pause, resume and host power-off of a running VM, through the library.

mod common;

use std::time::Duration;

use common::*;
use vm::{RunState, VmExit};

const T: Duration = Duration::from_secs(60);

fn ticker(vcpus: u32) -> (vm::Vm, Console) {
    guest_vm("ticker", "interval_ms=10", vcpus)
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    if !kvm_or_skip() {
        return;
    }
    // 4 vCPUs: three sit in wait-for-SIPI inside KVM_RUN and must be kicked
    // out for the pause to complete.
    let (mut vm, console) = ticker(4);
    let h = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    console.wait_count("tick ", 3, T);

    for _ in 0..3 {
        assert!(h.pause());
        assert_eq!(h.state(), RunState::Paused);
        let frozen = console.count("tick ");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(console.count("tick "), frozen, "guest ran while paused");
        assert!(h.resume());
        assert_eq!(h.state(), RunState::Running);
        console.wait_count("tick ", frozen + 3, T);
    }
    assert!(!h.resume(), "resume of a running VM is refused");

    h.power_off();
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::Stopped);
}

#[test]
fn power_off_while_paused() {
    if !kvm_or_skip() {
        return;
    }
    let (mut vm, console) = ticker(2);
    let h = vm.handle();
    let runner = std::thread::spawn(move || vm.run());
    console.wait_count("tick ", 1, T);
    assert!(h.pause());
    h.power_off();
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::Stopped);
    assert!(!h.pause(), "a stopped VM cannot be paused");
}
