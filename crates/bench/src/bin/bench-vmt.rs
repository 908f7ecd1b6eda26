//! VMT-IDLE: what the guest tools cost while nothing happens, measured in
//! real VMs under our `vmm`:
//!
//! - backdoor exits per idle poll (target <= 2: one empty send, one
//!   receive-size, what vmt(4) and vmtoolsd manage), counted on the host
//!   with the `kvm:kvm_pio` tracepoint (`perf record`) on ports
//!   0x5658/0x5659, the exits grouped into bursts (a gap of 100 ms ends
//!   one): the most common burst is the idle poll; the others are the
//!   periodic reports and clock syncs, shown apart and averaged in;
//! - CPU time per hour of idle polling;
//! - the idle daemon's resident memory (target <= 2 MiB; vmtoolsd ~10 MiB).
//!
//! Two guests, one after the other:
//! 1. **ours**: the Linux test fixture (crates/linux-fixture: its kernel,
//!    busybox) running the static `vmt -d`, our real binary. Its CPU time
//!    and RSS are the guest kernel's accounting for the vmt process
//!    (`/proc/PID/stat`, `/proc/PID/status`). On this project's PVM hosts
//!    guest kernel code is emulated (~0.6 ms a syscall), so the CPU time
//!    is far above what the same binary costs on VT-x/SVM.
//! 2. **ref**: the `tools` test guest (crates/testguest), a bare-metal
//!    vmt(4) work-alike on the same guestrpc client code; its CPU time is
//!    the host's accounting for the whole VM process (all threads,
//!    `/proc/PID/task/*/schedstat`): polling, halting and waking included.
//!
//! Usage: bench-vmt BINDIR VMT   (BINDIR has vmm and testguest; VMT the
//! static vmt, `cd crates/vmt && cargo static`; VMT_IDLE_SECS=N the idle
//! window, 120 by default)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use linux_fixture::{images, kernel::Kernel};

/// A Linux boot that has not reached `/init` by then has failed.
const BOOT_LIMIT: Duration = Duration::from_secs(600);
/// Between the daemon's start and the window: its start report, the
/// first clock sync and the host's first requests are over by then.
const SETTLE_SECS: u64 = 20;
/// A gap this long between exits ends a burst.
const BURST_GAP: f64 = 0.1;

fn fail(msg: &str) -> ! {
    eprintln!("bench-vmt: {msg}");
    std::process::exit(1);
}

/// A VM process with its console lines on a channel.
struct Vm {
    child: Child,
    lines: Receiver<String>,
    console: Vec<String>,
}

