//! Disk figures: the `blk` test guest (a polling virtio-blk driver at CPL3,
//! crates/testguest/guest/src/bin/blk.rs) on our VMM's virtio-blk against
//! the same guest on QEMU's `virtio-blk-pci` (`-M microvm,pcie=on`,
//! `cache=writeback,aio=threads`), same image files, in one run,
//! alternating (who goes first alternates too), medians over the rounds:
//!
//! - P5: sequential read of a 256 MiB raw image (`read=1`), page cache
//!   warm (the file is read once first), in MB/s (10^6 bytes) from the
//!   guest's own TSC count, first request to last completion, so boot
//!   stays out of it. Also P5dd: ours against the host's
//!   `dd if=IMG of=/dev/null bs=1M` of the same file (dd's own figure),
//!   and, in a detail line, requests per exit (the guest's queue
//!   notifications, one MMIO exit each).
//! - P5W: 4 KiB writes at pseudo-random 4 KiB blocks of a 256 MiB raw
//!   image with a FLUSH after every 64 (`randwrite=N`), writes per second
//!   (a flush is an `fdatasync` of the image on both).
//! - P5Q: P5 from a qcow2 image whose base holds the data
//!   (`qemu-img create -f qcow2 -b base.raw -F raw`), ours (`-d qcow2:`)
//!   against QEMU (`format=qcow2`).
//!
//! The TSC frequency is KVM's (`KVM_GET_TSC_KHZ` on a scratch vCPU), the
//! rate at which both VMMs' guests see their TSC count here.
//!
//! Usage: bench-blk BINDIR QEMU   (BINDIR has vmm and testguest; QEMU's
//! directory also has qemu-img or it is found in PATH)
//! Environment: P5_ROUNDS (5), P5_MIB (256), P5_REQ (KiB per read request,
//! 128), P5_DEPTH (requests in flight, 4), P5W_WRITES (4096), P5W_DEPTH (4),
//! BENCH_DIR (where the images go; default the temporary directory),
//! BENCH_DETAIL=1 (every run's figures).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench::median;

/// A guest run that takes longer than this has hung.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// Where the guest puts the BARs QEMU's microvm leaves unassigned.
const PCIMEM: &str = "pcimem=0xc0000000";

fn fail(msg: &str) -> ! {
    eprintln!("bench-blk: {msg}");
    std::process::exit(1);
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// What one guest run reported.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Bytes read (`read`) or writes done (`randwrite`).
    amount: u64,
    requests: u64,
    cycles: u64,
    exits: u64,
}

