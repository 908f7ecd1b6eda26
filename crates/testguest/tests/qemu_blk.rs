//! The `blk` guest's virtio-blk driver against the real counterpart: QEMU's
//! `virtio-blk-pci` on `-M microvm,pcie=on` (modern-only, like our VMM's
//! device), with a temporary raw image the host checks afterwards.
//!
//! QEMU's microvm describes its PCIe host bridge's ECAM (0xe000_0000) in the
//! DSDT (`_CBA`), not in an MCFG table, and its firmware assigns no BARs:
//! the guest is told to put them at the start of the bridge's 32-bit MMIO
//! window, `pcimem=0xc0000000` (QEMU's `PCIE_MMIO_BASE` for microvm).
//!
//! Skipped (said on stderr) without /dev/kvm or without
//! `qemu-system-x86_64` in PATH, except under `CI=true`, where either is a
//! failure.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
/// Where the guest assigns the device's BARs (microvm's PCIe MMIO window).
const PCIMEM: &str = "pcimem=0xc0000000";
/// A guest run that takes longer than this has hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const SECTOR: usize = 512;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// QEMU's path, or `None` (a skip) if it is not installed.
fn qemu_or_skip() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(QEMU))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(!in_ci(), "{QEMU} is required under CI");
        eprintln!("skipping: {QEMU} not found in PATH");
    }
    found
}

/// A file under the system temporary directory, removed when dropped.
struct TempImage(PathBuf);

