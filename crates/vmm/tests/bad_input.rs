//! Bad input: one clear line on stderr, a non-zero exit, nothing left behind.

mod common;

use common::*;

fn one_line_error(o: &Outcome, code: i32, needle: &str) {
    assert_eq!(o.code(), Some(code), "{o:?}");
    assert!(o.stderr.contains(needle), "expected {needle:?}: {o:?}");
    assert_eq!(o.stderr.trim_end().lines().count(), 1, "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
}

#[test]
fn missing_or_unreadable_kernel() {
    if !kvm_or_skip() {
        return;
    }
    let o = run(
        {
            let mut c = vmm();
            c.args(["-k", "/nonexistent/vmlinuz"]);
            c
        },
        std::time::Duration::from_secs(30),
    );
    one_line_error(&o, 1, "/nonexistent/vmlinuz: No such file or directory");
}

#[test]
fn a_file_that_is_no_kernel() {
    if !kvm_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk");
    std::fs::write(&junk, vec![0x90u8; 8192]).unwrap();
    let mut c = vmm();
    c.arg("-k").arg(&junk);
    let o = run(c, std::time::Duration::from_secs(30));
    one_line_error(&o, 1, "not a kernel");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn memory_too_small_or_too_large() {
    if !kvm_or_skip() {
        return;
    }
    let o = run_guest_mem("1M");
    one_line_error(&o, 1, "too small");
    let o = run_guest_mem("64T");
    one_line_error(&o, 1, "more than this host has");
    let o = run_guest_mem("lots");
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("not a size"), "{o:?}");
}

fn run_guest_mem(size: &str) -> Outcome {
    let mut c = vmm();
    c.args(["-m", size, "-k"]).arg(guest("hello"));
    run(c, std::time::Duration::from_secs(30))
}

#[test]
fn too_many_vcpus() {
    if !kvm_or_skip() {
        return;
    }
    let o = run_guest("hello", &["-c", "100000"]);
    one_line_error(&o, 1, "vCPUs asked");
    let o = run_guest("hello", &["-c", "0"]);
    one_line_error(&o, 1, "at least one vCPU");
}

#[test]
fn unknown_cpu_feature() {
    let o = run_guest("hello", &["--cpu-hide", "warp-drive"]);
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("unknown CPU feature"), "{o:?}");
}

#[test]
fn bad_cpu_identity_is_a_usage_error() {
    for (args, needle) in [
        (
            &["--cpu-vendor", "via"][..],
            "must be intel, amd or 12 printable ASCII characters",
        ),
        (&["--cpu-family", "0"], "must be 1 to 270"),
        (&["--cpu-family", "0x10f"], "must be 1 to 270"),
        (&["--cpu-model", "256"], "must be 0 to 255"),
        (&["--cpu-stepping", "16"], "must be 0 to 15"),
        (
            &["--cpu-family", "5", "--cpu-model", "16"],
            "cpu family 5 cannot have model 16",
        ),
        (
            &[
                "--cpu-vendor",
                "amd",
                "--cpu-family",
                "6",
                "--cpu-model",
                "44",
            ],
            "cpu family 6 cannot have model 44 with vendor AuthenticAMD",
        ),
    ] {
        let o = run_guest("hello", args);
        assert_eq!(o.code(), Some(2), "{args:?}: {o:?}");
        assert!(o.stderr.contains(needle), "{args:?}: {o:?}");
        assert!(o.stdout.is_empty(), "{o:?}");
    }
}

/// The host's CPU vendor, as CPUID leaf 0 gives it to this (host) process.
fn host_vendor() -> [u8; 12] {
    // SAFETY: CPUID is always available on x86-64. (`__cpuid` is a safe
    // function from Rust 1.87 on; the workspace supports older ones.)
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid(0) };
    let mut v = [0u8; 12];
    for (i, reg) in [r.ebx, r.edx, r.ecx].into_iter().enumerate() {
        v[i * 4..i * 4 + 4].copy_from_slice(&reg.to_le_bytes());
    }
    v
}

#[test]
fn a_model_the_hosts_vendor_cannot_show() {
    if !kvm_or_skip() {
        return;
    }
    // Family 6 with model 44 and the vendor left to the host: on an AMD
    // host, AMD family 6, which reads no extended model. Refused once the
    // VM knows the host's vendor.
    let o = run_guest("hello", &["--cpu-family", "6", "--cpu-model", "44"]);
    if host_vendor() == *b"AuthenticAMD" {
        one_line_error(
            &o,
            1,
            "vmm: cpu family 6 cannot have model 44 with vendor AuthenticAMD: \
             AMD CPUs read the extended model field only from family 15 on \
             (vendor from the host)",
        );
    } else {
        assert_eq!(o.code(), Some(0), "{o:?}");
    }
}

#[test]
fn control_socket_on_stdin_with_a_stdio_console() {
    // vmd's --control-fd 0 is stdin, which a stdio console would read too.
    let o = run_guest("hello", &["--control-fd", "0", "-s", "stdio"]);
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("--control-fd 0 is stdin"), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
}
