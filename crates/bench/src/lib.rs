//! Shared pieces of the benchmarks: a private vmd to drive (bench-daemon,
//! bench-load), a GET on its socket, the RSS of a process, medians and
//! percentiles, and the `pio:` line of the test guests.

pub mod rawloop;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A directory for a benchmark's vmd (socket, state, log), named after
/// `name` and this process: on tmpfs where `/dev/shm` is one, as vmd's
/// own `/run` is on a host (Debian mounts /run as tmpfs), else in the
/// temp directory. It matters here: the root file system is ext4 without
/// a journal, where making a file after many were deleted scans for
/// inodes deleted recently (`recently_deleted`), and vmd makes three
/// (two records and a socket) per VM start: in P4 that cost more CPU
/// than any step of the VM process's confinement.
pub fn run_dir(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if is_tmpfs(shm) {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("{name}-{}", std::process::id()))
}

fn is_tmpfs(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct from a NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
    }
}

/// A vmd of the benchmark's own: config, socket and log in a directory the
/// benchmark made, `-d` in the foreground. Dropping it stops its VMs
/// (`vmctl reset vms`), then vmd (SIGTERM), and kills whatever is left.
pub struct Vmd {
    child: Child,
    pub sock: PathBuf,
    /// The directory with vmd, vmctl and vmm.
    pub bin: PathBuf,
    /// VM processes seen in [`Vmd::status`], to be sure none outlives the
    /// benchmark.
    seen: Mutex<BTreeSet<u32>>,
    stopped: bool,
}

impl Vmd {
    /// Writes `conf` to `DIR/vm.conf`, starts `BIN/vmd -d -f DIR/vm.conf -s
    /// DIR/vmd.sock` (its log in `DIR/vmd.log`) and waits until it answers.
    /// `BENCH_VMD_ARGS` adds arguments (`--vm-uid-base 0`: the cost of
    /// confinement, measured against VM processes left unconfined).
    pub fn start(bin: &Path, dir: &Path, conf: &str) -> Result<Vmd, String> {
        let cfg = dir.join("vm.conf");
        std::fs::write(&cfg, conf).map_err(|e| format!("{}: {e}", cfg.display()))?;
        let sock = dir.join("vmd.sock");
        let _ = std::fs::remove_file(&sock);
        let log =
            std::fs::File::create(dir.join("vmd.log")).map_err(|e| format!("vmd.log: {e}"))?;
        let mut cmd = Command::new(bin.join("vmd"));
        // A benchmark that gives up exits without dropping its Vmd: its
        // vmd then gets SIGTERM (and stops its VMs) rather than running on
        // and taking CPU from every benchmark after it.
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .args(["-d", "-f"])
            .arg(&cfg)
            .arg("-s")
            .arg(&sock)
            .args(
                std::env::var("BENCH_VMD_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stderr(log)
            .spawn()
            .map_err(|e| format!("vmd: {e}"))?;
        let mut v = Vmd {
            child,
            sock,
            bin: bin.to_owned(),
            seen: Mutex::new(BTreeSet::new()),
            stopped: false,
        };
        let t = Instant::now();
        while !v.ctl(&["status"]).status.success() {
            if let Ok(Some(st)) = v.child.try_wait() {
                v.stopped = true;
                return Err(format!(
                    "vmd exited ({st}); see {}",
                    dir.join("vmd.log").display()
                ));
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err("vmd did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(v)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `vmctl -s SOCK ARGS...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("vmctl"))
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap_or_else(|e| Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("vmctl: {e}").into_bytes(),
            })
    }

    /// `GET /v1/vms` straight on the socket (a poll loop running a vmctl
    /// process each time would take CPU from the guests); empty when vmd
    /// does not answer.
    pub fn status(&self) -> Vec<serde_json::Value> {
        let vms: Vec<serde_json::Value> = http_get(&self.sock, "/v1/vms", None)
            .ok()
            .filter(|(code, _)| *code == 200)
            .and_then(|(_, body)| serde_json::from_slice(&body).ok())
            .unwrap_or_default();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.extend(
            vms.iter()
                .filter_map(|v| v["pid"].as_u64())
                .map(|p| p as u32),
        );
        vms
    }

    /// Stops every VM at once (`vmctl reset vms`) and then vmd (SIGTERM,
    /// SIGKILL after 60 s), and kills any VM process it saw that is still
    /// there. Err says what had to be killed. Once only; Drop calls it too.
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let _ = self.status();
        let _ = self.ctl(&["reset", "vms"]);
        let mut trouble = Vec::new();
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if t.elapsed() > Duration::from_secs(60) => {
                    trouble.push(format!(
                        "vmd {} ignored SIGTERM for 60 s, killed",
                        self.child.id()
                    ));
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        for pid in seen {
            if is_vmm(pid) {
                // SAFETY: kill(2); the pid is a vmm process (checked just now).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                trouble.push(format!("VM process {pid} outlived vmd, killed"));
            }
        }
        if trouble.is_empty() {
            Ok(())
        } else {
            Err(trouble.join("; "))
        }
    }
}

impl Drop for Vmd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench: {e}");
        }
    }
}

/// Whether `pid` is alive and runs a program named `vmm`.
fn is_vmm(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().starts_with("vmm"))
        })
        .unwrap_or(false)
}

