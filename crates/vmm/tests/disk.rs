//! virtio-blk under the `vmm` binary, driven by the `blk` test guest (a
//! CPL3 virtio-pci driver that also runs on QEMU's virtio-blk-pci), with
//! what the guest wrote checked in the image file on the host.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `blk` guest's pattern for sector `s` (see its documentation).
fn pattern_sector(seed: u64, s: u64) -> Vec<u8> {
    (0..64u64)
        .flat_map(|w| splitmix64(seed ^ (s * 64 + w)).to_le_bytes())
        .collect()
}

struct Image(PathBuf);

impl Image {
    fn new(name: &str, size: u64) -> Image {
        let p = std::env::temp_dir().join(format!("vmm-disk-{}-{name}.img", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        Image(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn assert_pattern(img: &[u8], seed: u64, first: u64, count: u64) {
    for s in first..first + count {
        let at = (s * 512) as usize;
        assert!(
            img[at..at + 512] == pattern_sector(seed, s)[..],
            "sector {s} does not hold the pattern the guest wrote"
        );
    }
}

#[test]
fn guest_writes_reach_the_image_and_bad_requests_get_statuses() {
    if !kvm_or_skip() {
        return;
    }
    let img = Image::new("rw", 8 << 20);
    let o = run_guest(
        "blk",
        &[
            "-d",
            &img.arg(),
            "-a",
            "check=200 at=1000 seed=77 sectorpast=1 unknown=1",
        ],
    );
    assert_eq!(o.code(), Some(0), "{o:?}");
    for want in [
        "blk: device 00:01.0 capacity 16384 sectors blk_size 512 seg_max 254 ro 0",
        "blk: check wrote 200 sectors at 1000 flush ok read back ok",
        "blk: past-end status 1",
        "blk: unknown-type status 2",
        "blk: done",
    ] {
        assert!(o.stdout.contains(want), "missing {want:?}: {o:?}");
    }
    let bytes = img.bytes();
    assert_pattern(&bytes, 77, 1000, 200);
    assert!(
        bytes[..1000 * 512].iter().all(|&b| b == 0),
        "nothing else written"
    );

    // The serial is stable for the same image, different for another.
    let serial = |o: &Outcome| {
        o.stdout
            .lines()
            .find_map(|l| l.strip_prefix("blk: serial "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no serial: {o:?}"))
    };
    let again = run_guest("blk", &["-d", &img.arg()]);
    assert_eq!(serial(&o), serial(&again));
    assert!(serial(&o).starts_with("'vmd-"), "{o:?}");
    let other = Image::new("other", 1 << 20);
    let o3 = run_guest("blk", &["-d", &other.arg()]);
    assert_ne!(serial(&o), serial(&o3));
}

#[test]
fn read_only_disk_refuses_writes_and_is_unchanged() {
    if !kvm_or_skip() {
        return;
    }
    let img = Image::new("ro", 1 << 20);
    std::fs::write(img.path(), vec![0x5a; 1 << 20]).unwrap();
    let o = run_guest(
        "blk",
        &["-d", &format!("ro:{}", img.arg()), "-a", "readonly=1"],
    );
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert!(o.stdout.contains(" ro 1 "), "{o:?}");
    assert!(o.stdout.contains("blk: write status 1"), "{o:?}");
    assert!(img.bytes().iter().all(|&b| b == 0x5a));
}

#[test]
fn an_image_in_use_is_refused_and_flushed_writes_survive_kill_9() {
    if !kvm_or_skip() {
        return;
    }
    let img = Image::new("lock", 8 << 20);
    // A long sequential read after the check keeps the first VM busy
    // (and its image locked) after the flush.
    let mut c = vmm();
    c.args(["-m", "64M", "-k"]).arg(guest("blk")).args([
        "-d",
        &img.arg(),
        "-a",
        "check=2048 seed=5 randwrite=100000",
    ]);
    let mut first = Live::spawn(c);
    let line = first.wait_for(Duration::from_secs(60), |l| l.starts_with("blk: check"));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("flush ok read back ok")),
        "{}",
        first.transcript()
    );

    let second = run_guest("blk", &["-d", &img.arg()]);
    assert_eq!(second.code(), Some(1), "{second:?}");
    assert!(
        second.stderr.contains(&img.arg()) && second.stderr.contains("in use"),
        "{second:?}"
    );

    // SIGKILL: no chance to write anything back. Every flushed block is
    // in the file.
    first.kill();
    assert_pattern(&img.bytes(), 5, 0, 2048);
}

#[test]
fn bad_disk_arguments_name_the_file() {
    let missing = "/nonexistent/vmm-test/disk.img";
    let o = run_guest("hello", &["-d", missing]);
    assert_eq!(o.code(), Some(1), "{o:?}");
    assert!(o.stderr.contains(missing), "{o:?}");
    let dir = std::env::temp_dir();
    let o = run_guest("hello", &["-d", dir.to_str().unwrap()]);
    assert_eq!(o.code(), Some(1), "{o:?}");
    assert!(o.stderr.contains("directory"), "{o:?}");
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let o = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (Debian's qemu-utils) is needed");
    assert!(o.status.success(), "qemu-img {args:?}: {o:?}");
    o
}

/// A qcow2 overlay (made by qemu-img) over a raw base: the guest reads the
/// base through it and writes into it; the base is untouched, qemu-img
/// finds the overlay clean and reads what the guest wrote.
#[test]
fn qcow2_overlay_over_a_base_image() {
    if !kvm_or_skip() {
        return;
    }
    let base = Image::new("base", 4 << 20);
    let mut data = vec![0u8; 4 << 20];
    for s in 0..(4 << 20) / 512u64 {
        data[(s * 512) as usize..][..512].copy_from_slice(&pattern_sector(1, s));
    }
    std::fs::write(base.path(), &data).unwrap();
    let overlay =
        Image(std::env::temp_dir().join(format!("vmm-disk-{}-overlay.qcow2", std::process::id())));
    let _ = std::fs::remove_file(overlay.path());
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &base.arg(),
        "-F",
        "raw",
        &overlay.arg(),
    ]);

    // The guest's check reads back what it wrote; `sectorpast` proves the
    // capacity is the base's.
    let o = run_guest(
        "blk",
        &[
            "-d",
            &overlay.arg(),
            "-a",
            "check=64 at=100 seed=2 sectorpast=1",
        ],
    );
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert!(o.stdout.contains("capacity 8192 sectors"), "{o:?}");
    assert!(
        o.stdout.contains("read back ok") && o.stdout.contains("past-end status 1"),
        "{o:?}"
    );

    assert!(base.bytes() == data, "the base image changed");
    qemu_img(&["check", "-q", &overlay.arg()]);
    let flat = Image::new("flat", 0);
    let _ = std::fs::remove_file(flat.path());
    qemu_img(&["convert", "-O", "raw", &overlay.arg(), &flat.arg()]);
    let got = flat.bytes();
    assert_pattern(&got, 2, 100, 64);
    assert!(got[..100 * 512] == data[..100 * 512] && got[164 * 512..] == data[164 * 512..]);

    // Unchanged sectors are read from the base through the overlay: a
    // check at the end of the disk leaves sector 0 as the base has it.
    let o = run_guest(
        "blk",
        &[
            "-d",
            &format!("qcow2:{}", overlay.arg()),
            "-a",
            "check=8 at=8000 seed=3",
        ],
    );
    assert_eq!(o.code(), Some(0), "{o:?}");
    qemu_img(&["check", "-q", &overlay.arg()]);
}
