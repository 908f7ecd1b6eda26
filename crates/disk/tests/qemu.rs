//! `disk`'s qcow2 against the real counterpart, Debian's qemu-utils:
//! images that `qemu-img create` made (with raw and qcow2 base images,
//! version 2 and 3, compressed clusters), written by `qemu-io`, read and
//! written through `disk::open`, read back with `qemu-img convert` and
//! checked with `qemu-img check`; and images that `disk::create` made,
//! described by `qemu-img info`.
//!
//! Skipped (with a line on stderr) where `qemu-img` is not installed,
//! except under `CI=true`, where it is required.

use std::fs;
use std::io::{IoSlice, IoSliceMut};
use std::path::{Path, PathBuf};
use std::process::Command;

use disk::{DiskImage, Format};
use serde_json::Value;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The tests run one at a time: a qemu-img started by one test would
/// share, between its fork and its exec, the open files of another test,
/// and with them their locks.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether qemu-img (and qemu-io) can be run (`None` is a skip), and the
/// right to run.
fn have_qemu() -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if Command::new("qemu-img").arg("--version").output().is_err() {
        assert!(
            !in_ci(),
            "qemu-img (Debian's qemu-utils) is required under CI"
        );
        eprintln!("skipping: qemu-img not found in PATH (apt-get install qemu-utils)");
        return None;
    }
    Some(guard)
}

/// Runs a command; its stdout, or a panic with everything it said.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{so}{se}");
    so
}

fn qemu_img(args: &[&str]) -> String {
    run(Command::new("qemu-img").args(args))
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("disk-qemu-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn s(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Deterministic bytes that differ everywhere.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn read_all(img: &mut dyn DiskImage) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    // In pieces, vectored, as a device would.
    for (i, chunk) in buf.chunks_mut(192 << 10).enumerate() {
        let (a, b) = chunk.split_at_mut(chunk.len() / 3);
        img.read_at(
            &mut [IoSliceMut::new(a), IoSliceMut::new(b)],
            (i * (192 << 10)) as u64,
        )
        .unwrap();
    }
    buf
}

/// Writes that cover the interesting cases: inside one cluster, across
/// cluster boundaries, a whole cluster, sector-sized, vectored, the last
/// bytes of the disk.
fn our_writes(img: &mut dyn DiskImage, model: &mut [u8]) {
    let size = model.len() as u64;
    let writes: [(u64, usize); 6] = [
        (512, 512),
        (65_536 - 300, 1000),
        (3 << 16, 1 << 16),
        ((1 << 20) + 4096, 200_000),
        (size - 4096, 4096),
        (2 << 20, 7),
    ];
    for (n, &(off, len)) in writes.iter().enumerate() {
        let data = pattern(100 + n as u64, len);
        let (a, b) = data.split_at(len / 2);
        img.write_at(&[IoSlice::new(a), IoSlice::new(b)], off)
            .unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    img.flush().unwrap();
}

/// `qemu-img check` says the image is clean: no errors, no leaks.
fn assert_clean(p: &str) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", p])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "qemu-img check {p}:\n{text}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["corruptions", "leaks", "check-errors"] {
        assert_eq!(
            v.get(key).and_then(Value::as_u64).unwrap_or(0),
            0,
            "{key}: {text}"
        );
    }
}

/// The image's contents as qemu sees them.
fn qemu_contents(d: &Dir, p: &str) -> Vec<u8> {
    let out = d.s("qemu-view.raw");
    let _ = fs::remove_file(&out);
    qemu_img(&["convert", "-O", "raw", p, &out]);
    let v = fs::read(&out).unwrap();
    fs::remove_file(&out).unwrap();
    v
}

fn sha(p: &Path) -> String {
    run(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

const SIZE: usize = 4 << 20;

/// One case: `qemu-img create` with `create_args`, `qemu-io` writes, then
/// ours.
fn qemu_image_case(tag: &str, base: Option<(&str, Vec<u8>)>, create_args: &[&str]) {
    let d = Dir::new(tag);
    let top = d.s("top.qcow2");
    let mut model = vec![0u8; SIZE];
    let mut base_sum = None;
    let mut args = vec!["create", "-f", "qcow2"];
    args.extend_from_slice(create_args);
    let mut base_file = String::new();
    if let Some((fmt, data)) = &base {
        // The base: raw bytes, or the same bytes in a compressed qcow2.
        fs::write(d.path("base.raw"), data).unwrap();
        base_file = if *fmt == "raw" {
            "base.raw".to_owned()
        } else {
            qemu_img(&[
                "convert",
                "-c",
                "-O",
                "qcow2",
                &d.s("base.raw"),
                &d.s("base.qcow2"),
            ]);
            "base.qcow2".to_owned()
        };
        model[..data.len()].copy_from_slice(data);
        base_sum = Some(sha(&d.path(&base_file)));
        // Stored relative, as a user would write it.
        args.extend_from_slice(&["-b", &base_file, "-F", fmt]);
    }
    args.extend_from_slice(&[&top, "4M"]);
    qemu_img(&args);

    // qemu-io writes a pattern of its own; ours must read it.
    run(Command::new("qemu-io").args([
        "-f",
        "qcow2",
        "-c",
        "write -P 0x5a 64k 64k",
        "-c",
        "write -P 0xc3 1000k 100k",
        &top,
    ]));
    model[64 << 10..128 << 10].fill(0x5a);
    model[1000 << 10..1100 << 10].fill(0xc3);

    let mut img = disk::open(Path::new(&top), None, false).unwrap();
    assert_eq!(img.size(), SIZE as u64);
    assert!(
        read_all(img.as_mut()) == model,
        "{tag}: ours reads other data"
    );
    // While we hold it, QEMU cannot write it either (it takes OFD locks
    // too): the lock is the same one for both programs.
    let locked = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write 0 512", &top])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&locked.stderr).into_owned()
        + &String::from_utf8_lossy(&locked.stdout);
    assert!(
        said.contains("lock"),
        "{tag}: qemu-io wrote a locked image: {said}"
    );
    our_writes(img.as_mut(), &mut model);
    assert!(
        read_all(img.as_mut()) == model,
        "{tag}: ours reads back other data"
    );
    drop(img);

    assert_clean(&top);
    assert!(
        qemu_contents(&d, &top) == model,
        "{tag}: qemu reads other data"
    );
    if let Some(sum) = base_sum {
        assert_eq!(
            sha(&d.path(&base_file)),
            sum,
            "{tag}: the base image changed"
        );
    }
}

#[test]
fn qemu_img_images_without_base() {
    let Some(_serial) = have_qemu() else {
        return;
    };
    qemu_image_case("plain", None, &[]);
}

#[test]
fn qemu_img_images_on_a_raw_base() {
    let Some(_serial) = have_qemu() else {
        return;
    };
    // A base shorter than the overlay: beyond it, zeroes.
    qemu_image_case("rawbase", Some(("raw", pattern(1, 3 << 20))), &[]);
}

#[test]
fn qemu_img_images_on_a_compressed_qcow2_base() {
    let Some(_serial) = have_qemu() else {
        return;
    };
    qemu_image_case("qcowbase", Some(("qcow2", pattern(2, SIZE))), &[]);
}

#[test]
fn qemu_img_version_2_images() {
    let Some(_serial) = have_qemu() else {
        return;
    };
    qemu_image_case(
        "v2",
        Some(("raw", pattern(3, SIZE))),
        &["-o", "compat=0.10"],
    );
    // Version 2 has no zero clusters: no discard.
    let d = Dir::new("v2b");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        &d.s("v2.qcow2"),
        "1M",
    ]);
    let img = disk::open(&d.path("v2.qcow2"), None, false).unwrap();
    assert!(!img.supports_discard());
}

#[test]
fn compressed_images_read_and_copied_up() {
    let Some(_serial) = have_qemu() else {
        return;
    };
    let d = Dir::new("compressed");
    let mut model = pattern(4, SIZE);
    // Half of it compressible zeroes, so some clusters compress.
    model[SIZE / 2..].fill(0);
    fs::write(d.path("src.raw"), &model).unwrap();
    let top = d.s("c.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", &d.s("src.raw"), &top]);
    let mut img = disk::open(Path::new(&top), Some(Format::Qcow2), false).unwrap();
    assert!(read_all(img.as_mut()) == model);
    our_writes(img.as_mut(), &mut model);
    drop(img);
    assert_clean(&top);
    assert!(qemu_contents(&d, &top) == model);
}