/// Parses `blk: read <bytes> bytes in <requests> requests cycles=<C>
/// exits=<E>` or `blk: randwrite <N> writes cycles=<C> flushes=<F>
/// exits=<E>` out of the guest's console output.
fn parse(out: &str, what: &str) -> Option<Run> {
    let prefix = format!("blk: {what} ");
    let line = out.lines().find(|l| l.starts_with(&prefix))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let kv = |k: &str| {
        words
            .iter()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let amount: u64 = words.get(2)?.parse().ok()?;
    let requests = if what == "read" {
        words.get(5)?.parse().ok()?
    } else {
        amount + kv("flushes")?
    };
    Some(Run {
        amount,
        requests,
        cycles: kv("cycles")?,
        exits: kv("exits")?,
    })
}

/// Runs `cmd` to its end (killed after [`RUN_LIMIT`]); its stdout.
fn run_guest(what: &str, mut cmd: Command) -> String {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| fail(&format!("{what}: {e}")));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            fail(&format!("{what}: no end within {RUN_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    if !status.success() || out.contains("blk: FAIL") {
        fail(&format!(
            "{what}: {status}\n--- console\n{out}--- stderr\n{err}"
        ));
    }
    out
}

struct Env {
    vmm: PathBuf,
    qemu: PathBuf,
    guest: PathBuf,
    detail: bool,
}

impl Env {
    /// The guest on our VMM; `disk` as `-d` takes it.
    fn ours(&self, disk: &str, cmdline: &str) -> String {
        let mut c = Command::new(&self.vmm);
        c.args(["-m", "64M", "-s", "stdio", "-d", disk, "-a", cmdline, "-k"])
            .arg(&self.guest);
        run_guest("vmm", c)
    }

    /// The guest on QEMU with `img` (of `format`) as a virtio-blk-pci disk.
    fn qemu(&self, img: &Path, format: &str, cmdline: &str) -> String {
        let mut c = Command::new(&self.qemu);
        c.args([
            "-M",
            "microvm,pcie=on,x-option-roms=off,rtc=on,acpi=on",
            "-enable-kvm",
            "-cpu",
            "qemu64",
            "-m",
            "64",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&self.guest)
        .args(["-append", &format!("{cmdline} {PCIMEM}"), "-drive"])
        .arg(format!(
            "file={},if=none,id=d0,format={format},cache=writeback,aio=threads",
            img.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]);
        run_guest("qemu", c)
    }
}

/// The TSC rate of a KVM guest here, in kHz.
fn tsc_khz() -> u64 {
    let kvm = kvm_ioctls::Kvm::new().unwrap_or_else(|e| fail(&format!("/dev/kvm: {e}")));
    let vm = kvm
        .create_vm()
        .unwrap_or_else(|e| fail(&format!("KVM_CREATE_VM: {e}")));
    let vcpu = vm
        .create_vcpu(0)
        .unwrap_or_else(|e| fail(&format!("KVM_CREATE_VCPU: {e}")));
    u64::from(
        vcpu.get_tsc_khz()
            .unwrap_or_else(|e| fail(&format!("KVM_GET_TSC_KHZ: {e}"))),
    )
}

/// Writes `mib` MiB of non-zero, non-repeating bytes to `path`.
fn make_image(path: &Path, mib: u64) {
    let mut f =
        std::fs::File::create(path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    let mut buf = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..mib {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    }
    f.sync_all()
        .unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
}

/// Reads `path` to the end (into the page cache).
fn warm(path: &Path) {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    std::io::copy(&mut f, &mut std::io::sink())
        .unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
}

/// `dd if=IMG of=/dev/null bs=1M`: MB/s from dd's own bytes and seconds.
fn dd(img: &Path) -> f64 {
    let o = Command::new("dd")
        .arg(format!("if={}", img.display()))
        .args(["of=/dev/null", "bs=1M"])
        .output()
        .unwrap_or_else(|e| fail(&format!("dd: {e}")));
    let err = String::from_utf8_lossy(&o.stderr);
    // "268435456 bytes (268 MB, 256 MiB) copied, 0.0445 s, 6.0 GB/s"
    let line = err
        .lines()
        .find(|l| l.contains(" copied, "))
        .unwrap_or_else(|| fail(&format!("dd: {err}")));
    let bytes: f64 = line
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| fail(&format!("dd: {line}")));
    let secs: f64 = line
        .split(" copied, ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| fail(&format!("dd: {line}")));
    bytes / secs / 1e6
}

fn qemu_img(qemu: &Path) -> PathBuf {
    let beside = qemu.with_file_name("qemu-img");
    if beside.is_file() {
        beside
    } else {
        PathBuf::from("qemu-img")
    }
}

/// Temporary directory, removed at the end.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench-blk BINDIR QEMU");
        std::process::exit(2);
    }
    let bin = PathBuf::from(&args[1]);
    let qemu = PathBuf::from(&args[2]);
    let rounds = env_u64("P5_ROUNDS", 5).max(1) as usize;
    let mib = env_u64("P5_MIB", 256);
    let req = env_u64("P5_REQ", 128);
    let depth = env_u64("P5_DEPTH", 4);
    let writes = env_u64("P5W_WRITES", 4096);
    let wdepth = env_u64("P5W_DEPTH", 4);
    let o = Command::new(bin.join("testguest"))
        .args(["path", "blk"])
        .output()
        .unwrap_or_else(|e| fail(&format!("testguest: {e}")));
    let guest = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    if !o.status.success() || !guest.is_file() {
        fail("testguest path blk: no guest");
    }
    let env = Env {
        vmm: bin.join("vmm"),
        qemu: qemu.clone(),
        guest,
        detail: std::env::var_os("BENCH_DETAIL").is_some(),
    };
    let khz = tsc_khz();

    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = Dir(base.join(format!("bench-blk-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| fail(&format!("{}: {e}", dir.0.display())));
    let data = dir.0.join("data.raw");
    let wimg = dir.0.join("write.raw");
    let overlay = dir.0.join("overlay.qcow2");
    make_image(&data, mib);
    make_image(&wimg, mib);
    let o = Command::new(qemu_img(&qemu))
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&data)
        .args(["-F", "raw"])
        .arg(&overlay)
        .output()
        .unwrap_or_else(|e| fail(&format!("qemu-img: {e}")));
    if !o.status.success() {
        fail(&format!(
            "qemu-img create: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    warm(&data);
    warm(&wimg);

    let read_cmd = format!("read=1 req={req} depth={depth}");
    let write_cmd = format!("randwrite={writes} depth={wdepth}");
    let raw = format!("raw:{}", data.display());
    let wraw = format!("raw:{}", wimg.display());
    let qcow = format!("qcow2:{}", overlay.display());

    // Does our VMM take qcow2 images yet? One try, before the rounds.
    let qcow2_skip: Option<String> = {
        let mut c = Command::new(&env.vmm);
        c.args(["-m", "64M", "-s", "stdio", "-d", &qcow, "-k"])
            .arg(&env.guest)
            .stdin(Stdio::null());
        match c.output() {
            Ok(o) if o.status.success() && parse_done(&o.stdout) => None,
            Ok(o) => Some(
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("vmm failed")
                    .to_owned(),
            ),
            Err(e) => Some(e.to_string()),
        }
    };

    let secs = |cycles: u64| cycles as f64 / (khz as f64 * 1000.0);
    let mbps = |r: &Run| r.amount as f64 / secs(r.cycles) / 1e6;
    let wps = |r: &Run| r.amount as f64 / secs(r.cycles);
    let (mut p5o, mut p5q, mut p5dd) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p5wo, mut p5wq) = (Vec::new(), Vec::new());
    let (mut p5qo, mut p5qq) = (Vec::new(), Vec::new());
    let (mut rpe_o, mut rpe_q) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Ours first in even rounds, QEMU first in odd ones.
        let ours_first = round % 2 == 0;
        let pair = |a: &mut dyn FnMut() -> Run, b: &mut dyn FnMut() -> Run| {
            if ours_first {
                let x = a();
                (x, b())
            } else {
                let y = b();
                (a(), y)
            }
        };
        let parse_or = |out: String, what: &str, who: &str| {
            parse(&out, what)
                .unwrap_or_else(|| fail(&format!("{who}: no `blk: {what}` line in:\n{out}")))
        };

        let (o, q) = pair(
            &mut || parse_or(env.ours(&raw, &read_cmd), "read", "vmm"),
            &mut || parse_or(env.qemu(&data, "raw", &read_cmd), "read", "qemu"),
        );
        let d = dd(&data);
        p5o.push(mbps(&o));
        p5q.push(mbps(&q));
        p5dd.push(d);
        rpe_o.push(o.requests as f64 / o.exits.max(1) as f64);
        rpe_q.push(q.requests as f64 / q.exits.max(1) as f64);
        if env.detail {
            println!(
                "round {round} P5: ours {:.0} MB/s ({} req, {} exits), qemu {:.0} MB/s ({} req, {} exits), dd {d:.0} MB/s",
                mbps(&o), o.requests, o.exits, mbps(&q), q.requests, q.exits
            );
        }

        let (o, q) = pair(
            &mut || parse_or(env.ours(&wraw, &write_cmd), "randwrite", "vmm"),
            &mut || parse_or(env.qemu(&wimg, "raw", &write_cmd), "randwrite", "qemu"),
        );
        p5wo.push(wps(&o));
        p5wq.push(wps(&q));
        if env.detail {
            println!(
                "round {round} P5W: ours {:.0} writes/s ({} exits), qemu {:.0} writes/s ({} exits)",
                wps(&o),
                o.exits,
                wps(&q),
                q.exits
            );
        }

        if qcow2_skip.is_none() {
            let (o, q) = pair(
                &mut || parse_or(env.ours(&qcow, &read_cmd), "read", "vmm"),
                &mut || parse_or(env.qemu(&overlay, "qcow2", &read_cmd), "read", "qemu"),
            );
            p5qo.push(mbps(&o));
            p5qq.push(mbps(&q));
            if env.detail {
                println!(
                    "round {round} P5Q: ours {:.0} MB/s, qemu {:.0} MB/s",
                    mbps(&o),
                    mbps(&q)
                );
            }
        }
    }

    println!(
        "tsc {khz} kHz (KVM_GET_TSC_KHZ), {mib} MiB images in {}, read req={req} KiB depth={depth}, \
         randwrite {writes} x 4 KiB depth={wdepth} flush every 64, median of {rounds} rounds",
        dir.0.display()
    );
    let (o, q, d) = (median(&mut p5o), median(&mut p5q), median(&mut p5dd));
    println!("BENCH P5 ratio={:.3} ours={o:.0}MB/s ref={q:.0}MB/s", o / q);
    println!(
        "BENCH P5dd ratio={:.3} ours={o:.0}MB/s ref={d:.0}MB/s",
        o / d
    );
    println!(
        "P5 requests per exit: ours {:.2}, qemu {:.2}",
        median(&mut rpe_o),
        median(&mut rpe_q)
    );
    let (o, q) = (median(&mut p5wo), median(&mut p5wq));
    println!("BENCH P5W ratio={:.3} ours={o:.0}/s ref={q:.0}/s", o / q);
    match qcow2_skip {
        None => {
            let (o, q) = (median(&mut p5qo), median(&mut p5qq));
            println!(
                "BENCH P5Q ratio={:.3} ours={o:.0}MB/s ref={q:.0}MB/s",
                o / q
            );
        }
        Some(why) => println!("BENCH P5Q skipped: our vmm does not run a qcow2 disk yet ({why})"),
    }
}

/// Whether a guest run reached `blk: done`.
fn parse_done(out: &[u8]) -> bool {
    String::from_utf8_lossy(out).contains("blk: done")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guest_lines() {
        let r = parse(
            "x\nblk: read 268435456 bytes in 2048 requests cycles=1000 exits=12\n",
            "read",
        )
        .unwrap();
        assert_eq!(
            (r.amount, r.requests, r.cycles, r.exits),
            (268435456, 2048, 1000, 12)
        );
        let r = parse(
            "blk: randwrite 4096 writes cycles=77 flushes=64 exits=5\n",
            "randwrite",
        )
        .unwrap();
        assert_eq!(
            (r.amount, r.requests, r.cycles, r.exits),
            (4096, 4160, 77, 5)
        );
        assert!(parse("blk: read-plan req 131072 bytes depth 4", "read").is_none());
    }
}
