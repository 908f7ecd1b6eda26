//! The daemon's figures, each against QEMU (`qemu-system-x86_64 -M
//! microvm -accel kvm`, Debian's) on the same guest in the same run:
//!
//! - P2: `vmctl start` to the guest's first port I/O, vs. QEMU's exec to
//!   the same: the `first` test guest writes a byte to COM1 as its very
//!   first instruction, so the guest's own boot stays out of the figure.
//!   Ours is an upper bound: the pty is only opened once `vmctl start`
//!   returns (bytes written before wait there).
//! - P3: VM process RSS minus the guest RAM it has touched, vs. QEMU's.
//! - P4: 100 tools guests started at once: VMs/s until all are up (ours:
//!   their tools reported a hostname; QEMU: their first console line).
//! - P6: `vmctl stop -w` to VM process gone for a tools guest polling every
//!   1 s; the ratio is the median over the poll interval.
//!
//! Usage: bench-daemon BINDIR QEMU   (BINDIR has vmd, vmctl, vmm, testguest;
//! BENCH_ONLY=P2,P4 runs only the figures named)

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::{median, Vmd};

/// P4 rounds (each: 100 of ours, then 100 QEMUs); the medians count.
const P4_ROUNDS: usize = 5;

struct Env {
    bin: PathBuf,
    qemu: PathBuf,
    dir: PathBuf,
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-daemon: {msg}");
    std::process::exit(1);
}

fn guest(env: &Env, name: &str) -> String {
    let o = Command::new(env.bin.join("testguest"))
        .args(["path", name])
        .output()
        .unwrap_or_else(|e| fail(&e.to_string()));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// vmd with `conf`, its files in the benchmark's directory.
fn vmd(env: &Env, conf: &str) -> Vmd {
    Vmd::start(&env.bin, &env.dir, conf).unwrap_or_else(|e| fail(&e))
}

fn qemu_cmd(env: &Env, kernel: &str, cmdline: &str) -> Command {
    let mut c = Command::new(&env.qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=on,acpi=on",
        "-accel",
        "kvm",
        "-m",
        "32",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        kernel,
        "-append",
        cmdline,
    ]);
    c.stdin(Stdio::null()).stderr(Stdio::null());
    c
}

/// P2 for QEMU: spawn to first byte on its console.
fn qemu_first_byte(env: &Env, kernel: &str) -> f64 {
    let t = Instant::now();
    let mut c = qemu_cmd(env, kernel, "")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("qemu: {e}")));
    let mut b = [0u8; 1];
    c.stdout.as_mut().unwrap().read_exact(&mut b).unwrap();
    let dt = t.elapsed().as_secs_f64();
    let _ = c.kill();
    let _ = c.wait();
    dt
}