#[test]
fn our_images_as_qemu_img_describes_them() {
    let Some(_serial) = have_qemu() else {
        return;
    };
    let d = Dir::new("ours");
    fs::write(d.path("base.raw"), pattern(5, 2 << 20)).unwrap();
    type Case<'a> = (&'a str, Format, u64, Option<(&'a str, Format)>);
    let cases: [Case; 4] = [
        ("new.qcow2", Format::Qcow2, 10 << 30, None),
        ("new.raw", Format::Raw, 3 << 20, None),
        (
            "over.qcow2",
            Format::Qcow2,
            2 << 20,
            Some(("base.raw", Format::Raw)),
        ),
        (
            "over2.qcow2",
            Format::Qcow2,
            5 << 20,
            Some(("over.qcow2", Format::Qcow2)),
        ),
    ];
    for (name, format, size, base) in cases {
        let img = disk::create(&d.path(name), format, size, base).unwrap();
        drop(img);
        let info: Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", &d.s(name)])).unwrap();
        assert_eq!(info["format"], format.name(), "{name}: {info}");
        assert_eq!(info["virtual-size"], size, "{name}: {info}");
        match base {
            Some((b, f)) => {
                assert_eq!(info["backing-filename"], b, "{name}: {info}");
                assert_eq!(info["backing-filename-format"], f.name(), "{name}: {info}");
            }
            None => assert!(info.get("backing-filename").is_none(), "{name}: {info}"),
        }
        if format == Format::Qcow2 {
            assert_eq!(info["cluster-size"], 65536, "{name}: {info}");
            assert_eq!(
                info["format-specific"]["data"]["compat"], "1.1",
                "{name}: {info}"
            );
            assert_eq!(
                info["format-specific"]["data"]["refcount-bits"], 16,
                "{name}: {info}"
            );
            assert_clean(&d.s(name));
        }
    }
    // The overlays show their base, and past its end zeroes.
    let mut want = pattern(5, 2 << 20);
    want.resize(5 << 20, 0);
    assert!(qemu_contents(&d, &d.s("over2.qcow2")) == want);
}