impl TempImage {
    fn new(tag: &str, bytes: &[u8]) -> TempImage {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "qemu_blk-{}-{}-{tag}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, bytes).unwrap();
        TempImage(path)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Boots the `blk` guest on QEMU with `img` as its disk and returns its
/// serial output (the guest powers the machine off when it is done).
fn run_blk(qemu: &Path, cmdline: &str, img: &Path, readonly: bool, serial: &str) -> String {
    let guest = testguest::path("blk").expect("blk guest");
    let mut drive = format!("file={},if=none,id=d0,format=raw", img.display());
    if readonly {
        drive.push_str(",readonly=on");
    }
    let mut child = Command::new(qemu)
        .args([
            "-M",
            "microvm,pcie=on,x-option-roms=off,rtc=on,acpi=on",
            "-enable-kvm",
            "-cpu",
            "qemu64",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&guest)
        .args(["-append", cmdline, "-drive", &drive, "-device"])
        .arg(format!(
            "virtio-blk-pci,drive=d0,disable-legacy=on,serial={serial}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", qemu.display()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        None => panic!(
            "qemu still running after {RUN_TIMEOUT:?}\n--- serial:\n{out}\n--- stderr:\n{err}"
        ),
        Some(s) if !s.success() => {
            panic!("qemu exited with {s}\n--- serial:\n{out}\n--- stderr:\n{err}")
        }
        Some(_) => out,
    }
}

/// The serial lines, without carriage returns.
fn lines(out: &str) -> Vec<&str> {
    out.lines().map(|l| l.trim_end_matches('\r')).collect()
}

/// Asserts the output has a line equal to `want`.
fn has_line(out: &str, want: &str) {
    assert!(
        lines(out).contains(&want),
        "no line '{want}' in the guest's output:\n{out}"
    );
}

/// The line starting with `prefix`.
fn line_with<'a>(out: &'a str, prefix: &str) -> &'a str {
    lines(out)
        .into_iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting '{prefix}' in the guest's output:\n{out}"))
}

/// Common checks of a run that got through: the boot line, no failure,
/// `blk: done`.
fn ran_ok(out: &str, cmdline: &str) {
    has_line(
        out,
        &format!("testguest blk: boot via pvh cmdline '{cmdline}'"),
    );
    assert!(!out.contains("blk: FAIL"), "the guest failed:\n{out}");
    has_line(out, "blk: done");
}

/// The guest's pattern (see guest/src/bin/blk.rs).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pattern_sector(seed: u64, sector: u64) -> Vec<u8> {
    (0..64u64)
        .flat_map(|w| splitmix64(seed ^ sector.wrapping_mul(64).wrapping_add(w)).to_le_bytes())
        .collect()
}

#[test]
fn read_write_checks_on_qemu() {
    if !testguest::kvm_or_skip() {
        return;
    }
    let Some(qemu) = qemu_or_skip() else {
        return;
    };
    const FILL: u8 = 0xa5;
    const SECTORS: u64 = 8192; // 4 MiB
    let (seed, at, n, writes) = (0x1234u64, 100u64, 300u64, 100u64);
    let img = TempImage::new("rw", &vec![FILL; SECTORS as usize * SECTOR]);
    let cmdline = format!(
        "{PCIMEM} check={n} at={at} seed={seed:#x} sectorpast=1 unknown=1 randwrite={writes} read=1"
    );
    let out = run_blk(&qemu, &cmdline, &img.0, false, "vmd-blk-1");
    ran_ok(&out, &cmdline);

    let dev = line_with(&out, "blk: device 00:");
    assert!(
        dev.contains(&format!(" capacity {SECTORS} sectors ")) && dev.contains(" ro 0 "),
        "{dev}"
    );
    has_line(&out, "blk: serial 'vmd-blk-1'");
    has_line(
        &out,
        &format!("blk: check wrote {n} sectors at {at} flush ok read back ok"),
    );
    has_line(&out, "blk: past-end status 1");
    has_line(&out, "blk: unknown-type status 2");
    line_with(&out, &format!("blk: randwrite {writes} writes cycles="));
    line_with(
        &out,
        &format!(
            "blk: read {} bytes in {} requests cycles=",
            SECTORS * SECTOR as u64,
            SECTORS * SECTOR as u64 / (128 * 1024)
        ),
    );

    // Every sector the guest wrote holds the pattern, every other one the
    // fill.
    let mut written = vec![false; SECTORS as usize];
    written[at as usize..(at + n) as usize].fill(true);
    for i in 0..writes {
        let block = splitmix64(seed ^ 0xffff_ffff_0000_0000 ^ i) % (SECTORS / 8);
        written[8 * block as usize..8 * block as usize + 8].fill(true);
    }
    let disk = fs::read(&img.0).unwrap();
    assert_eq!(disk.len(), SECTORS as usize * SECTOR);
    for (s, got) in disk.chunks(SECTOR).enumerate() {
        if written[s] {
            assert!(
                got == pattern_sector(seed, s as u64),
                "sector {s} does not hold the pattern"
            );
        } else {
            assert!(
                got.iter().all(|&b| b == FILL),
                "sector {s} was written but should not have been"
            );
        }
    }
}

#[test]
fn read_only_device_on_qemu() {
    if !testguest::kvm_or_skip() {
        return;
    }
    let Some(qemu) = qemu_or_skip() else {
        return;
    };
    let original = vec![0x5a; 1 << 20];
    let img = TempImage::new("ro", &original);
    let cmdline = format!("{PCIMEM} readonly=1 seed=7 sectorpast=1 unknown=1 malformed=1");
    // 23 bytes: GET_ID returns the first 20, without a NUL.
    let out = run_blk(&qemu, &cmdline, &img.0, true, "ro-serial-0123456789XYZ");
    ran_ok(&out, &cmdline);
    let dev = line_with(&out, "blk: device 00:");
    assert!(
        dev.contains(" capacity 2048 sectors ") && dev.contains(" ro 1 "),
        "{dev}"
    );
    has_line(&out, "blk: serial 'ro-serial-0123456789'");
    has_line(&out, "blk: write status 1");
    has_line(&out, "blk: past-end status 1");
    has_line(&out, "blk: unknown-type status 2");
    // A chain without a status byte: QEMU reports "virtio-blk missing
    // headers" and sets DEVICE_NEEDS_RESET (with the four bits of a live
    // driver: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK).
    has_line(&out, "blk: malformed needs-reset status 0x4f");
    assert!(
        fs::read(&img.0).unwrap() == original,
        "the read-only image changed"
    );
}

#[test]
fn unassigned_bar_without_window_is_a_clear_failure() {
    if !testguest::kvm_or_skip() {
        return;
    }
    let Some(qemu) = qemu_or_skip() else {
        return;
    };
    let img = TempImage::new("nowin", &vec![0; 64 * 1024]);
    let out = run_blk(&qemu, "check=8", &img.0, false, "x");
    let fail = line_with(&out, "blk: FAIL ");
    assert!(
        fail.contains("is unassigned") && fail.contains("no pcimem=0xADDR window was given"),
        "{fail}"
    );
    assert!(!out.contains("blk: done"), "{out}");
}