/// One `GET` on vmd's socket, as vmctl sends it (HTTP/1.1, one request per
/// connection, `Connection: close`): the status code and the body
/// (Content-Length, chunked, or up to the end of the stream). `timeout`
/// bounds each read and write.
pub fn http_get(
    sock: &Path,
    path: &str,
    timeout: Option<Duration>,
) -> Result<(u16, Vec<u8>), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    s.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {timeout:?} ({} bytes read)", resp.len())
        }
        _ => format!("read: {e}"),
    })?;
    parse_response(&resp)
}

/// Status code and body of one whole HTTP/1.x response.
pub fn parse_response(resp: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete header in {} bytes", resp.len()))?;
    let head = String::from_utf8_lossy(&resp[..end]);
    let rest = &resp[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut len) = (false, None);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse::<usize>().ok();
        }
    }
    if chunked {
        return dechunk(rest).map(|b| (code, b));
    }
    match len {
        Some(n) if rest.len() < n => Err(format!("body cut off: {} of {n} bytes", rest.len())),
        Some(n) => Ok((code, rest[..n].to_vec())),
        None => Ok((code, rest.to_vec())),
    }
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk framing")?;
        let size = String::from_utf8_lossy(&b[..eol]);
        let size = size.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        b = &b[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        if b.len() < n + 2 || &b[n..n + 2] != b"\r\n" {
            return Err("chunk cut off".into());
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

/// A process's resident set (`VmRSS` of /proc/PID/status), KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// CPU time a process has used (user + system, /proc/PID/stat), seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): state is field 3,
    // utime and stime are 14 and 15.
    let mut f = s.get(s.rfind(')')? + 2..)?.split_whitespace().skip(11);
    let (u, k): (u64, u64) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((u + k) as f64 / hz)
}

/// The `p`-th percentile (0-100, nearest rank) of a sorted, non-empty
/// sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Parses `pio: count=N cycles=C` from a guest's console output.
pub fn parse_pio(out: &str) -> Option<(u64, u64)> {
    let line = out.lines().find(|l| l.starts_with("pio: count="))?;
    let mut count = None;
    let mut cycles = None;
    for w in line.split_whitespace() {
        if let Some(v) = w.strip_prefix("count=") {
            count = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("cycles=") {
            cycles = v.parse().ok();
        }
    }
    Some((count?, cycles?))
}

/// Median of a non-empty sample.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pio_line() {
        let out = "testguest pio: boot\npio: count=1000 cycles=52000000\n";
        assert_eq!(parse_pio(out), Some((1000, 52_000_000)));
        assert_eq!(parse_pio("nothing"), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn own_cpu() {
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(50) {}
        assert!(cpu_secs(std::process::id()).is_some_and(|s| s > 0.0));
    }

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]";
        assert_eq!(parse_response(r), Ok((200, b"[]".to_vec())));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[1\r\n1;x=y\r\n]\r\n0\r\n\r\n";
        assert_eq!(parse_response(r), Ok((200, b"[1]".to_vec())));
        let r = b"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy";
        assert_eq!(parse_response(r), Ok((503, b"busy".to_vec())));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n[]").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[1\r\n";
        assert!(parse_response(r).is_err());
    }
}
