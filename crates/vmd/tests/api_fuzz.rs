//! The control API against a hostile client: generated requests to a real
//! vmd, which must answer every one of them, never with a 5xx, and stay
//! up (issue 12's fuzz target for the API request bodies, driven where
//! their checks live: vmd's handlers).
//!
//! `fuzz/fuzz_targets/api_bodies.rs` fuzzes the request types' parsing
//! and the checks in the `api`, `vmconf` and `cpumodel` crates with
//! libFuzzer; what vmd does with a request (look-ups, permissions, the
//! overrides a start applies, starting VM processes, reloads) lives in
//! the vmd binary, which has no library to link a fuzz target with. So
//! this drives the daemon itself: vmd in a network namespace of the
//! test's own (requests ask for taps and switches), with a switch and
//! three configured VMs (one that boots the tools test guest and allows
//! every instance change, one with a kernel that is not there, one that
//! allows memory only), and a kernel, disk images, a FIFO, a directory
//! and a second vm.conf for requests to name. Requests are generated from
//! a seed: mostly one of the API's endpoints (sometimes with the wrong
//! method, or a garbage path) with a JSON body of the endpoint's type,
//! each field there or not, of the right JSON type or not, with values
//! from the edges of what the daemon checks (names by OpenBSD's rule and
//! not, memory from 0 to 2^64-1, CPU models, paths to odd files, long and
//! escaped text, ids that are numbers and not); a share of bodies get
//! random byte edits, and some are bytes with no structure at all.
//!
//! Checked for every request: an HTTP answer comes (a connection closed
//! without one is a handler that panicked), with a status below 500, or
//! 502, the API's answer when the VM process failed (a kernel it cannot
//! load, ...: the daemon did its part; each reason is listed at the end
//! with the first request that got it); long polls (`/wait`, a stop with
//! `wait`) may go unanswered within the client's 300 ms, nothing else
//! within 60 s. Every 100 requests and at the end: vmd is alive and lists
//! its VMs, and at the end no more than the few names requests use.
//! Every VM process vmd runs must be one it lists (at two checks in a
//! row): one it forgot runs on, and nobody can stop it through vmd.
//! A failure does not end the run: each kind (its message less digits)
//! is printed once with its request, counted, and the test fails at the
//! end with the list and the seed; only a dead daemon ends it at once.
//! The answers by endpoint and status, and vmd's RSS at the start and
//! the end, are printed too.
//!
//! `VMD_API_FUZZ_REQUESTS` (default 2000) and `VMD_API_FUZZ_SEED` (default:
//! from the clock; printed) set the run, e.g. the million of the fuzz
//! README:
//!
//! ```text
//! VMD_API_FUZZ_REQUESTS=1000000 cargo test -p vmd --test api_fuzz -- --nocapture
//! ```

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// splitmix64: small, fast, and the same sequence from the same seed.
struct Rng {
    state: u64,
    /// Values of the right JSON type, from the pools: a request that gets
    /// past the checks, most of the time.
    tame: bool,
}