/// P2 for us: `vmctl start` to first byte readable on the VM's console
/// (vmctl names the console pty on stderr when the start succeeds).
fn ours_first_byte(v: &Vmd) -> f64 {
    let t = Instant::now();
    let o = v.ctl(&["start", "first"]);
    if !o.status.success() {
        fail(&format!(
            "vmctl start: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let err = String::from_utf8_lossy(&o.stderr);
    let tty = err.split_whitespace().find(|w| w.starts_with("/dev/pts/"));
    let dt = match tty.and_then(|p| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY)
            .open(p)
            .ok()
    }) {
        Some(mut f) => {
            let mut b = [0u8; 1];
            f.read_exact(&mut b).unwrap();
            t.elapsed().as_secs_f64()
        }
        // Already gone: the guest printed and powered off before we looked.
        None => t.elapsed().as_secs_f64(),
    };
    let _ = v.ctl(&["wait", "first"]);
    dt
}

/// RSS of a process minus the resident part of its guest RAM mapping (the
/// anonymous mapping of exactly `mem` bytes).
fn rss_minus_guest(pid: u32, mem: u64) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut cur_is_guest = false;
    for l in smaps.lines() {
        let head = l.split_whitespace().next().unwrap_or("");
        if head.contains('-') && !head.ends_with(':') {
            let mut r = head.split('-');
            let a = u64::from_str_radix(r.next()?, 16).ok()?;
            let b = u64::from_str_radix(r.next()?, 16).ok()?;
            cur_is_guest = b - a == mem;
        } else if let Some(v) = l.strip_prefix("Rss:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            total += kb * 1024;
            if cur_is_guest {
                guest += kb * 1024;
            }
        }
    }
    Some((total, guest))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench-daemon BINDIR QEMU");
        std::process::exit(2);
    }
    let dir = bench::run_dir("bench-daemon");
    std::fs::create_dir_all(&dir).unwrap();
    let env = Env {
        bin: PathBuf::from(&args[1]),
        qemu: PathBuf::from(&args[2]),
        dir: dir.clone(),
    };
    // BENCH_ONLY=P4,P6 runs just those figures.
    let only = std::env::var("BENCH_ONLY").ok();
    let want = |id: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == id))
    };
    let (first, tools, ticker) = (
        guest(&env, "first"),
        guest(&env, "tools"),
        guest(&env, "ticker"),
    );

    // P2
    if want("P2") {
        let v = vmd(
            &env,
            &format!("vm \"first\" {{\n disable\n kernel \"{first}\"\n memory 32M\n}}\n"),
        );
        let (mut ours, mut qemu) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            ours.push(ours_first_byte(&v));
            qemu.push(qemu_first_byte(&env, &first));
        }
        let (o, q) = (median(&mut ours) * 1e3, median(&mut qemu) * 1e3);
        println!(
            "P2: start to the guest's first port I/O, median of 15: ours {o:.1} ms, qemu {q:.1} ms"
        );
        println!("BENCH P2 ratio={:.3} ours={o:.1}ms ref={q:.1}ms", o / q);
    }

    // P3
    if want("P3") {
        let mem = 32u64 << 20;
        let v = vmd(&env, &format!("vm \"tick\" {{\n kernel \"{ticker}\"\n cmdline \"interval_ms=100\"\n memory 32M\n}}\n"));
        let t = Instant::now();
        let pid = loop {
            let st = v.status();
            if let Some(p) = st.first().and_then(|s| s["pid"].as_u64()) {
                break p as u32;
            }
            if t.elapsed() > Duration::from_secs(10) {
                fail("ticker did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(500));
        let (ot, og) = rss_minus_guest(pid, mem).unwrap_or_else(|| fail("smaps"));
        let mut q = qemu_cmd(&env, &ticker, "interval_ms=100")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let (qt, qg) = rss_minus_guest(q.id(), mem).unwrap_or_else(|| fail("qemu smaps"));
        let _ = q.kill();
        let _ = q.wait();
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let (o, r) = (mib(ot - og), mib(qt - qg));
        println!(
            "P3: RSS ours {:.1} MiB (guest {:.1} MiB), qemu {:.1} MiB (guest {:.1} MiB)",
            mib(ot),
            mib(og),
            mib(qt),
            mib(qg)
        );
        println!("BENCH P3 ratio={:.3} ours={o:.2}MiB ref={r:.2}MiB", o / r);
    }

    // P4
    if want("P4") {
        let n = 100;
        let mut conf = String::from("staggered start parallel 100 delay 0\n");
        for i in 0..n {
            conf += &format!("vm \"g{i}\" {{\n disable\n kernel \"{tools}\"\n cmdline \"hostname=g{i} poll_ms=1000 quiet=1\"\n memory 16M\n}}\n");
        }
        // Five alternating rounds, medians: one burst of 100 VMs on 2 cores
        // varies by tens of percent with whatever else the machine does.
        let (mut ours_v, mut qemu_v) = (Vec::new(), Vec::new());
        for round in 0..P4_ROUNDS {
            let v = vmd(&env, &conf);
            let t = Instant::now();
            let starts: Vec<_> = (0..n)
                .map(|i| {
                    let (bin, sock) = (v.bin.clone(), v.sock.clone());
                    std::thread::spawn(move || {
                        Command::new(bin.join("vmctl"))
                            .arg("-s")
                            .arg(sock)
                            .args(["start", &format!("g{i}")])
                            .output()
                    })
                })
                .collect();
            for s in starts {
                let _ = s.join();
            }
            let started = t.elapsed().as_secs_f64();
            loop {
                let up = v
                    .status()
                    .iter()
                    .filter(|s| s["hostname"].is_string())
                    .count();
                if up == n {
                    break;
                }
                if t.elapsed() > Duration::from_secs(120) {
                    fail(&format!("only {up}/{n} guests up after 120 s"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let ours = t.elapsed().as_secs_f64();
            drop(v);

            let t = Instant::now();
            let mut qs: Vec<Child> = (0..n)
                .map(|i| {
                    qemu_cmd(&env, &tools, &format!("hostname=g{i} quiet=1"))
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for q in qs.iter_mut() {
                let mut line = String::new();
                BufReader::new(q.stdout.as_mut().unwrap())
                    .read_line(&mut line)
                    .unwrap();
            }
            let qemu = t.elapsed().as_secs_f64();
            for q in qs.iter_mut() {
                let _ = q.kill();
                let _ = q.wait();
            }
            println!("P4 round {round}: {n} VMs up in {ours:.2} s ours (tools reported; all vmctl start done at {started:.2} s), {qemu:.2} s qemu (first console line)");
            ours_v.push(ours);
            qemu_v.push(qemu);
        }
        let (ours, qemu) = (median(&mut ours_v), median(&mut qemu_v));
        let (o, q) = (n as f64 / ours, n as f64 / qemu);
        println!("P4: median of {P4_ROUNDS}: {ours:.2} s ours, {qemu:.2} s qemu");
        println!(
            "BENCH P4 ratio={:.2} ours={o:.1}VMs/s ref={q:.1}VMs/s",
            o / q
        );
    }

    // P6
    if want("P6") {
        let v = vmd(&env, &format!("vm \"web1\" {{\n disable\n kernel \"{tools}\"\n cmdline \"hostname=web1 poll_ms=1000\"\n memory 32M\n}}\n"));
        let mut times = Vec::new();
        for _ in 0..5 {
            let _ = v.ctl(&["start", "web1"]);
            let t = Instant::now();
            while !v.status().iter().any(|s| s["tools"] == true) {
                if t.elapsed() > Duration::from_secs(20) {
                    fail("tools did not come up");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Let the guest settle into its 1 s idle polling.
            std::thread::sleep(Duration::from_millis(1500));
            let t = Instant::now();
            let o = v.ctl(&["stop", "-w", "web1"]);
            if !o.status.success() {
                fail(&format!("stop: {}", String::from_utf8_lossy(&o.stderr)));
            }
            times.push(t.elapsed().as_secs_f64());
        }
        let m = median(&mut times);
        println!("P6: vmctl stop -w, tools polling every 1 s: median of 5 {m:.3} s");
        println!("BENCH P6 ratio={m:.3} ours={m:.3}s ref=1.000s");
    }
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
