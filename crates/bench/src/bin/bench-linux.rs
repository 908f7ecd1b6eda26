//! P7: a real Linux boot, start to the first line `/init` prints, under our
//! vmd against `qemu-system-x86_64 -M microvm -accel kvm`, same kernel
//! (the Linux test fixture's, crates/linux-fixture), same initramfs, same
//! memory, same CPU model (Intel family 6 model 44 with the fixture's
//! features hidden), in one run, alternating.
//!
//! On this project's PVM hosts nearly all of a Linux boot is kernel code
//! that KVM emulates instruction by instruction; what a VMM can change is
//! how much work its machine gives the kernel (tables to scan, devices to
//! probe) and its own exits. The ratio is the median of the rounds'
//! ratios (see `main`); `ours` and `ref` are each side's median boot.
//! `BENCH_DETAIL=1` prints each boot.
//!
//! Usage: bench-linux BINDIR QEMU   (BINDIR has vmd and vmctl; P7_ROUNDS=N)

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::median;
use linux_fixture::{images, kernel::Kernel};

/// What `/init` prints first: the end of the measured interval.
const MARK: &str = "VMD-P7 first line from /init";
/// A boot that has not reached `/init` by then has failed.
const LIMIT: Duration = Duration::from_secs(600);
const MEMORY_MIB: u32 = 128;

fn fail(msg: &str) -> ! {
    eprintln!("bench-linux: {msg}");
    std::process::exit(1);
}

/// Reads lines from `r` until one contains [`MARK`]; true if it came.
fn read_to_mark(r: impl std::io::Read) -> bool {
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) if String::from_utf8_lossy(&line).contains(MARK) => return true,
            Ok(_) => {}
        }
    }
}

/// Runs `f` on another thread; fails the benchmark after [`LIMIT`].
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LIMIT)
        .unwrap_or_else(|_| fail(&format!("{what}: no `{MARK}` within {LIMIT:?}")))
}

struct Vmd {
    child: Child,
    sock: PathBuf,
    bin: PathBuf,
}

impl Vmd {
    fn start(bin: &Path, dir: &Path, conf: &str) -> Vmd {
        let cfg = dir.join("vm.conf");
        std::fs::write(&cfg, conf).unwrap_or_else(|e| fail(&e.to_string()));
        let sock = dir.join("vmd.sock");
        let _ = std::fs::remove_file(&sock);
        let log =
            std::fs::File::create(dir.join("vmd.log")).unwrap_or_else(|e| fail(&e.to_string()));
        let child = Command::new(bin.join("vmd"))
            .args(["-d", "-f"])
            .arg(&cfg)
            .arg("-s")
            .arg(&sock)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("vmd: {e}")));
        let v = Vmd {
            child,
            sock,
            bin: bin.to_path_buf(),
        };
        let t = Instant::now();
        while !v.ctl(&["status"]).status.success() {
            if t.elapsed() > Duration::from_secs(10) {
                fail("vmd did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        v
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bin.join("vmctl"))
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap_or_else(|e| fail(&format!("vmctl: {e}")))
    }

    /// `vmctl start` to the mark on the console (the pty vmctl names is
    /// opened as soon as it returns; the kernel prints nothing for the
    /// first second of emulated boot, so nothing is missed).
    fn boot(&self) -> f64 {
        let t = Instant::now();
        let o = self.ctl(&["start", "p7"]);
        if !o.status.success() {
            fail(&format!(
                "vmctl start: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let err = String::from_utf8_lossy(&o.stderr);
        let tty = err
            .split_whitespace()
            .find(|w| w.starts_with("/dev/pts/"))
            .unwrap_or_else(|| fail(&format!("vmctl start named no console: {err}")))
            .to_owned();
        let console = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&tty)
            .unwrap_or_else(|e| fail(&format!("{tty}: {e}")));
        if !bounded("our vmd", move || read_to_mark(console)) {
            fail("our VM's console closed before the mark");
        }
        let dt = t.elapsed().as_secs_f64();
        let _ = self.ctl(&["stop", "-f", "-w", "p7"]);
        dt
    }
}

impl Drop for Vmd {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "-f", "-a"]);
        // SAFETY: a plain signal to our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// QEMU exec to the mark on its serial console (stdout).
fn qemu_boot(qemu: &Path, kernel: &Kernel, initrd: &Path) -> f64 {
    // QEMU's own CPU model with the fixture's identity; qemu64 has none of
    // the other features the fixture hides.
    let cpu = format!(
        "qemu64,vendor=GenuineIntel,family={},model={},-cx16,-xsave,-popcnt",
        linux_fixture::kernel::CPU_FAMILY,
        linux_fixture::kernel::CPU_MODEL
    );
    let t = Instant::now();
    let mut c = Command::new(qemu)
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=on,acpi=on",
            "-accel",
            "kvm",
        ])
        .args(["-cpu", &cpu, "-m", &MEMORY_MIB.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(kernel.cmdline(""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("{}: {e}", qemu.display())));
    let out = c.stdout.take().expect("piped");
    let got = bounded("qemu", move || read_to_mark(out));
    let dt = t.elapsed().as_secs_f64();
    let _ = c.kill();
    let _ = c.wait();
    if !got {
        fail("QEMU's console closed before the mark");
    }
    dt
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        fail("usage: bench-linux BINDIR QEMU");
    }
    let bin = PathBuf::from(&args[1]);
    let qemu = PathBuf::from(&args[2]);
    let rounds: usize = std::env::var("P7_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let detail = std::env::var_os("BENCH_DETAIL").is_some();

    let kernel = Kernel::get().unwrap_or_else(|e| fail(&e.to_string()));
    let image = images::busybox(&format!("echo '{MARK}'\npoweroff -f\n"))
        .unwrap_or_else(|e| fail(&e.to_string()));
    let initrd = images::write("p7", &image).unwrap_or_else(|e| fail(&e.to_string()));
    let dir = std::env::temp_dir().join(format!("bench-linux.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&e.to_string()));
    let conf = format!(
        "vm \"p7\" {{\n\tdisable\n\tkernel \"{}\"\n\tinitrd \"{}\"\n\tcmdline \"{}\"\n\tmemory {MEMORY_MIB}M\n{}}}\n",
        kernel.image.display(),
        initrd.display(),
        kernel.cmdline(""),
        kernel.vm_conf_cpu()
    );
    let vmd = Vmd::start(&bin, &dir, &conf);
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate who goes first: machine load drifts over minutes.
        let (o, q) = if round % 2 == 0 {
            let o = vmd.boot();
            (o, qemu_boot(&qemu, &kernel, &initrd))
        } else {
            let q = qemu_boot(&qemu, &kernel, &initrd);
            (vmd.boot(), q)
        };
        if detail {
            eprintln!("P7 round {round}: ours {o:.2}s qemu {q:.2}s");
        }
        ours.push(o);
        theirs.push(q);
        ratios.push(o / q);
    }
    drop(vmd);
    let _ = std::fs::remove_dir_all(&dir);
    let (o, q) = (median(&mut ours), median(&mut theirs));
    // The ratio is the median of each round's: a round's two boots are a
    // minute apart, its rounds ten, and this machine's speed drifts by
    // more than the difference measured over that time (both VMMs' boots
    // moved 37.6 -> 35.3 s within one run): the ratio of the two medians
    // would weigh that drift in, a round's ratio mostly cancels it.
    if detail {
        eprintln!("P7 ratio of the medians {:.3}", o / q);
    }
    println!(
        "BENCH P7 ratio={:.3} ours={o:.2}s ref={q:.2}s",
        median(&mut ratios)
    );
}
