//! P1: cost of one port-I/O exit round trip from guest CPL3, through our
//! VMM (`vmm`) against the raw `KVM_RUN` loop, on the same guest, in the
//! same run. The guest times N `out` instructions with rdtsc itself, so
//! boot and process start-up stay out of the figure.
//!
//! Usage: bench-pio VMM GUEST [COUNT] [ROUNDS]

use std::path::PathBuf;
use std::process::Command;

use bench::{median, parse_pio, rawloop};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench-pio VMM GUEST [COUNT] [ROUNDS]");
        std::process::exit(2);
    }
    let vmm = PathBuf::from(&args[1]);
    let guest = PathBuf::from(&args[2]);
    let count: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5);
    let cmdline = format!("count={count}");
    let mem = 64u64 << 20;

    let mut ours = Vec::new();
    let mut raw = Vec::new();
    let mut khz = 0;
    // Alternate the two so drift in machine load hits both alike.
    for round in 0..rounds {
        let (out, k) = rawloop::run(&guest, &cmdline, mem).unwrap_or_else(|e| fail(&e));
        khz = k;
        let (n, cyc) =
            parse_pio(&out).unwrap_or_else(|| fail(&format!("raw loop: no pio line in {out:?}")));
        raw.push(cyc as f64 / n as f64);

        let o = Command::new(&vmm)
            .args(["-m", "64M", "-s", "stdio", "-a", &cmdline, "-k"])
            .arg(&guest)
            .output()
            .unwrap_or_else(|e| fail(&format!("{}: {e}", vmm.display())));
        let out = String::from_utf8_lossy(&o.stdout);
        if !o.status.success() {
            fail(&format!(
                "vmm exited {}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let (n, cyc) =
            parse_pio(&out).unwrap_or_else(|| fail(&format!("vmm: no pio line in {out:?}")));
        ours.push(cyc as f64 / n as f64);
        println!(
            "round {round}: raw {:.0} cycles/exit, vmm {:.0} cycles/exit",
            raw[round], ours[round]
        );
    }
    let to_us = |cycles: f64| cycles / khz as f64 * 1000.0;
    let (o, r) = (to_us(median(&mut ours)), to_us(median(&mut raw)));
    println!("tsc {khz} kHz, {count} exits per run, median of {rounds} rounds");
    println!("BENCH P1 ratio={:.3} ours={o:.2}us ref={r:.2}us", o / r);
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-pio: {msg}");
    std::process::exit(1);
}
