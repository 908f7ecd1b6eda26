//! `vmctl create` against the real counterpart, Debian's qemu-utils:
//! `qemu-img info` agrees on format, virtual size and base image,
//! `qemu-img check` finds nothing, `qemu-img compare` finds a copy
//! identical to its source and an image derived from a base identical to
//! a raw copy with the same writes, the base unchanged. And every way it
//! can fail: one line naming the file and the reason, nothing created.
//!
//! The qemu-img tests are skipped (with a line on stderr) where qemu-img
//! is not installed, except under `CI=true`, where it is required.

use std::fs;
use std::io::{IoSlice, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use serde_json::Value;

/// One test at a time: a child started by one test shares, between its
/// fork and its exec, the open files (and so the image locks) of another.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok();
    if !ok {
        assert!(
            !in_ci(),
            "qemu-img (Debian's qemu-utils) is required under CI"
        );
        eprintln!("skipping: qemu-img not found in PATH (apt-get install qemu-utils)");
    }
    ok
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("vmctl-create-it-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn p(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Runs vmctl in this directory.
    fn vmctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vmctl"))
            .current_dir(&self.0)
            .env_remove("VMD_SOCKET")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs vmctl, which must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.vmctl(args);
        let err = text(&out.stderr);
        assert!(out.status.success(), "vmctl {args:?}: {err}");
        err
    }

    /// Runs a qemu tool here; its stdout.
    fn qemu(&self, tool: &str, args: &[&str]) -> String {
        let out = Command::new(tool)
            .current_dir(&self.0)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn info(&self, name: &str) -> Value {
        serde_json::from_str(&self.qemu("qemu-img", &["info", "--output=json", name])).unwrap()
    }

    /// `qemu-img check` finds no corruption, no leak, no error.
    fn assert_clean(&self, name: &str) {
        let out = self.qemu("qemu-img", &["check", "--output=json", name]);
        let v: Value = serde_json::from_str(&out).unwrap();
        for key in ["corruptions", "leaks", "check-errors"] {
            assert_eq!(
                v.get(key).and_then(Value::as_u64).unwrap_or(0),
                0,
                "{name}: {out}"
            );
        }
    }

    fn assert_identical(&self, a: &str, b: &str) {
        let out = self.qemu("qemu-img", &["compare", a, b]);
        assert!(out.contains("Images are identical."), "{a} vs {b}: {out}");
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

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

fn sha(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A raw image with data in some places and holes in others.
fn sparse_raw(p: &Path, size: u64, seed: u64) {
    let f = fs::File::create(p).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, off) in [0u64, 70_000, 1 << 20, size - 5000].into_iter().enumerate() {
        f.write_all_at(&pattern(seed + i as u64, 5000), off)
            .unwrap();
    }
}

#[test]
fn new_images_as_qemu_img_sees_them() {
    let _s = serial();
    if !have_qemu() {
        return;
    }
    let d = Dir::new("new");
    for (arg, file, format, size) in [
        ("64M", "disk.img", "raw", 64u64 << 20),
        ("10G", "disk.qcow2", "qcow2", 10 << 30),
        ("1.5G", "qcow2:disk", "qcow2", 3 << 29),
        ("1048577", "raw:other.qcow2", "raw", 2 << 20),
    ] {
        let err = d.ok(&["create", "-s", arg, file]);
        assert_eq!(err, format!("vmctl: {format} imagefile created\n"));
        let name = file.split_once(':').map_or(file, |(_, p)| p);
        let info = d.info(name);
        assert_eq!(info["format"], format, "{file}: {info}");
        assert_eq!(info["virtual-size"], size, "{file}: {info}");
        assert!(info.get("backing-filename").is_none(), "{file}: {info}");
        if format == "qcow2" {
            assert_eq!(info["cluster-size"], 65536, "{info}");
            assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");
            d.assert_clean(name);
        }
        assert_eq!(fs::metadata(d.p(name)).unwrap().mode() & 0o777, 0o600);
    }
    // --json says what was made.
    let out = d.vmctl(&["--json", "create", "-s", "1G", "j.qcow2"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["size"], 1u64 << 30);
    assert_eq!(v["path"], "j.qcow2");
}

/// The writes a guest might make: unaligned, across clusters, at the end.
const WRITES: [(u64, usize); 5] = [
    (512, 512),
    (65_536 - 100, 300),
    (1 << 20, 3 << 16),
    ((2 << 20) + 7, 10_000),
    ((4 << 20) - 4096, 4096),
];

#[test]
fn derived_images_leave_their_base_alone() {
    let _s = serial();
    if !have_qemu() {
        return;
    }
    let d = Dir::new("derived");
    sparse_raw(&d.p("base.img"), 4 << 20, 1);
    // A qcow2 base too, made by vmctl from the raw one.
    d.ok(&["create", "-i", "base.img", "base.qcow2"]);
    fs::create_dir(d.p("sub")).unwrap();
    for (base, over, stored) in [
        ("base.img", "over.qcow2", "base.img"),
        ("base.qcow2", "sub/over.qcow2", "../base.qcow2"),
        // A chain: a base that has a base itself.
        ("over.qcow2", "top.qcow2", "over.qcow2"),
    ] {
        let err = d.ok(&["create", "-b", base, over]);
        assert_eq!(err, "vmctl: qcow2 imagefile created\n");
        let info = d.info(over);
        assert_eq!(info["format"], "qcow2", "{info}");
        assert_eq!(info["virtual-size"], 4u64 << 20, "{info}");
        assert_eq!(info["backing-filename"], stored, "{info}");
        let base_fmt = if base.ends_with(".img") {
            "raw"
        } else {
            "qcow2"
        };
        assert_eq!(info["backing-filename-format"], base_fmt, "{info}");
        d.assert_clean(over);
        d.assert_identical(over, base);
    }
    // Writes through disk::open (what the VM process uses) to the top of
    // the chain, and the same writes to a raw copy of the base.
    let bases = ["base.img", "base.qcow2", "over.qcow2"];
    let sums: Vec<String> = bases.iter().map(|b| sha(&d.p(b))).collect();
    fs::copy(d.p("base.img"), d.p("copy.raw")).unwrap();
    let copy = fs::OpenOptions::new()
        .write(true)
        .open(d.p("copy.raw"))
        .unwrap();
    let mut img = disk::open(&d.p("top.qcow2"), None, false).unwrap();
    for (i, &(off, len)) in WRITES.iter().enumerate() {
        let data = pattern(50 + i as u64, len);
        img.write_at(&[IoSlice::new(&data)], off).unwrap();
        use std::os::unix::fs::FileExt;
        copy.write_all_at(&data, off).unwrap();
    }
    img.flush().unwrap();
    drop(img);
    drop(copy);
    for (b, sum) in bases.iter().zip(&sums) {
        assert_eq!(&sha(&d.p(b)), sum, "{b} changed");
    }
    d.assert_clean("top.qcow2");
    d.assert_identical("top.qcow2", "copy.raw");

    // -s: larger than the base is fine, smaller is refused.
    d.ok(&["create", "-b", "base.img", "-s", "8M", "big.qcow2"]);
    assert_eq!(d.info("big.qcow2")["virtual-size"], 8u64 << 20);
    d.assert_clean("big.qcow2");
}

#[test]
fn copies_are_identical_and_sparse() {
    let _s = serial();
    if !have_qemu() {
        return;
    }
    let d = Dir::new("copies");
    sparse_raw(&d.p("src.img"), 64 << 20, 7);
    d.qemu(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "src.img",
            "-F",
            "raw",
            "over.qcow2",
        ],
    );
    d.qemu("qemu-io", &["-c", "write -P 0x77 3M 100k", "over.qcow2"]);
    for (src, dst, fmt, size) in [
        ("src.img", "a.qcow2", "qcow2", None),
        ("a.qcow2", "b.img", "raw", None),
        // A qcow2 with a base, flattened.
        ("over.qcow2", "flat.img", "raw", None),
        ("over.qcow2", "flat.qcow2", "qcow2", None),
        ("raw:src.img", "bigger.qcow2", "qcow2", Some("100M")),
    ] {
        let mut args = vec!["create", "-i", src];
        if let Some(s) = size {
            args.extend_from_slice(&["-s", s]);
        }
        args.push(dst);
        let err = d.ok(&args);
        // Not a terminal: no progress bar, only the line.
        assert_eq!(err, format!("vmctl: {fmt} imagefile created\n"));
        let info = d.info(dst);
        assert_eq!(info["format"], fmt, "{info}");
        let want = if size.is_some() {
            100u64 << 20
        } else {
            64 << 20
        };
        assert_eq!(info["virtual-size"], want, "{info}");
        assert!(info.get("backing-filename").is_none(), "{info}");
        if fmt == "qcow2" {
            d.assert_clean(dst);
        }
        let src_path = src.strip_prefix("raw:").unwrap_or(src);
        d.assert_identical(src_path, dst);
        // Sparse: the data is about 130 KiB of 64 MiB.
        let used = fs::metadata(d.p(dst)).unwrap().blocks() * 512;
        assert!(used < 2 << 20, "{dst}: {used} bytes allocated");
    }
    d.ok(&["create", "-i", "src.img", "-s", "64M", "same.img"]);
    let out = d.vmctl(&["create", "-i", "src.img", "-s", "63M", "small.img"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vmctl: small.img: size 63.0M is smaller than the input image src.img (64.0M)\n"
    );
    assert!(!d.p("small.img").exists());
}

/// A pty pair: the master, and the slave opened as a File.
fn openpty() -> (fs::File, fs::File) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc pty calls; the fds are owned by the Files.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let mut buf = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()), 0);
        let path = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned();
        let slave = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        (fs::File::from_raw_fd(fd), slave)
    }
}

