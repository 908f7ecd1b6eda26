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
fn control_socket_on_stdin_with_a_stdio_console() {
    // vmd's --control-fd 0 is stdin, which a stdio console would read too.
    let o = run_guest("hello", &["--control-fd", "0", "-s", "stdio"]);
    assert_eq!(o.code(), Some(2), "{o:?}");
    assert!(o.stderr.contains("--control-fd 0 is stdin"), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
}
