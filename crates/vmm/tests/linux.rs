//! Linux boot-protocol conformance against a real distribution kernel.
//!
//! Debian's linux-image-cloud-amd64 (fetched by `.ci/fetch-linux`, never
//! installed) is booted as a bzImage and as an ELF through its PVH entry.
//! On this project's PVM hosts the kernel stops later in early boot (its
//! int3 self-test and cmpxchg16b are not emulated at CPL0); we assert what
//! boots here: the banner, our exact command line, and the e820 map we
//! built, line for line.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const MEM: u64 = 256 << 20;

fn kernel_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("VMD_LINUX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/linux"));
    if dir.join("vmlinuz").exists() && dir.join("vmlinux").exists() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{}: no kernel; run .ci/fetch-linux {0}", dir.display());
    }
    eprintln!(
        "skipping: no kernel in {} (run .ci/fetch-linux {0})",
        dir.display()
    );
    None
}

/// The lines Linux prints for our e820 map (`BIOS-e820: [mem A-B] type`)
/// of a VM without PCI devices, as these are.
fn expected_e820() -> Vec<String> {
    vm::boot::e820_map(MEM, false)
        .into_iter()
        .map(|(addr, size, kind)| {
            let name = match kind {
                vm::boot::E820_RAM => "usable",
                vm::boot::E820_RESERVED => "reserved",
                other => panic!("unexpected e820 type {other}"),
            };
            format!(
                "BIOS-e820: [mem {addr:#018x}-{:#018x}] {name}",
                addr + size - 1
            )
        })
        .collect()
}

fn boot(kernel: PathBuf, boot: &str) {
    let cmdline = format!("console=ttyS0 earlyprintk=ttyS0 vmd.test={boot} panic=-1");
    let mut c = vmm();
    c.args([
        "-m",
        &format!("{}M", MEM >> 20),
        "--boot",
        boot,
        "-a",
        &cmdline,
        "-k",
    ])
    .arg(&kernel);
    let start = Instant::now();
    let mut vm = Live::spawn(c);
    // bzImage decompression runs at emulated CPL0 here: minutes, not seconds.
    let limit = Duration::from_secs(600);
    let banner = vm.wait_for(limit, |l| l.contains("Linux version "));
    let banner_at = start.elapsed();
    let cmd = vm.wait_for(Duration::from_secs(60), |l| l.contains("Command line: "));
    let want = expected_e820();
    let last = want.last().unwrap().clone();
    let e820_done = vm.wait_for(Duration::from_secs(60), |l| l.ends_with(&last));
    let transcript = vm.transcript();
    let stderr = vm.kill();
    let ctx = format!(
        "{boot} boot of {}\n{transcript}\n--- stderr\n{stderr}",
        kernel.display()
    );
    assert!(banner.is_some(), "no banner: {ctx}");
    eprintln!("{boot}: banner after {banner_at:?}");
    let cmd = cmd.unwrap_or_else(|| panic!("no command line: {ctx}"));
    assert!(
        cmd.ends_with(&format!("Command line: {cmdline}")),
        "{cmd:?}: {ctx}"
    );
    assert!(e820_done.is_some(), "e820 map incomplete: {ctx}");
    let got: Vec<&str> = vm_lines(&transcript);
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(got, want, "{ctx}");
}

fn vm_lines(transcript: &str) -> Vec<&str> {
    transcript
        .lines()
        .filter_map(|l| l.find("BIOS-e820: ").map(|i| &l[i..]))
        .collect()
}

#[test]
fn debian_kernel_as_elf_via_pvh() {
    if !kvm_or_skip() {
        return;
    }
    let Some(dir) = kernel_dir() else { return };
    boot(dir.join("vmlinux"), "pvh");
}

#[test]
fn debian_kernel_as_bzimage() {
    if !kvm_or_skip() {
        return;
    }
    let Some(dir) = kernel_dir() else { return };
    boot(dir.join("vmlinuz"), "auto");
}