#[test]
fn progress_bar_on_a_terminal() {
    let _s = serial();
    let d = Dir::new("progress");
    fs::write(d.p("src.img"), pattern(9, 32 << 20)).unwrap();
    let (mut master, slave) = openpty();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmctl"))
        .current_dir(&d.0)
        .args(["create", "-i", "src.img", "dst.qcow2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(slave)
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the child is gone and the slave closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    assert!(child.wait().unwrap().success());
    let out = text(&reader.join().unwrap());
    assert!(out.contains("dst.qcow2 ["), "no progress bar: {out:?}");
    assert!(out.contains('%'), "no progress bar: {out:?}");
    assert!(
        out.ends_with("vmctl: qcow2 imagefile created\r\n"),
        "{out:?}"
    );
}

/// Runs vmctl; it must fail with exactly `want` (one line) and leave
/// `not_made` uncreated.
fn fails(d: &Dir, args: &[&str], want: &str, not_made: &str) {
    let out = d.vmctl(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "vmctl {args:?}: {err}");
    assert_eq!(err, format!("vmctl: {want}\n"), "vmctl {args:?}");
    assert!(!d.p(not_made).exists(), "vmctl {args:?} made {not_made}");
}

#[test]
fn bad_input_is_one_clear_line_and_makes_nothing() {
    let _s = serial();
    let d = Dir::new("bad");
    fails(
        &d,
        &["create", "-s", "100", "a.img"],
        "a.img: size 100 has no unit, so it is 100 bytes, less than 1M, the smallest image: \
         did you mean -s 100M or -s 100G?",
        "a.img",
    );
    fails(
        &d,
        &["create", "-s", "0", "a.qcow2"],
        "a.qcow2: size 0 is zero: give the size with a unit, as in -s 10G",
        "a.qcow2",
    );
    fails(
        &d,
        &["create", "-i", "nope.img", "a.qcow2"],
        "input image nope.img: No such file or directory",
        "a.qcow2",
    );
    fails(
        &d,
        &["create", "-b", "nope.img", "a.qcow2"],
        "a.qcow2: base image nope.img: No such file or directory",
        "a.qcow2",
    );
    sparse_raw(&d.p("base.img"), 1 << 20, 3);
    fails(
        &d,
        &["create", "-b", "base.img", "a.img"],
        "a.img: an image with a base image must be qcow2: name it *.qcow2 or prefix it with \
         qcow2:",
        "a.img",
    );
    fails(
        &d,
        &["create", "-b", "base.img", "-s", "512K", "a.qcow2"],
        "a.qcow2: size 512K is less than 1M, the smallest image",
        "a.qcow2",
    );
    // A corrupt qcow2 header.
    let mut bad = b"QFI\xfb".to_vec();
    bad.extend_from_slice(&99u32.to_be_bytes());
    bad.resize(4096, 0);
    fs::write(d.p("bad.qcow2"), &bad).unwrap();
    fails(
        &d,
        &["create", "-i", "bad.qcow2", "a.img"],
        "input image bad.qcow2: invalid qcow2 image: qcow2 v99 is not supported",
        "a.img",
    );
    fails(
        &d,
        &["create", "-b", "bad.qcow2", "a.qcow2"],
        "a.qcow2: base image bad.qcow2: invalid qcow2 image: qcow2 v99 is not supported",
        "a.qcow2",
    );
    assert!(
        fs::read(d.p("bad.qcow2")).unwrap() == bad,
        "bad.qcow2 changed"
    );

    // An existing file, and one a VM holds.
    fails(
        &d,
        &["create", "-s", "1M", "base.img"],
        "base.img: File exists",
        "x",
    );
    let sum = sha(&d.p("base.img"));
    let held = disk::open(&d.p("base.img"), None, false).unwrap();
    fails(
        &d,
        &["create", "-s", "1M", "base.img"],
        "base.img: in use: another VM or program holds a lock on it",
        "x",
    );
    // A copy or a base of an image a VM writes would not hold still.
    fails(
        &d,
        &["create", "-i", "base.img", "c.img"],
        "input image base.img: in use: another VM or program holds a lock on it",
        "c.img",
    );
    fails(
        &d,
        &["create", "-b", "base.img", "c.qcow2"],
        "c.qcow2: base image base.img: in use: another VM or program holds a lock on it",
        "c.qcow2",
    );
    drop(held);
    assert_eq!(sha(&d.p("base.img")), sum);

    // Without a size: a usage error.
    let out = d.vmctl(&["create", "n.qcow2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("could not create n.qcow2: missing size argument"));
    assert!(!d.p("n.qcow2").exists());
}

#[test]
fn broken_chains_are_named() {
    let _s = serial();
    if !have_qemu() {
        return;
    }
    let d = Dir::new("chains");
    // qemu-img -u writes a header without opening the base.
    let q = |args: &[&str]| d.qemu("qemu-img", args);
    q(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "gone.img",
        "-F",
        "raw",
        "mid.qcow2",
        "1M",
    ]);
    fails(
        &d,
        &["create", "-b", "mid.qcow2", "n.qcow2"],
        // Names resolved from the naming image's directory, here ".".
        "n.qcow2: base image mid.qcow2: base image gone.img: No such file or directory",
        "n.qcow2",
    );
    q(&[
        "create", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2", "1M",
    ]);
    q(&[
        "create", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M",
    ]);
    let (sa, sb) = (sha(&d.p("a.qcow2")), sha(&d.p("b.qcow2")));
    fails(
        &d,
        &["create", "-i", "a.qcow2", "n.img"],
        "input image a.qcow2: base image b.qcow2: base image a.qcow2 is already in the chain \
         of base images (a loop)",
        "n.img",
    );
    assert_eq!((sha(&d.p("a.qcow2")), sha(&d.p("b.qcow2"))), (sa, sb));
}

#[test]
fn permission_denied() {
    let _s = serial();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let d = Dir::new("perm");
    fs::set_permissions(&d.0, fs::Permissions::from_mode(0o777)).unwrap();
    sparse_raw(&d.p("in.img"), 1 << 20, 5);
    fs::set_permissions(d.p("in.img"), fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmctl"));
    cmd.current_dir(&d.0)
        .args(["create", "-i", "in.img", "out.img"])
        .stdin(Stdio::null());
    if root {
        // Root passes every permission check: run it as nobody.
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534);
    } else {
        fs::set_permissions(d.p("in.img"), fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "vmctl: input image in.img: Permission denied\n"
    );
    assert!(!d.p("out.img").exists());
}