impl Vm {
    fn spawn(cmd: &mut Command) -> Vm {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("vmm: {e}")));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Vm {
            child,
            lines,
            console: Vec::new(),
        }
    }

    /// The next console line starting with `prefix`, within `limit`.
    fn wait(&mut self, prefix: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let l = l.trim_end_matches('\r').to_owned();
                    self.console.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => fail(&format!(
                    "no console line `{prefix}` within {limit:?}; console:\n{}",
                    self.console.join("\n")
                )),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time of every thread of `pid`, ns (schedstat's run time).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        fail(&format!("/proc/{pid}/task"));
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `perf record` of the backdoor's exits of `pid`, until stopped.
struct Trace {
    child: Child,
    file: PathBuf,
}

impl Trace {
    fn start(pid: u32, name: &str) -> Trace {
        let file =
            std::env::temp_dir().join(format!("bench-vmt-{}-{name}.data", std::process::id()));
        let child = Command::new("perf")
            .args(["record", "-q", "-e", "kvm:kvm_pio", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("perf: {e} (Debian's linux-perf)")));
        // perf attaches within a moment; what it misses is the window's
        // edge, not its middle.
        std::thread::sleep(Duration::from_millis(300));
        Trace { child, file }
    }

    /// Stops the recording; the times (s) of the exits on the backdoor
    /// ports.
    fn stop(mut self) -> Vec<f64> {
        // SAFETY: a plain signal to our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = Command::new("perf")
            .args(["script", "-F", "time,trace", "-i"])
            .arg(&self.file)
            .output()
            .unwrap_or_else(|e| fail(&format!("perf script: {e}")));
        let _ = std::fs::remove_file(&self.file);
        let text = String::from_utf8_lossy(&out.stdout);
        let times: Vec<f64> = text
            .lines()
            .filter(|l| l.contains(" at 0x5658 ") || l.contains(" at 0x5659 "))
            .filter_map(|l| {
                l.split_whitespace()
                    .next()?
                    .trim_end_matches(':')
                    .parse()
                    .ok()
            })
            .collect();
        if times.is_empty() {
            fail(&format!(
                "perf recorded no backdoor exits: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        times
    }
}

/// `perf stat` of one tracepoint's count for `pid`, until stopped.
struct Count {
    child: Child,
}

impl Count {
    fn start(pid: u32, event: &str) -> Count {
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e", event, "-p"])
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(&format!("perf: {e}")));
        std::thread::sleep(Duration::from_millis(300));
        Count { child }
    }

    fn stop(self) -> u64 {
        // SAFETY: a plain signal to our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = self
            .child
            .wait_with_output()
            .unwrap_or_else(|e| fail(&format!("perf stat: {e}")));
        let text = String::from_utf8_lossy(&out.stderr);
        text.lines()
            .find_map(|l| l.split(',').next()?.trim().parse().ok())
            .unwrap_or_else(|| fail(&format!("perf stat said: {text}")))
    }
}

/// A window's host-side figures for the Linux guest: the VM process's CPU
/// (s) and the guest kernel instructions KVM emulated, over `secs`.
struct HostCost {
    secs: f64,
    cpu: f64,
    emulated: u64,
}

impl HostCost {
    fn measure(pid: u32, from: impl FnOnce(), to: impl FnOnce()) -> HostCost {
        let count = Count::start(pid, "kvm:kvm_emulate_insn");
        let (c0, t0) = (cpu_ns(pid), Instant::now());
        from();
        to();
        let (c1, secs) = (cpu_ns(pid), t0.elapsed().as_secs_f64());
        HostCost {
            secs,
            cpu: (c1 - c0) as f64 / 1e9,
            emulated: count.stop(),
        }
    }
}

/// What an idle window showed.
struct Idle {
    /// The window, s.
    secs: f64,
    /// Backdoor exits in it.
    exits: usize,
    /// Exits per burst, in order.
    bursts: Vec<usize>,
}

impl Idle {
    fn from_times(mut times: Vec<f64>, secs: f64) -> Idle {
        times.sort_by(f64::total_cmp);
        let mut bursts = Vec::new();
        let mut last = f64::NEG_INFINITY;
        for t in &times {
            if t - last > BURST_GAP {
                bursts.push(0);
            }
            *bursts.last_mut().unwrap() += 1;
            last = *t;
        }
        Idle {
            secs,
            exits: times.len(),
            bursts,
        }
    }

    /// The most common burst size: the idle poll's exits.
    fn per_poll(&self) -> usize {
        let mut counts = std::collections::BTreeMap::new();
        for b in &self.bursts {
            *counts.entry(*b).or_insert(0usize) += 1;
        }
        counts
            .into_iter()
            .max_by_key(|&(size, n)| (n, std::cmp::Reverse(size)))
            .map_or(0, |(size, _)| size)
    }

    fn idle_polls(&self) -> usize {
        let p = self.per_poll();
        self.bursts.iter().filter(|&&b| b == p).count()
    }

    /// The other bursts' sizes.
    fn others(&self) -> Vec<usize> {
        let p = self.per_poll();
        self.bursts.iter().copied().filter(|&b| b != p).collect()
    }

    /// Exits per second, everything averaged in.
    fn per_sec(&self) -> f64 {
        self.exits as f64 / self.secs
    }
}

/// What the Linux guest showed.
struct Linux {
    idle: Idle,
    /// vmt's CPU time in the window, by the guest's accounting, s.
    cpu: f64,
    rss_kib: u64,
    hwm_kib: u64,
    log: Vec<String>,
    /// The host's view with vmt polling, and with vmt stopped.
    with: HostCost,
    without: HostCost,
}

/// The Linux fixture running the static vmt.
fn linux_guest(vmm: &Path, vmt: &Path, secs: u64) -> Linux {
    let kernel = Kernel::get().unwrap_or_else(|e| fail(&format!("fixture kernel: {e:?}")));
    let base = secs / 2;
    let script = format!(
        "hostname vmt-bench
echo VMT-BENCH init
/usr/sbin/vmt -d > /tmp/vmt.log 2>&1 &
pid=$!
sleep {SETTLE_SECS}
stat() {{ set -- $(cut -d' ' -f14,15 /proc/$pid/stat); echo \"$(cut -d' ' -f1 /proc/uptime) $1 $2\"; }}
echo \"VMT-BENCH start $(stat)\"
sleep {secs}
echo \"VMT-BENCH end $(stat)\"
kill -STOP $pid
echo VMT-BENCH base-start
sleep {base}
echo VMT-BENCH base-end
kill -CONT $pid
echo \"VMT-BENCH mem $(grep -E '^Vm(RSS|HWM):' /proc/$pid/status | tr -s ' \\t' ' ' | tr '\\n' ' ')\"
sed 's/^/VMT-BENCH log /' /tmp/vmt.log
echo VMT-BENCH done
poweroff -f
"
    );
    let mut image = images::busybox(&script).unwrap_or_else(|e| fail(&format!("image: {e:?}")));
    image
        .copy("/usr/sbin/vmt", vmt)
        .unwrap_or_else(|e| fail(&format!("{}: {e:?}", vmt.display())));
    let initrd = images::write("vmt-idle", &image).unwrap_or_else(|e| fail(&format!("{e:?}")));
    let mut cmd = Command::new(vmm);
    cmd.arg("-k")
        .arg(&kernel.image)
        .arg("-i")
        .arg(&initrd)
        .args(["-a", &kernel.cmdline(""), "-m", "128M", "-s", "stdio"])
        .args(kernel.vmm_cpu_args());
    let mut vm = Vm::spawn(&mut cmd);
    let t = Instant::now();
    vm.wait("VMT-BENCH init", BOOT_LIMIT);
    eprintln!("linux: /init after {:.0} s", t.elapsed().as_secs_f64());
    let start = vm.wait("VMT-BENCH start", Duration::from_secs(SETTLE_SECS + 120));
    let pid = vm.pid();
    let trace = Trace::start(pid, "linux");
    let mut end = String::new();
    let with = HostCost::measure(
        pid,
        || {},
        || {
            end = vm.wait("VMT-BENCH end", Duration::from_secs(secs + 120));
        },
    );
    let times = trace.stop();
    vm.wait("VMT-BENCH base-start", Duration::from_secs(60));
    let without = HostCost::measure(
        pid,
        || {},
        || {
            vm.wait("VMT-BENCH base-end", Duration::from_secs(secs + 120));
        },
    );
    let mem = vm.wait("VMT-BENCH mem", Duration::from_secs(60));
    let mut log = Vec::new();
    loop {
        let l = vm.wait("VMT-BENCH ", Duration::from_secs(60));
        if l == "VMT-BENCH done" {
            break;
        }
        if let Some(line) = l.strip_prefix("VMT-BENCH log ") {
            log.push(line.to_owned());
        }
    }
    let nums = |l: &str| -> Vec<f64> {
        l.split_whitespace()
            .skip(2)
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    let (a, b) = (nums(&start), nums(&end));
    if a.len() != 3 || b.len() != 3 {
        fail(&format!("bad stat lines: {start:?} {end:?}"));
    }
    // USER_HZ is 100.
    let cpu = ((b[1] + b[2]) - (a[1] + a[2])) / 100.0;
    let window = b[0] - a[0];
    let kib = |key: &str| -> u64 {
        let w: Vec<&str> = mem.split_whitespace().collect();
        w.iter()
            .position(|&x| x == key)
            .and_then(|i| w.get(i + 1)?.parse().ok())
            .unwrap_or_else(|| fail(&format!("no {key} in {mem:?}")))
    };
    Linux {
        idle: Idle::from_times(times, window),
        cpu,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        log,
        with,
        without,
    }
}

/// The tools test guest: (exits, host CPU s of the VM process in the
/// window).
fn tools_guest(vmm: &Path, tools: &Path, secs: u64) -> (Idle, f64) {
    let mut cmd = Command::new(vmm);
    cmd.args([
        "-m",
        "64M",
        "-s",
        "stdio",
        "-a",
        "quiet=1 poll_ms=1000",
        "-k",
    ])
    .arg(tools);
    let mut vm = Vm::spawn(&mut cmd);
    vm.wait("testguest tools", Duration::from_secs(60));
    // Its boot report, the host's reset and Capabilities_Register.
    std::thread::sleep(Duration::from_secs(5));
    let trace = Trace::start(vm.pid(), "tools");
    let (c0, t0) = (cpu_ns(vm.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, window) = (cpu_ns(vm.pid()), t0.elapsed().as_secs_f64());
    let times = trace.stop();
    (Idle::from_times(times, window), (c1 - c0) as f64 / 1e9)
}

fn describe(name: &str, idle: &Idle, cpu: f64) {
    let mut others = idle.others();
    others.sort_unstable();
    println!(
        "VMT-IDLE {name}: {} exits in {:.0} s: {} idle polls of {} exits, other bursts {:?}; \
         {:.2} exits/s averaged; CPU {:.3} s in the window = {:.1} s/hour",
        idle.exits,
        idle.secs,
        idle.idle_polls(),
        idle.per_poll(),
        others,
        idle.per_sec(),
        cpu,
        cpu / idle.secs * 3600.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench-vmt BINDIR VMT");
        std::process::exit(2);
    }
    let bin = PathBuf::from(&args[1]);
    let vmt = PathBuf::from(&args[2]);
    let secs: u64 = std::env::var("VMT_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let vmm = bin.join("vmm");
    let tools = Command::new(bin.join("testguest"))
        .args(["path", "tools"])
        .output()
        .unwrap_or_else(|e| fail(&format!("testguest: {e}")));
    let tools = PathBuf::from(String::from_utf8_lossy(&tools.stdout).trim());

    let linux = linux_guest(&vmm, &vmt, secs);
    let (reference, ref_cpu) = tools_guest(&vmm, &tools, secs);
    let ours = &linux.idle;
    describe(
        "ours (vmt -d in the Linux fixture, vmt's CPU by the guest's accounting)",
        ours,
        linux.cpu,
    );
    // What vmt adds to the guest, seen from the host: the same guest
    // with vmt polling and with vmt stopped (SIGSTOP).
    let (w, wo) = (&linux.with, &linux.without);
    let per_hour = |c: &HostCost| c.cpu / c.secs * 3600.0;
    let rate = |c: &HostCost| c.emulated as f64 / c.secs;
    let polls_per_sec = ours.idle_polls() as f64 / ours.secs;
    println!(
        "VMT-IDLE ours, host view: VM process CPU {:.1} s/hour with vmt polling, {:.1} s/hour \
         with it stopped: vmt costs {:.1} s/hour; guest kernel instructions emulated {:.0}/s vs \
         {:.0}/s: {:.0} per poll (PVM emulates guest kernel code, ~1.3 us an instruction)",
        per_hour(w),
        per_hour(wo),
        per_hour(w) - per_hour(wo),
        rate(w),
        rate(wo),
        (rate(w) - rate(wo)) / polls_per_sec
    );
    describe(
        "ref (tools test guest, whole VM process by the host's accounting)",
        &reference,
        ref_cpu,
    );
    println!(
        "VMT-IDLE rss: vmt -d idle VmRSS {:.2} MiB (peak {:.2} MiB), target <= 2 MiB",
        linux.rss_kib as f64 / 1024.0,
        linux.hwm_kib as f64 / 1024.0
    );
    for l in &linux.log {
        println!("VMT-IDLE vmt log: {l}");
    }
    println!(
        "BENCH VMT-IDLE ratio={} ours={}exits ref={}exits",
        ours.per_poll(),
        ours.per_poll(),
        reference.per_poll()
    );
}
