//! RPCI-LB / RPCI-HB: one RPCI round trip (open, send `info-get`, receive
//! a 100-byte reply, close) through our backdoor, over the low-bandwidth
//! port (4 bytes per exit) and with high-bandwidth transfers, as a ratio to
//! the raw PIO exit cost measured in the same run (the raw KVM_RUN loop of
//! P1). The ratio reads as "how many bare exits one request costs".
//!
//! Usage: bench-rpci VMM PIO_GUEST TOOLS_GUEST [COUNT] [ROUNDS]

use std::path::PathBuf;
use std::process::Command;

use bench::{median, parse_pio, rawloop};

fn parse_rpci(out: &str, kind: &str) -> Option<(u64, u64)> {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("rpci: {kind} count=")))?;
    bench::parse_pio(&line.replacen(&format!("rpci: {kind}"), "pio:", 1))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bench-rpci VMM PIO_GUEST TOOLS_GUEST [COUNT] [ROUNDS]");
        std::process::exit(2);
    }
    let vmm = PathBuf::from(&args[1]);
    let pio = PathBuf::from(&args[2]);
    let tools = PathBuf::from(&args[3]);
    let count: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let rounds: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(3);

    let (mut exit, mut lb, mut hb) = (Vec::new(), Vec::new(), Vec::new());
    let mut khz = 0;
    for round in 0..rounds {
        let (out, k) = rawloop::run(&pio, "count=100000", 64 << 20).unwrap_or_else(|e| fail(&e));
        khz = k;
        let (n, c) = parse_pio(&out).unwrap_or_else(|| fail(&format!("raw loop: {out:?}")));
        exit.push(c as f64 / n as f64);

        let o = Command::new(&vmm)
            .args([
                "-m",
                "64M",
                "-s",
                "stdio",
                "-a",
                &format!("bench={count} poll_ms=1000"),
                "-k",
            ])
            .arg(&tools)
            .output()
            .unwrap_or_else(|e| fail(&format!("{}: {e}", vmm.display())));
        let out = String::from_utf8_lossy(&o.stdout);
        let (n, c) = parse_rpci(&out, "lb").unwrap_or_else(|| fail(&format!("no lb line: {out}")));
        lb.push(c as f64 / n as f64);
        let (n, c) = parse_rpci(&out, "hb").unwrap_or_else(|| fail(&format!("no hb line: {out}")));
        hb.push(c as f64 / n as f64);
        println!(
            "round {round}: exit {:.0} cycles, rpci lb {:.0} cycles, rpci hb {:.0} cycles",
            exit[round], lb[round], hb[round]
        );
    }
    let us = |c: f64| c / khz as f64 * 1000.0;
    let (e, l, h) = (
        us(median(&mut exit)),
        us(median(&mut lb)),
        us(median(&mut hb)),
    );
    println!("tsc {khz} kHz, {count} requests per run, median of {rounds} rounds");
    println!(
        "BENCH RPCI-LB ratio={:.1} ours={l:.1}us ref={e:.2}us",
        l / e
    );
    println!(
        "BENCH RPCI-HB ratio={:.1} ours={h:.1}us ref={e:.2}us",
        h / e
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-rpci: {msg}");
    std::process::exit(1);
}
