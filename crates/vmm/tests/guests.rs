//! The foreground runner boots each test guest on real KVM.

mod common;

use common::*;

#[test]
fn hello_via_pvh_and_64bit_entry() {
    if !kvm_or_skip() {
        return;
    }
    for (boot, via) in [("auto", "pvh"), ("pvh", "pvh"), ("linux64", "elf64")] {
        let o = run_guest("hello", &["--boot", boot, "-a", "greeting=yes x=1"]);
        assert_eq!(o.code(), Some(0), "{boot}: {o:?}");
        assert!(
            o.stdout.contains(&format!(
                "testguest hello: boot via {via} cmdline 'greeting=yes x=1'"
            )),
            "{boot}: {o:?}"
        );
        assert!(o.stdout.contains("hello from testguest"), "{boot}: {o:?}");
    }
}

#[test]
fn every_vcpu_reports_in() {
    if !kvm_or_skip() {
        return;
    }
    for n in [1u32, 2, 4] {
        let o = run_guest("smp", &["-c", &n.to_string()]);
        assert_eq!(o.code(), Some(0), "{n} cpus: {o:?}");
        for i in 0..n {
            assert!(
                o.stdout.contains(&format!("smp: cpu {i} apic {i} online")),
                "cpu {i}/{n}: {o:?}"
            );
        }
        assert!(
            o.stdout.contains(&format!("smp: {n}/{n} cpus online")),
            "{n} cpus: {o:?}"
        );
    }
}

#[test]
fn guest_reset_reboots_in_place() {
    if !kvm_or_skip() {
        return;
    }
    let o = run_guest("reset", &["-a", "resets=2"]);
    assert_eq!(o.code(), Some(0), "{o:?}");
    for k in 1..=3 {
        assert!(
            o.stdout.contains(&format!("reset: boot {k}")),
            "boot {k}: {o:?}"
        );
    }
    assert!(o.stdout.contains("reset: done after 2 resets"), "{o:?}");
}

#[test]
fn guest_reset_ends_the_vm_with_no_reboot() {
    if !kvm_or_skip() {
        return;
    }
    let o = run_guest("reset", &["--no-reboot"]);
    assert_eq!(o.code(), Some(3), "{o:?}");
    assert!(o.stdout.contains("reset: requesting reset"), "{o:?}");
    assert!(!o.stdout.contains("reset: boot 2"), "{o:?}");
}

#[test]
fn acpi_power_off_exits_zero() {
    if !kvm_or_skip() {
        return;
    }
    let o = run_guest("poweroff", &["-c", "2"]);
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert!(
        o.stdout
            .contains("poweroff: ACPI PM1a_CNT port 0x604 SLP_TYP 5"),
        "{o:?}"
    );
}

#[test]
fn triple_fault_is_a_crash_with_registers() {
    if !kvm_or_skip() {
        return;
    }
    let o = run_guest("crash", &[]);
    assert_eq!(o.code(), Some(4), "{o:?}");
    assert!(o.stdout.contains("crash: triple fault next"), "{o:?}");
    assert!(o.stderr.contains("triple fault"), "{o:?}");
    assert!(
        o.stderr.contains("rip=0x") && o.stderr.contains("cr3=0x"),
        "{o:?}"
    );
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
}

#[test]
fn serial_to_a_file() {
    if !kvm_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-serial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("console.log");
    let dest = format!("file:{}", path.display());
    let o = run_guest("hello", &["-s", &dest]);
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(log.contains("hello from testguest"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}
