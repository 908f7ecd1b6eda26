//! R7: vmd under a steady stream of `status` requests with 50 VMs running.
//!
//! A private vmd (config, socket and log in a temporary directory) with 50
//! `tools` test guests defined (16 MiB, tools polling every 1 s). 20 client
//! threads send `GET /v1/vms` -- the request `vmctl status` makes, one
//! connection per request -- paced together at 1000 requests/s for 60 s
//! (open loop: request j is due at j/rate s, whatever happened to the ones
//! before it). An answer counts when it is a 200 whose JSON lists all 50
//! VMs (all `running` while they run); every request must be answered, or
//! the benchmark says which were not and exits 1.
//!
//! The figure is latency, measured from the moment a request was due (so a
//! stall shows in every request it delays, not only in the one it hit):
//!
//! - ours: p99 with the 50 VMs running (and their tools reporting);
//! - ref: p99 of the same request stream against the same daemon just
//!   before, with the same 50 VMs defined but not started: the same answer,
//!   less what running VMs cost a status request (vmd reads each VM
//!   process's RSS, the VM processes and their guests share the CPUs);
//! - ratio = ours / ref.
//!
//! It also prints p50, max and the latency from connect, answered/sent, the
//! achieved rate, and vmd's RSS (VmRSS) before and after each stream. At the
//! end it stops the VMs (`vmctl stop -a -w`) and vmd (SIGTERM), and checks
//! that no VM process is left; on failure it kills what it started.
//!
//! Usage: bench-load BINDIR   (BINDIR has vmd, vmctl, vmm and testguest)
//! R7_VMS, R7_CLIENTS, R7_RATE (requests/s), R7_SECS and R7_REF_SECS (the
//! reference stream; R7_SECS by default) override 50, 20, 1000, 60.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::{cpu_secs, http_get, percentile, rss_kib, Vmd};

/// A request not answered within this long counts as not answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn env_num(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("bench-load: {name}={v:?} is not a number");
            std::process::exit(2);
        }),
        Err(_) => default,
    }
}

/// What one request stream gave.
struct Stream {
    sent: usize,
    /// Seconds from due to answered, of the answered requests, sorted.
    due: Vec<f64>,
    /// Seconds from connect to answered, sorted.
    service: Vec<f64>,
    /// The requests not answered as they should be: (index, why).
    failed: Vec<(usize, String)>,
    /// From the first request due to the last answer.
    elapsed: f64,
}

/// Checks one answer: 200 and a JSON list of `vms` VMs, all running if
/// `running`.
fn check(code: u16, body: &[u8], vms: usize, running: bool) -> Result<(), String> {
    if code != 200 {
        return Err(format!(
            "status {code}: {}",
            String::from_utf8_lossy(body).trim()
        ));
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON list: {e}"))?;
    if list.len() != vms {
        return Err(format!("{} VMs listed, not {vms}", list.len()));
    }
    if running {
        if let Some(v) = list.iter().find(|v| v["state"] != "running") {
            return Err(format!("{} is {}", v["name"], v["state"]));
        }
    }
    Ok(())
}

/// `rate` requests/s for `secs` s from `clients` threads, client c sending
/// requests c, c + clients, ...; request j is due at j / rate s.
fn stream(sock: &Path, vms: usize, running: bool, rate: f64, secs: f64, clients: usize) -> Stream {
    let total = (rate * secs).round() as usize;
    let sock: Arc<PathBuf> = Arc::new(sock.to_owned());
    let t0 = Instant::now() + Duration::from_millis(100);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let (mut due_v, mut svc_v, mut failed) = (Vec::new(), Vec::new(), Vec::new());
                let mut last = t0;
                for j in (c..total).step_by(clients) {
                    let due = t0 + Duration::from_secs_f64(j as f64 / rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let start = Instant::now();
                    let r = http_get(&sock, "/v1/vms", Some(REQUEST_TIMEOUT))
                        .and_then(|(code, body)| check(code, &body, vms, running));
                    let end = Instant::now();
                    last = last.max(end);
                    match r {
                        Ok(()) => {
                            due_v.push((end - due).as_secs_f64());
                            svc_v.push((end - start).as_secs_f64());
                        }
                        Err(e) => failed.push((j, e)),
                    }
                }
                (due_v, svc_v, failed, last)
            })
        })
        .collect();
    let mut s = Stream {
        sent: total,
        due: Vec::new(),
        service: Vec::new(),
        failed: Vec::new(),
        elapsed: 0.0,
    };
    let mut last = t0;
    for t in threads {
        // Release builds abort on panic, so a join cannot fail here.
        if let Ok((d, v, f, l)) = t.join() {
            s.due.extend(d);
            s.service.extend(v);
            s.failed.extend(f);
            last = last.max(l);
        }
    }
    s.elapsed = (last - t0).as_secs_f64();
    s.due.sort_by(|a, b| a.total_cmp(b));
    s.service.sort_by(|a, b| a.total_cmp(b));
    s.failed.sort_by_key(|f| f.0);
    s
}