impl Rng {
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True `pct` percent of the time.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// The files and names requests choose from.
struct World {
    /// Paths: a bootable kernel (the first), disk images (a usable one
    /// first), odd files.
    kernels: Vec<String>,
    disks: Vec<String>,
    confs: Vec<String>,
}

/// VM names and ids: configured, instances and ad-hoc VMs the requests
/// create (a few names, so that VMs are reused, not piled up), and ones
/// that are not names.
const NAMES: &[&str] = &[
    "g", "h", "i", "x0", "x1", "x2", "new0", "new1", "l0", "l1", "1", "2", "3", "7", "0",
];
const BAD_NAMES: &[&str] = &[
    "",
    "42",
    "-x",
    ".x",
    "_x",
    "a b",
    "a/b",
    "..",
    "a\nb",
    "\u{1b}[31mred",
    "\u{202e}x",
    "é",
    "4294967296",
    "-1",
    " g",
    "g ",
    "G",
    "a:b",
    "a%2Fb",
];

/// Text with what breaks things: escapes, controls, long runs.
fn text(r: &mut Rng) -> String {
    match r.below(12) {
        0 => String::new(),
        1 => "a".repeat(r.below(200) as usize),
        2 => "x".repeat(64 + r.below(70_000) as usize),
        3 => "\u{0}".into(),
        4 => "line\nforged: yes\r\n\u{1b}[2J".into(),
        5 => "\u{202e}\u{200b}\u{feff}\u{85}".into(),
        6 => "../../../../etc/shadow".into(),
        7 => "guestinfo.guestinfo.x".into(),
        8 => "%FF%00%2F".into(),
        9 => r.pick(NAMES).to_string(),
        10 => r.pick(BAD_NAMES).to_string(),
        _ => {
            let n = r.below(24) as usize;
            (0..n)
                .map(|_| match r.below(4) {
                    0 => char::from_u32(r.below(0x80) as u32).unwrap(),
                    1 => char::from_u32(0x80 + r.below(0x780) as u32).unwrap_or('?'),
                    2 => *r.pick(&['"', '\\', '/', ' ', '{', '}', ':', ',']),
                    _ => char::from(b'a' + r.below(26) as u8),
                })
                .collect()
        }
    }
}

/// A JSON string literal of `s`.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A JSON string: mostly from `pool`, sometimes any text, a raw escape
/// serde_json must refuse (a lone surrogate), or not a string at all.
fn jstr(r: &mut Rng, pool: &[String]) -> String {
    if r.tame && !pool.is_empty() {
        return js(r.pick(pool).as_str());
    }
    match r.below(20) {
        0..=11 if !pool.is_empty() => js(r.pick(pool).as_str()),
        12..=15 => js(&text(r)),
        16 => "\"\\ud800\"".into(),
        17 => "\"\\u0000\"".into(),
        _ => wrong_type(r),
    }
}

fn wrong_type(r: &mut Rng) -> String {
    r.pick(&[
        "null",
        "true",
        "0",
        "-1",
        "1.5",
        "1e400",
        "[]",
        "{}",
        "[\"a\"]",
        "\"\"",
        "18446744073709551616",
    ])
    .to_string()
}

fn jnum(r: &mut Rng, pool: &[u64]) -> String {
    if r.tame {
        return r.pick(pool).to_string();
    }
    match r.below(12) {
        0..=8 => r.pick(pool).to_string(),
        9 => r.next().to_string(),
        10 => (r.next() >> r.below(64)).to_string(),
        _ => wrong_type(r),
    }
}

fn jbool(r: &mut Rng) -> String {
    if r.tame {
        return r.pick(&["true", "false"]).to_string();
    }
    match r.below(10) {
        0..=8 => r.pick(&["true", "false"]).to_string(),
        _ => wrong_type(r),
    }
}

/// Makes a JSON value.
type Gen<'a> = dyn FnMut(&mut Rng) -> String + 'a;

/// An object of the fields each there `pct` percent of the time (a field
/// may come twice: the last one wins, or serde refuses).
fn object(r: &mut Rng, pct: u64, fields: &mut [(&str, &mut Gen)]) -> String {
    let mut parts = Vec::new();
    for (name, value) in fields.iter_mut() {
        if r.pct(pct) {
            let v = value(r);
            parts.push(format!("{}:{v}", js(name)));
            if !r.tame && r.pct(2) {
                let v = value(r);
                parts.push(format!("{}:{v}", js(name)));
            }
        }
    }
    if !r.tame && r.pct(5) {
        parts.push(format!("{}:{}", js(&text(r)), jstr(r, &[])));
    }
    format!("{{{}}}", parts.join(","))
}

fn array(r: &mut Rng, max: u64, item: &mut Gen) -> String {
    if !r.tame && r.pct(5) {
        return wrong_type(r);
    }
    let n = r.below(max + 1);
    let items: Vec<String> = (0..n).map(|_| item(r)).collect();
    format!("[{}]", items.join(","))
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

fn cpu_request(r: &mut Rng) -> String {
    let vendors = strings(&[
        "intel",
        "amd",
        "AMD",
        "GenuineIntel",
        "AuthenticAMD",
        "HygonGenuine",
        "  Shanghai  ",
        "short",
        "thirteen char",
        "\u{1b}[31mxxxxxxxx",
    ]);
    let features = strings(&[
        "cx16",
        "xsave",
        "popcnt",
        "x2apic",
        "hypervisor",
        "bogus",
        "",
    ]);
    object(
        r,
        50,
        &mut [
            ("vendor", &mut |r: &mut Rng| jstr(r, &vendors)),
            ("family", &mut |r: &mut Rng| {
                jnum(r, &[0, 1, 5, 6, 14, 15, 16, 23, 25, 270, 271, 4294967295])
            }),
            ("model", &mut |r: &mut Rng| {
                jnum(r, &[0, 1, 15, 16, 44, 49, 255, 256, 4294967295])
            }),
            ("stepping", &mut |r: &mut Rng| jnum(r, &[0, 2, 15, 16])),
            ("hide", &mut |r: &mut Rng| {
                if r.pct(10) {
                    "null".into()
                } else {
                    array(r, 4, &mut |r| jstr(r, &features))
                }
            }),
        ],
    )
}

fn start_request(r: &mut Rng, w: &World) -> String {
    let names: Vec<String> = NAMES
        .iter()
        .chain(BAD_NAMES)
        .map(|s| s.to_string())
        .collect();
    let good: Vec<String> = strings(NAMES);
    let mib = 1u64 << 20;
    let memory = [
        0,
        1,
        2 * mib - 1,
        2 * mib,
        2 * mib + 1,
        16 * mib,
        32 * mib,
        1 << 40,
        1 << 62,
        u64::MAX - mib,
        u64::MAX - 1,
        u64::MAX,
    ];
    let disks: Vec<String> = w
        .disks
        .iter()
        .flat_map(|d| [d.clone(), format!("raw:{d}"), format!("qcow2:{d}")])
        .chain(strings(&["", "raw:", "qcow2:", "zip:/x"]))
        .collect();
    let instance_of: Vec<String> = strings(&["g", "h", "i", "x0", "1", "", "nosuch"]);
    object(
        r,
        30,
        &mut [
            ("name", &mut |r: &mut Rng| {
                if r.pct(85) {
                    jstr(r, &good)
                } else {
                    jstr(r, &names)
                }
            }),
            ("kernel", &mut |r: &mut Rng| {
                if r.tame && r.pct(70) {
                    js(&w.kernels[0])
                } else {
                    jstr(r, &w.kernels)
                }
            }),
            ("initrd", &mut |r: &mut Rng| jstr(r, &w.kernels)),
            ("cmdline", &mut |r: &mut Rng| {
                jstr(r, &strings(&["hostname=f poll_ms=200", "", "a\u{0}b"]))
            }),
            ("memory", &mut |r: &mut Rng| {
                if r.tame && r.pct(70) {
                    (r.pick(&[16u64, 32, 33]) << 20).to_string()
                } else {
                    jnum(r, &memory)
                }
            }),
            ("cpus", &mut |r: &mut Rng| {
                jnum(r, &[0, 1, 2, 254, 255, 4294967295, 4294967296])
            }),
            ("disks", &mut |r: &mut Rng| {
                if r.tame && r.pct(70) {
                    format!("[{}]", js(&w.disks[0]))
                } else {
                    array(r, 5, &mut |r| jstr(r, &disks))
                }
            }),
            ("cdrom", &mut |r: &mut Rng| jstr(r, &w.disks)),
            ("boot_device", &mut |r: &mut Rng| {
                jstr(r, &strings(&["disk", "cdrom", "net", "", "DISK"]))
            }),
            ("interfaces", &mut |r: &mut Rng| {
                jnum(r, &[0, 1, 2, 4, 5, 4294967295])
            }),
            ("local_interface", &mut |r: &mut Rng| jbool(r)),
            ("switches", &mut |r: &mut Rng| {
                array(r, 5, &mut |r| jstr(r, &strings(&["uplink", "nosuch", ""])))
            }),
            ("instance_of", &mut |r: &mut Rng| {
                if r.pct(10) {
                    "null".into()
                } else {
                    jstr(r, &instance_of)
                }
            }),
            ("cpu", &mut |r: &mut Rng| {
                if r.pct(10) {
                    wrong_type(r)
                } else {
                    cpu_request(r)
                }
            }),
        ],
    )
}

/// What a request's body is.
#[derive(Clone, Copy, PartialEq)]
enum Body {
    None,
    Start,
    Stop,
    Load,
    Reset,
    Log,
    Guestinfo,
}

fn body(r: &mut Rng, kind: Body, w: &World) -> String {
    match kind {
        Body::None => {
            if r.pct(80) {
                String::new()
            } else {
                body(r, Body::Start, w)
            }
        }
        Body::Start => start_request(r, w),
        Body::Stop => object(
            r,
            50,
            &mut [
                ("force", &mut |r: &mut Rng| jbool(r)),
                // A stop that waits is a long poll: rarely.
                ("wait", &mut |r: &mut Rng| {
                    if r.pct(5) {
                        jbool(r)
                    } else {
                        "false".into()
                    }
                }),
            ],
        ),
        Body::Load => object(r, 90, &mut [("path", &mut |r: &mut Rng| jstr(r, &w.confs))]),
        Body::Reset => object(
            r,
            90,
            &mut [("what", &mut |r: &mut Rng| {
                jstr(r, &strings(&["all", "vms", "switches", "ALL", ""]))
            })],
        ),
        Body::Log => object(
            r,
            90,
            &mut [("level", &mut |r: &mut Rng| {
                jstr(r, &strings(&["brief", "verbose", "debug"]))
            })],
        ),
        Body::Guestinfo => object(
            r,
            90,
            &mut [("value", &mut |r: &mut Rng| {
                if r.pct(5) {
                    js(&"v".repeat(65_000 + r.below(2_000) as usize))
                } else {
                    jstr(r, &strings(&["", "db", "a b", "x\ny"]))
                }
            })],
        ),
    }
}

/// Random edits of a body's bytes.
fn mutate(r: &mut Rng, b: &mut Vec<u8>) {
    const SOME: &[u8] = b"{}[]\":,\\0123456789-.e \x00\xff\xc3";
    for _ in 0..1 + r.below(4) {
        let at = if b.is_empty() {
            0
        } else {
            r.below(b.len() as u64 + 1) as usize
        };
        match r.below(6) {
            0 if at < b.len() => {
                b.remove(at);
            }
            1 => b.insert(at, *r.pick(SOME)),
            2 => b.insert(at, r.next() as u8),
            3 if at < b.len() => b[at] ^= 1 << r.below(8),
            4 => b.truncate(at),
            _ if !b.is_empty() => {
                let from = r.below(b.len() as u64) as usize;
                let n = r.below((b.len() - from) as u64 + 1) as usize;
                let chunk = b[from..from + n].to_vec();
                let at = at.min(b.len());
                b.splice(at..at, chunk);
            }
            _ => {}
        }
    }
}

/// A path segment: percent-encoded but for the few raw forms that test
/// the decoding itself.
fn segment(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(char::from(b));
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn id(r: &mut Rng) -> String {
    if r.tame {
        return r
            .pick(&["g", "g", "i", "h", "x0", "new0", "l1", "1", "3"])
            .to_string();
    }
    match r.below(20) {
        0..=11 => r.pick(NAMES).to_string(),
        12..=14 => segment(r.pick::<&str>(BAD_NAMES)),
        15 => r.next().to_string(),
        16 => segment(&text(r)),
        17 => r
            .pick(&["%FF", "%00", "%2e%2e", "g%2Fx", "%C3%A9", "%", "%zz"])
            .to_string(),
        18 => "a".repeat(70_000),
        _ => String::new(),
    }
}

fn key(r: &mut Rng) -> String {
    match r.below(10) {
        0..=5 => r
            .pick(&[
                "ip",
                "guestinfo.ip",
                "selftest",
                "role",
                "guestinfo.guestinfo.x",
                "guestinfo.",
                "a%20b",
                "%2F",
                "%00",
                "%FF",
                "k%0Av",
            ])
            .to_string(),
        6 => "k".repeat(1 + r.below(70_000) as usize),
        _ => segment(&text(r)),
    }
}

const ENDPOINTS: &[(&str, &str, Body)] = &[
    ("GET", "/v1/vms", Body::None),
    ("POST", "/v1/vms", Body::Start),
    ("GET", "/v1/vms/{id}", Body::None),
    ("POST", "/v1/vms/{id}/stop", Body::Stop),
    ("POST", "/v1/vms/{id}/pause", Body::None),
    ("POST", "/v1/vms/{id}/unpause", Body::None),
    ("GET", "/v1/vms/{id}/wait", Body::None),
    ("GET", "/v1/vms/{id}/guestinfo", Body::None),
    ("GET", "/v1/vms/{id}/guestinfo/{key}", Body::None),
    ("PUT", "/v1/vms/{id}/guestinfo/{key}", Body::Guestinfo),
    ("POST", "/v1/config/load", Body::Load),
    ("POST", "/v1/config/reload", Body::None),
    ("POST", "/v1/reset", Body::Reset),
    ("POST", "/v1/log", Body::Log),
    ("GET", "/openapi.json", Body::None),
];

/// Weights of the endpoints above: starts and the calls on running VMs
/// most, the whole-daemon ones (reset, reload) least.
const WEIGHTS: &[u64] = &[4, 30, 4, 10, 8, 8, 1, 4, 6, 6, 3, 1, 1, 2, 1];

struct Req {
    /// The endpoint it was made for (its method and path may differ).
    endpoint: &'static str,
    bytes: Vec<u8>,
    /// A long poll: no answer within the client's wait is fine.
    long_poll: bool,
}

fn request(r: &mut Rng, w: &World) -> Req {
    r.tame = r.pct(50);
    let total: u64 = WEIGHTS.iter().sum();
    let mut x = r.below(total);
    let mut which = 0;
    while x >= WEIGHTS[which] {
        x -= WEIGHTS[which];
        which += 1;
    }
    let (mut method, template, kind) = ENDPOINTS[which];
    if !r.tame && r.pct(5) {
        method = r.pick::<&str>(&[
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO",
        ]);
    }
    let mut path = template.replace("{id}", &id(r)).replace("{key}", &key(r));
    match if r.tame { 99 } else { r.below(40) } {
        0 => path.push('/'),
        1 => path.push_str("?x=1&y"),
        2 => path = format!("/{path}"),
        3 => path.push_str("/extra"),
        4 => {
            path = r
                .pick(&["/", "/v2/vms", "/v1", "*", "/v1/vms/g/guestinfo/a/b"])
                .to_string()
        }
        5 => path = format!("http://localhost{path}"),
        _ => {}
    }
    let mut b = if !r.tame && r.pct(2) {
        (0..r.below(300)).map(|_| r.next() as u8).collect()
    } else {
        body(r, kind, w).into_bytes()
    };
    if !r.tame && r.pct(20) {
        mutate(r, &mut b);
    }
    if !r.tame && r.pct(2) {
        // Nesting past serde_json's recursion limit.
        b = "[".repeat(100_000).into_bytes();
    }
    let long_poll =
        path.contains("/wait") || (kind == Body::Stop && b.windows(6).any(|w| w == b"\"wait\""));
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        b.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&b);
    Req {
        endpoint: template,
        bytes,
        long_poll,
    }
}

/// The answer's status; None with `timed_out` when none came within
/// `wait`, None without it when the connection closed without one.
fn exchange(sock: &Path, req: &[u8], wait: Duration) -> (Option<u16>, bool, String) {
    let mut s = UnixStream::connect(sock).expect("vmd's socket accepts");
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    // The daemon may answer (414, 400) before it has read everything.
    let _ = s.write_all(req);
    let mut got = Vec::new();
    let timed_out = match s.read_to_end(&mut got) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok());
    (status, timed_out && status.is_none(), text)
}

/// The VM processes (`vmm`) that are `vmd`'s children, but zombies.
fn vm_processes(vmd: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold anything, so split at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |h| h.1);
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if comm == "vmm" && ppid == Some(vmd) && state != Some("Z") {
            out.push(pid);
        }
    }
    out
}

