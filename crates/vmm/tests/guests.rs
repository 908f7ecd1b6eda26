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
fn another_cpu_identity_boots() {
    if !kvm_or_skip() {
        return;
    }
    // KVM takes the CPUID (KVM_SET_CPUID2) and the guest runs. What the
    // guest reads is not checked here: the test guests read CPUID at CPL3,
    // where this project's PVM hosts return the host's leaves.
    let o = run_guest(
        "hello",
        &[
            "--cpu-vendor",
            "intel",
            "--cpu-family",
            "6",
            "--cpu-model",
            "44",
            "--cpu-stepping",
            "2",
            "--cpu-hide",
            "cx16,xsave",
        ],
    );
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert!(o.stdout.contains("hello from testguest"), "{o:?}");
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

/// Seconds since the epoch for "YYYY-MM-DD HH:MM:SS" (UTC), by the civil
/// calendar (days-from-civil), to compare with the host clock.
fn unix_from(s: &str) -> i64 {
    let n: Vec<i64> = s
        .split(['-', ' ', ':'])
        .map(|x| x.parse().unwrap_or_else(|_| panic!("bad date {s:?}")))
        .collect();
    let (y, m, d) = (n[0] - i64::from(n[1] <= 2), n[1], n[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n[3] * 3600 + n[4] * 60 + n[5]
}

#[test]
fn rtc_has_the_host_date() {
    if !kvm_or_skip() {
        return;
    }
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let o = run_guest("ticker", &["-a", "ticks=1"]);
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(o.code(), Some(0), "{o:?}");
    let line = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("rtc: "))
        .expect("rtc line");
    let t = unix_from(line.trim());
    assert!(
        before - 1 <= t && t <= after + 1,
        "guest {line} vs host {before}..{after}"
    );
    assert_eq!(unix_from("2026-11-21 06:30:00"), 1_795_242_600);
    assert_eq!(unix_from("2000-03-01 00:00:00"), 951_868_800);
}

#[test]
fn serial_on_a_pty() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    if !kvm_or_skip() {
        return;
    }
    let mut child = vmm()
        .args([
            "-m",
            "16M",
            "-s",
            "pty",
            "--grace",
            "1",
            "-a",
            "interval_ms=20",
            "-k",
        ])
        .arg(guest("ticker"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let path = line
        .trim()
        .strip_prefix("vmm: serial console on ")
        .unwrap_or_else(|| panic!("no pty announced: {line:?}"))
        .to_owned();
    let mut pty = std::fs::File::open(&path).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    let start = std::time::Instant::now();
    while !String::from_utf8_lossy(&seen).contains("tick 3\r\n")
        && !String::from_utf8_lossy(&seen).contains("tick 3\n")
    {
        assert!(
            start.elapsed().as_secs() < 60,
            "{}",
            String::from_utf8_lossy(&seen)
        );
        let n = pty.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    // SIGTERM is a host stop: exit status 5.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(30));
    assert_eq!(status.code(), Some(5));
}