fn ms(s: f64) -> String {
    format!("{:.2}", s * 1e3)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// Prints a stream's figures; Err if any request went unanswered.
fn report(what: &str, s: &Stream) -> Result<(), String> {
    let answered = s.due.len();
    if answered > 0 {
        println!(
            "R7 {what}: {answered}/{} answered, {:.1} requests/s; latency from due p50 {} ms p99 {} ms max {} ms; from connect p50 {} ms p99 {} ms max {} ms",
            s.sent,
            answered as f64 / s.elapsed,
            ms(percentile(&s.due, 50.0)),
            ms(percentile(&s.due, 99.0)),
            ms(percentile(&s.due, 100.0)),
            ms(percentile(&s.service, 50.0)),
            ms(percentile(&s.service, 99.0)),
            ms(percentile(&s.service, 100.0)),
        );
    }
    if s.failed.is_empty() {
        return Ok(());
    }
    for (j, e) in s.failed.iter().take(20) {
        println!("R7 {what}: request {j} not answered: {e}");
    }
    Err(format!(
        "{what}: {} of {} requests not answered",
        s.failed.len(),
        s.sent
    ))
}

/// CPU seconds used by vmd, by this process (the clients) and by the
/// given VM processes, so far.
fn cpu(vmd: u32, vms: &[u32]) -> [f64; 3] {
    [
        cpu_secs(vmd).unwrap_or(0.0),
        cpu_secs(std::process::id()).unwrap_or(0.0),
        vms.iter().filter_map(|&p| cpu_secs(p)).sum(),
    ]
}

/// Where the CPU went during a stream: per request for vmd and the
/// clients, in cores for the VM processes.
fn cpu_line(what: &str, before: [f64; 3], after: [f64; 3], s: &Stream) {
    let per = |i: usize| (after[i] - before[i]) / s.sent as f64 * 1e6;
    println!(
        "R7 {what}: CPU vmd {:.0} us/request, clients {:.0} us/request, VM processes {:.2} cores",
        per(0),
        per(1),
        (after[2] - before[2]) / s.elapsed
    );
}

struct Run {
    vms: usize,
    clients: usize,
    rate: f64,
    secs: f64,
    ref_secs: f64,
}

fn run(r: &Run, bin: &Path, dir: &Path) -> Result<(), String> {
    let o = Command::new(bin.join("testguest"))
        .args(["path", "tools"])
        .output()
        .map_err(|e| format!("testguest: {e}"))?;
    let tools = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    if !o.status.success() || tools.is_empty() {
        return Err("testguest path tools: no guest".into());
    }
    let mut conf = String::new();
    for i in 0..r.vms {
        conf += &format!("vm \"g{i}\" {{\n disable\n kernel \"{tools}\"\n cmdline \"hostname=g{i} poll_ms=1000 quiet=1\"\n memory 16M\n}}\n");
    }
    let mut v = Vmd::start(bin, dir, &conf)?;
    let pid = v.pid();
    println!(
        "R7: {} VMs, {} clients, {} requests/s, {} s (reference {} s); vmd RSS at start {}",
        r.vms,
        r.clients,
        r.rate,
        r.secs,
        r.ref_secs,
        mib(rss_kib(pid))
    );

    // The reference: the same stream, the same daemon, the VMs defined
    // but not started.
    let (ref_rss0, c0) = (rss_kib(pid), cpu(pid, &[]));
    let refs = stream(&v.sock, r.vms, false, r.rate, r.ref_secs, r.clients);
    let (ref_rss1, c1) = (rss_kib(pid), cpu(pid, &[]));
    let answered = report("ref (VMs defined, none running)", &refs);
    cpu_line("ref", c0, c1, &refs);
    println!(
        "R7 ref: vmd RSS {} before, {} after",
        mib(ref_rss0),
        mib(ref_rss1)
    );
    answered?;

    // Start them all, a vmctl each, and wait until every guest's tools
    // have reported its hostname.
    let t = Instant::now();
    let starts: Vec<_> = (0..r.vms)
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
    for (i, s) in starts.into_iter().enumerate() {
        match s.join() {
            Ok(Ok(o)) if o.status.success() => {}
            Ok(Ok(o)) => {
                return Err(format!(
                    "vmctl start g{i}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            _ => return Err(format!("vmctl start g{i} did not run")),
        }
    }
    loop {
        let st = v.status();
        let up = st
            .iter()
            .filter(|s| s["state"] == "running" && s["hostname"].is_string())
            .count();
        if up == r.vms {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("only {up}/{} VMs running after 120 s", r.vms));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "R7: {} VMs running, tools reporting, {:.2} s after the starts",
        r.vms,
        t.elapsed().as_secs_f64()
    );
    // Let the guests settle into their 1 s idle polling.
    std::thread::sleep(Duration::from_secs(2));

    let vm_pids: Vec<u32> = v
        .status()
        .iter()
        .filter_map(|s| s["pid"].as_u64())
        .map(|p| p as u32)
        .collect();
    let (rss0, c0) = (rss_kib(pid), cpu(pid, &vm_pids));
    let ours = stream(&v.sock, r.vms, true, r.rate, r.secs, r.clients);
    let (rss1, c1) = (rss_kib(pid), cpu(pid, &vm_pids));
    let answered = report(&format!("load ({} VMs running)", r.vms), &ours);
    cpu_line("load", c0, c1, &ours);
    println!("R7 load: vmd RSS {} before, {} after", mib(rss0), mib(rss1));
    answered?;

    let (o, f) = (percentile(&ours.due, 99.0), percentile(&refs.due, 99.0));
    println!(
        "BENCH R7 ratio={:.2} ours={}ms ref={}ms",
        o / f,
        ms(o),
        ms(f)
    );
    println!(
        "R7 detail: answered {}/{} (ref {}/{}), {:.1} requests/s, vmd RSS {} at load start, {} at load end",
        ours.due.len(),
        ours.sent,
        refs.due.len(),
        refs.sent,
        ours.due.len() as f64 / ours.elapsed,
        mib(rss0),
        mib(rss1)
    );

    // Stop the guests through their tools, then vmd.
    let t = Instant::now();
    let o = v.ctl(&["stop", "-a", "-w"]);
    if !o.status.success() {
        return Err(format!(
            "vmctl stop -a -w: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let left = v
        .status()
        .iter()
        .filter(|s| !s["pid"].is_null() || !(s["state"] == "stopped" || s["state"] == "disabled"))
        .count();
    println!(
        "R7: VMs stopped in {:.2} s ({left} not stopped)",
        t.elapsed().as_secs_f64()
    );
    v.stop()?;
    if left > 0 {
        return Err(format!("{left} VMs not stopped by vmctl stop -a -w"));
    }
    Ok(())
}

/// vmd's warnings and errors, from its log.
fn log_trouble(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("vmd.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .map(str::to_owned)
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        eprintln!("usage: bench-load BINDIR");
        std::process::exit(2);
    }
    let r = Run {
        vms: env_num("R7_VMS", 50.0) as usize,
        clients: (env_num("R7_CLIENTS", 20.0) as usize).max(1),
        rate: env_num("R7_RATE", 1000.0),
        secs: env_num("R7_SECS", 60.0),
        ref_secs: env_num("R7_REF_SECS", env_num("R7_SECS", 60.0)),
    };
    if r.rate <= 0.0 || r.secs <= 0.0 || r.ref_secs <= 0.0 || r.vms == 0 {
        eprintln!("bench-load: R7_VMS, R7_RATE, R7_SECS and R7_REF_SECS must be positive");
        std::process::exit(2);
    }
    let dir = bench::run_dir("bench-load");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bench-load: {}: {e}", dir.display());
        std::process::exit(1);
    }
    // The Vmd inside run() is dropped (VMs and vmd stopped, leftovers
    // killed) before its result is looked at.
    let res = run(&r, Path::new(&args[1]), &dir);
    let trouble = log_trouble(&dir);
    println!("R7: vmd logged {} warnings/errors", trouble.len());
    for l in trouble.iter().take(10) {
        println!("R7: vmd: {l}");
    }
    match res {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(e) => {
            eprintln!(
                "bench-load: {e} (vmd's log: {})",
                dir.join("vmd.log").display()
            );
            std::process::exit(1);
        }
    }
}