fn cmdline(pid: u32) -> String {
    let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let c = String::from_utf8_lossy(&c).replace('\0', " ");
    c.chars().take(200).collect()
}

fn vm_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The end of a long log.
fn tail(log: &str) -> &str {
    let at = log.len().saturating_sub(20_000);
    let at = (at..log.len())
        .find(|&i| log.is_char_boundary(i))
        .unwrap_or(0);
    &log[at..]
}

fn shown(req: &[u8]) -> String {
    let s = String::from_utf8_lossy(req);
    let s: String = s.chars().take(600).collect();
    format!("{s:?}")
}

#[test]
fn generated_requests_get_answers_below_500_and_vmd_stays_up() {
    if !kvm_or_skip() {
        return;
    }
    let Some(ns) = Netns::new("apifuzz") else {
        return;
    };
    let requests: u64 = std::env::var("VMD_API_FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("VMD_API_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("api_fuzz: {requests} requests, VMD_API_FUZZ_SEED={seed}");

    let dir = fresh_dir();
    let tools = guest("tools");
    let conf = format!(
        "switch \"uplink\" {{\n\tinterface vmdfz0\n}}\n\
         grace 3\n\
         vm \"g\" {{\n\tdisable\n\tkernel \"{tools}\"\n\tcmdline \"hostname=g poll_ms=200\"\n\
         \tmemory 32M\n\tallow instance {{ boot, cdrom, cpus, disable, disk, instance, \
         interface, memory, owner }}\n}}\n\
         vm \"h\" {{\n\tdisable\n\tkernel \"/nonexistent/kernel\"\n\tmemory 16M\n\towner 47111\n}}\n\
         vm \"i\" {{\n\tdisable\n\tkernel \"{tools}\"\n\tmemory 16M\n\tallow instance memory\n}}\n"
    );
    std::fs::write(dir.join("vm.conf"), &conf).unwrap();
    let other = dir.join("other.conf");
    std::fs::write(
        &other,
        format!(
            "vm \"l0\" {{\n\tdisable\n\tkernel \"{tools}\"\n\tmemory 16M\n}}\n\
             vm \"l1\" {{\n\tkernel \"{tools}\"\n\tcmdline \"hostname=l1 poll_ms=200\"\n\tmemory 16M\n}}\n"
        ),
    )
    .unwrap();
    let bad = dir.join("bad.conf");
    std::fs::write(
        &bad,
        "vm \"\u{1b}[31m\" {\n\tmemroy 1G\n}\ninclude \"/dev/zero\"\n",
    )
    .unwrap();
    for (name, len) in [("a.img", 1u64 << 20), ("b.img", 512), ("empty.img", 0)] {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        f.set_len(len).unwrap();
    }
    std::fs::create_dir(dir.join("adir")).unwrap();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a path we own, NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let p = |n: &str| dir.join(n).display().to_string();
    let odd = [
        p("fifo"),
        p("adir"),
        p("empty.img"),
        "/dev/zero".into(),
        "/nonexistent/x".into(),
        "relative/path".into(),
        String::new(),
        "/etc/shadow".into(),
    ];
    let w = World {
        kernels: [tools.clone(), tools.clone(), tools.clone(), p("b.img")]
            .into_iter()
            .chain(odd.iter().cloned())
            .collect(),
        disks: [p("a.img"), p("b.img")]
            .into_iter()
            .chain(odd.iter().cloned())
            .collect(),
        confs: [
            p("vm.conf"),
            other.display().to_string(),
            bad.display().to_string(),
        ]
        .into_iter()
        .chain(odd.iter().cloned())
        .collect(),
    };

    let d = TestDaemon::start_in_netns(dir, &ns);
    let pid = d.pid();
    let rss_start = vm_rss_kb(pid);
    let mut r = Rng {
        state: seed,
        tame: false,
    };
    let mut codes = std::collections::BTreeMap::<u16, u64>::new();
    let mut vm_process_failures = std::collections::BTreeMap::<String, (u64, String)>::new();
    let mut by_endpoint = std::collections::BTreeMap::<(&str, u16), u64>::new();
    let (mut long_polls, mut max_vms) = (0u64, 0usize);
    let mut suspects: Vec<u32> = Vec::new();
    let mut reported = std::collections::HashSet::new();
    let started = Instant::now();
    // Failures, by what went wrong (digits left out, so that one bug is
    // one entry): how many, and the first request that showed it. The
    // run goes on past them (a long run shows every kind), and fails at
    // the end; a dead daemon ends it at once.
    let mut failures = std::collections::BTreeMap::<String, (u64, u64, String)>::new();
    let mut fail = |n: u64, req: &[u8], what: String| {
        let kind: String = what
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        let e = failures.entry(kind).or_insert((0, n, shown(req)));
        e.0 += 1;
        if e.0 == 1 {
            eprintln!(
                "api_fuzz: request {n} (seed {seed}): {what}\n  request: {}",
                e.2
            );
        }
    };
    for n in 0..requests {
        let req = request(&mut r, &w);
        let wait = if req.long_poll {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(60)
        };
        let (status, timed_out, answer) = exchange(&d.sock, &req.bytes, wait);
        *by_endpoint
            .entry((req.endpoint, status.unwrap_or(0)))
            .or_default() += 1;
        match status {
            // The API's word for "the VM process failed" (a kernel it
            // cannot load, a device it cannot set up): the daemon did
            // its part. Shown at the end, each reason once.
            Some(502) => {
                *codes.entry(502).or_default() += 1;
                let why = answer.rsplit_once("\r\n\r\n").map_or("", |a| a.1);
                // Reasons without the VM's name and numbers.
                let why: String = why
                    .split_once(": ")
                    .map_or(why, |w| w.1)
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect();
                vm_process_failures
                    .entry(why)
                    .or_insert((0, shown(&req.bytes)))
                    .0 += 1;
            }
            Some(code) if code >= 500 => {
                let body = answer.rsplit_once("\r\n\r\n").map_or("", |a| a.1);
                fail(n, &req.bytes, format!("answered {code}: {body}"))
            }
            Some(code) => *codes.entry(code).or_default() += 1,
            None if timed_out && req.long_poll => long_polls += 1,
            None if timed_out => fail(n, &req.bytes, "no answer within 60 s".into()),
            None => fail(
                n,
                &req.bytes,
                format!("no answer (connection closed): {answer:?}"),
            ),
        }
        if n % 100 == 99 || n + 1 == requests {
            assert!(
                alive(pid),
                "vmd died after request {n} (seed {seed}):\n{}",
                tail(&d.log())
            );
            // The VMs it knows (their pids recorded, to be killed at the end).
            let vms = d.status();
            max_vms = max_vms.max(vms.len());
            // A VM process vmd no longer lists, at two checks in a row (one
            // may be on its way out), is one nobody can stop through it.
            let listed: Vec<u32> = vms.iter().filter_map(|v| v.pid).collect();
            let unlisted: Vec<u32> = vm_processes(pid)
                .into_iter()
                .filter(|p| !listed.contains(p))
                .collect();
            for p in unlisted.iter().filter(|p| suspects.contains(p)) {
                if reported.insert(*p) {
                    let what = format!(
                        "VM process {p} ({}) runs, but vmd does not list it",
                        cmdline(*p)
                    );
                    fail(n, b"(the requests before this one)", what);
                }
            }
            suspects = unlisted;
        }
        if n % 10_000 == 9_999 {
            eprintln!(
                "api_fuzz: {} requests in {:.0?}, vmd RSS {} kB, {codes:?}",
                n + 1,
                started.elapsed(),
                vm_rss_kb(pid)
            );
        }
    }
    let vms = d.status();
    // VM processes vmd lost track of outlive it: end them here (the
    // harness ends those it knows of).
    for p in vm_processes(pid) {
        if !vms.iter().any(|v| v.pid == Some(p)) {
            send_signal(p, libc::SIGKILL);
        }
    }
    eprintln!(
        "api_fuzz: {requests} requests in {:.1?} (seed {seed}): answers {codes:?}, \
         {long_polls} long polls left waiting; at most {max_vms} VMs, {} at the end; \
         vmd RSS {rss_start} kB at start, {} kB at the end",
        started.elapsed(),
        vms.len(),
        vm_rss_kb(pid)
    );
    for ((endpoint, code), n) in &by_endpoint {
        eprintln!("api_fuzz: {endpoint} {code}: {n}");
    }
    for (why, (n, first)) in &vm_process_failures {
        eprintln!("api_fuzz: 502 x{n}: {why}\n  first: {first}");
    }
    for (kind, (count, first, req)) in &failures {
        eprintln!("api_fuzz: FAILED x{count}, first request {first}: {kind}\n  {req}");
    }
    assert!(
        failures.is_empty(),
        "{} kinds of failure (above; seed {seed}); vmd, last lines:\n{}",
        failures.len(),
        tail(&d.log())
    );
    // The names come from a small set: a daemon that kept every failed
    // start or instance would list more.
    assert!(vms.len() <= NAMES.len() + 3, "{vms:#?}");
}
