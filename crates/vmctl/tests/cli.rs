//! The vmctl binary against a tiny HTTP server on a temporary Unix socket:
//! a real process talking to a real socket, the server answering canned
//! JSON and recording what it was asked.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Req {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

struct Reply {
    status: u16,
    body: Value,
    chunked: bool,
}

fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        body,
        chunked: false,
    }
}

fn not_found(what: &str) -> Reply {
    Reply {
        status: 404,
        body: json!({ "error": format!("no such vm: {what}") }),
        chunked: false,
    }
}

struct Server {
    dir: PathBuf,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmctl-it-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Server {
    fn start(tag: &str, route: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Server {
        let dir = tempdir(tag);
        let socket = dir.join("vmd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut r = BufReader::new(&conn);
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap().to_string();
                let path = parts.next().unwrap().to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (n, v) = h.split_once(':').unwrap();
                    headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
                let len = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let req = Req {
                    method,
                    path,
                    headers,
                    body: String::from_utf8(body).unwrap(),
                };
                let reply = route(&req);
                log.lock().unwrap().push(req);
                let body = serde_json::to_string(&reply.body).unwrap();
                let mut w = &conn;
                let mut out = format!(
                    "HTTP/1.1 {} X\r\ncontent-type: application/json\r\n",
                    reply.status
                );
                if reply.chunked {
                    // Two chunks, as hyper may send.
                    let (a, b) = body.split_at(body.len() / 2);
                    out.push_str("transfer-encoding: chunked\r\n\r\n");
                    for c in [a, b] {
                        out.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
                    }
                    out.push_str("0\r\n\r\n");
                } else {
                    out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
                }
                let _ = w.write_all(out.as_bytes());
            }
        });
        Server { dir, socket, seen }
    }

    fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }

    fn vmctl(&self, args: &[&str]) -> Output {
        vmctl_at(&self.socket, args)
    }
}

fn vmctl_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmctl"));
    c.env_remove("VMD_SOCKET");
    c
}

fn vmctl_at(socket: &Path, args: &[&str]) -> Output {
    vmctl_cmd()
        .arg("-s")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn vms() -> Value {
    json!([
        {
            "id": 2, "name": "db", "pid": null, "vcpus": 1, "maxmem": 536870912u64,
            "curmem": 0, "tty": null, "owner": "root", "state": "stopped",
            "hostname": null, "ip": null, "tools": false, "last_exit": "halted by guest tools",
            "disks": [], "cdrom": null, "interfaces": [], "os": null, "uptime_secs": null,
            "nics": []
        },
        {
            "id": 1, "name": "web1", "pid": 4242, "vcpus": 2, "maxmem": 1073741824u64,
            "curmem": 27787264u64, "tty": "/dev/pts/3", "owner": "root", "state": "running",
            "hostname": "web1.example.org", "ip": "100.64.1.3", "tools": true, "last_exit": null,
            "disks": [{"path": "/var/vm/web1.qcow2", "format": "qcow2"}], "cdrom": null,
            "interfaces": [], "os": "Debian GNU/Linux 12 (bookworm)", "uptime_secs": 93784,
            "nics": [{"mac": "fe:e1:ba:00:00:01", "addresses": ["100.64.1.3/31"]}]
        }
    ])
}

fn routes(req: &Req) -> Reply {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/vms") => ok(vms()),
        ("GET", "/v1/vms/web1") | ("GET", "/v1/vms/1") => ok(vms()[1].clone()),
        ("POST", "/v1/vms/web1/stop") | ("POST", "/v1/vms/1/stop") => {
            let mut vm = vms()[1].clone();
            let wait = req.json()["wait"] == true;
            vm["state"] = json!(if wait { "stopped" } else { "stopping" });
            Reply {
                status: 200,
                body: vm,
                chunked: true,
            }
        }
        ("GET", "/v1/vms/1/wait") => {
            let mut vm = vms()[1].clone();
            vm["state"] = json!("stopped");
            ok(vm)
        }
        ("GET", p) if p.starts_with("/v1/vms/") => not_found(&p["/v1/vms/".len()..]),
        ("POST", "/v1/vms") => {
            let mut vm = vms()[1].clone();
            vm["id"] = json!(7);
            vm["name"] = req.json()["name"].clone();
            vm["tty"] = json!("/dev/pts/9");
            ok(vm)
        }
        ("POST", "/v1/config/load") => ok(json!({
            "errors": ["/etc/bad.conf:3: syntax error", "/etc/bad.conf:9: unknown switch \"x\""],
            "vms": []
        })),
        ("POST", "/v1/config/reload") => ok(json!({ "errors": [], "vms": ["web1", "db"] })),
        ("POST", "/v1/reset") | ("POST", "/v1/log") => ok(json!({ "message": "done" })),
        _ => Reply {
            status: 400,
            body: json!({ "error": format!("unexpected {} {}", req.method, req.path) }),
            chunked: false,
        },
    }
}

const TABLE: &str =
    "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE   NAME HOSTNAME         IP
    1  4242     2    1.0G   26.5M   pts/3         root  running   web1 web1.example.org 100.64.1.3
    2     -     1    512M       -       -         root  stopped   db   -                -
";

#[test]
fn status_table() {
    let s = Server::start("status", routes);
    let out = s.vmctl(&["status"]);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(text(&out.stdout), TABLE);
    assert!(out.status.success());
    let reqs = s.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("GET", "/v1/vms")
    );
    let h = |n: &str| {
        reqs[0]
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h("host").as_deref(), Some("localhost"));
    assert_eq!(h("connection").as_deref(), Some("close"));

    // Abbreviated, an alias, -r, and one VM by name.
    let out = s.vmctl(&["stat", "-r"]);
    assert!(out.status.success());
    let lines: Vec<String> = TABLE.lines().map(str::to_string).collect();
    assert_eq!(text(&out.stdout), format!("{}\n{}\n", lines[0], lines[1]));
    // One VM by name also lists its disks and what its tools report.
    let out = s.vmctl(&["show", "web1"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}\n{}\ndisk0 qcow2 /var/vm/web1.qcow2\nos Debian GNU/Linux 12 (bookworm)\n\
             uptime 1 day, 02:03:04\nnic0 fe:e1:ba:00:00:01 100.64.1.3/31\n",
            lines[0], lines[1]
        )
    );
}

#[test]
fn status_json() {
    let s = Server::start("json", routes);
    let out = s.vmctl(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, vms(), "the daemon's objects, unchanged");
    for vm in v.as_array().unwrap() {
        for k in [
            "id", "pid", "vcpus", "maxmem", "curmem", "tty", "owner", "state", "name", "hostname",
            "ip",
        ] {
            assert!(vm.get(k).is_some(), "{k} missing");
        }
    }
    // One VM is still an array; -r filters.
    let out = s.vmctl(&["--json", "status", "web1"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!([vms()[1]]));
    let out = s.vmctl(&["status", "-r", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!([vms()[1]]));
}

#[test]
fn stop_wait() {
    let s = Server::start("stop", routes);
    let out = s.vmctl(&["stop", "-w", "web1"]);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(text(&out.stdout), "");
    assert!(out.status.success());
    let reqs = s.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/vms/web1/stop");
    assert_eq!(reqs[0].json(), json!({ "force": false, "wait": true }));

    // Abbreviated, forced, and the (chunked) answer as JSON.
    let out = s.vmctl(&["sto", "-f", "--json", "web1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "stopping");
    assert_eq!(
        s.requests()[1].json(),
        json!({ "force": true, "wait": false })
    );
}

#[test]
fn stop_all_waits_for_each_running_vm() {
    let s = Server::start("stopall", routes);
    let out = s.vmctl(&["stop", "-aw"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Vec<(String, String)> = s
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    let want = [
        ("GET", "/v1/vms"),
        ("POST", "/v1/vms/1/stop"),
        ("GET", "/v1/vms/1/wait"),
    ];
    assert_eq!(got, want.map(|(m, p)| (m.to_string(), p.to_string())));
}

#[test]
fn errors_from_vmd() {
    let s = Server::start("404", routes);
    let out = s.vmctl(&["status", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "vmctl: no such vm: nosuch\n");
    assert_eq!(text(&out.stdout), "");
    let out = s.vmctl(&["pause", "web1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vmctl: unexpected POST /v1/vms/web1/pause\n"
    );
}

#[test]
fn cannot_connect() {
    let dir = tempdir("noconn");
    let sock = dir.join("none.sock");
    let want = format!(
        "vmctl: cannot connect to {}: No such file or directory (is vmd running?)\n",
        sock.display()
    );
    let out = vmctl_at(&sock, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), want);
    // VMD_SOCKET names the socket too.
    let out = vmctl_cmd()
        .env("VMD_SOCKET", &sock)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["st"][..],
        &["stop"],
        &["stop", "-a", "web1"],
        &["bogus"],
        &["log"],
        &[],
    ] {
        let out = vmctl_cmd().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "vmctl {args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = vmctl_cmd().arg("st").output().unwrap();
    assert!(text(&out.stderr)
        .starts_with("vmctl: ambiguous command: st (could be start, stop, status)\n"));
    let out = vmctl_cmd().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("console"));
    let out = vmctl_cmd().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("vmctl"));
}

#[test]
fn start_sends_absolute_paths() {
    let s = Server::start("start", routes);
    // The same start, under a given command word.
    let start_as = |word: &str| {
        vmctl_cmd()
            .current_dir(&s.dir)
            .arg("-s")
            .arg(&s.socket)
            .args([
                word,
                "-m",
                "1G",
                "-d",
                "a.img",
                "-d",
                "raw:/x/b.img",
                "-b",
                "bzImage",
            ])
            .args([
                "--cpus",
                "2",
                "--cmdline",
                "console=ttyS0",
                "-L",
                "-i",
                "1",
                "-n",
                "uplink",
                "-n",
                "lab",
                "new1",
            ])
            .output()
            .unwrap()
    };
    let out = start_as("sta");
    // "sta" is ambiguous (start, status): nothing was sent.
    assert_eq!(out.status.code(), Some(2));
    assert!(s.requests().is_empty());
    let out = start_as("star");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "vmctl: started vm 7 successfully, tty /dev/pts/9\n"
    );
    let r = &s.requests()[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/vms"));
    let d = s.dir.display();
    assert_eq!(
        r.json(),
        json!({
            "name": "new1", "kernel": format!("{d}/bzImage"), "initrd": null,
            "cmdline": "console=ttyS0", "memory": 1073741824u64, "cpus": 2,
            "disks": [format!("{d}/a.img"), "raw:/x/b.img"], "cdrom": null,
            "boot_device": null, "interfaces": 1, "local_interface": true,
            "switches": ["uplink", "lab"], "instance_of": null
        })
    );
}

#[test]
fn start_sends_the_cpu_model() {
    let s = Server::start("cpu", routes);
    let out = s.vmctl(&[
        "start",
        "-b",
        "/k",
        "--cpu-vendor",
        "intel",
        "--cpu-family",
        "6",
        "--cpu-model",
        "0x2c",
        "--cpu-hide",
        "cx16,xsave,cx16",
        "w",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = &s.requests()[0];
    assert_eq!(
        r.json()["cpu"],
        json!({
            "vendor": "intel", "family": 6, "model": 44, "stepping": null,
            "hide": ["cx16", "xsave"]
        })
    );
    // `--cpu-hide ""` hides nothing (where the configuration hides some).
    let out = s.vmctl(&["start", "--cpu-stepping", "3", "--cpu-hide", "", "web1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        s.requests()[1].json()["cpu"],
        json!({ "vendor": null, "family": null, "model": null, "stepping": 3, "hide": [] })
    );
    // Without the flags, no `cpu` at all: the configured or host's CPU.
    let out = s.vmctl(&["start", "web1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.requests()[2].json().get("cpu").is_none());
}

#[test]
fn bad_cpu_flags_are_usage_errors() {
    for (flag, value, why) in [
        (
            "--cpu-vendor",
            "via",
            "must be intel, amd or 12 printable ASCII characters",
        ),
        ("--cpu-family", "0", "must be 1 to 270"),
        ("--cpu-family", "0x10f", "must be 1 to 270"),
        ("--cpu-model", "256", "must be 0 to 255"),
        ("--cpu-stepping", "16", "must be 0 to 15"),
        (
            "--cpu-hide",
            "cx16,warp",
            "unknown CPU feature \"warp\"; known: sse3 ",
        ),
    ] {
        let out = vmctl_cmd()
            .args([
                "-s",
                "/nonexistent/sock",
                "start",
                "-b",
                "/k",
                flag,
                value,
                "w",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag} <")) && err.contains(why),
            "{flag} {value}: {err}"
        );
    }
}

#[test]
fn load_reports_errors() {
    let s = Server::start("load", routes);
    let out = vmctl_cmd()
        .current_dir(&s.dir)
        .arg("-s")
        .arg(&s.socket)
        .args(["load", "bad.conf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "/etc/bad.conf:3: syntax error\n/etc/bad.conf:9: unknown switch \"x\"\n"
    );
    assert_eq!(
        s.requests()[0].json(),
        json!({ "path": format!("{}/bad.conf", s.dir.display()) })
    );
    let out = s.vmctl(&["reload"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "");
    let out = s.vmctl(&["reset", "vms"]);
    assert!(out.status.success());
    assert_eq!(s.requests()[2].json(), json!({ "what": "vms" }));
    let out = s.vmctl(&["log", "verbose"]);
    assert!(out.status.success());
    assert_eq!(s.requests()[3].json(), json!({ "level": "verbose" }));
}

#[test]
fn create_image() {
    let dir = tempdir("create");
    let img = dir.join("disk.img");
    let run = |args: &[&str]| vmctl_cmd().current_dir(&dir).args(args).output().unwrap();
    let out = run(&["create", "-s", "64M", "disk.img"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "vmctl: raw imagefile created\n");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
    let out = run(&["create", "-s", "1G", "disk.img"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "vmctl: disk.img: File exists\n");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
    let out = run(&["create", "-s", "1G", "x.qcow2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "vmctl: qcow2 imagefile created\n");
    let out = run(&["create", "other.img"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("could not create other.img: missing size argument"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.join("other.img").exists());
    // More of `create`, against qemu-img, is in tests/create.rs.
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pty pair: the master (the "VM" end) and the slave's path.
fn openpty() -> (std::fs::File, String) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc pty calls; the fd is owned by the File.
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
        (std::fs::File::from_raw_fd(fd), path)
    }
}

/// Reads from `r` on a thread; collected bytes come through the channel.
fn pump(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

fn collect_until(rx: &mpsc::Receiver<Vec<u8>>, acc: &mut Vec<u8>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(acc).contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(b) => acc.extend(b),
            Err(_) => panic!("waited for {want:?}, got {:?}", text(acc)),
        }
    }
}

#[test]
fn console_relays_and_escapes() {
    let (master, slave) = openpty();
    let tty = slave.clone();
    let s = Server::start("console", move |req| match req.path.as_str() {
        "/v1/vms/web1" => {
            let mut vm = vms()[1].clone();
            vm["tty"] = json!(tty);
            ok(vm)
        }
        _ => not_found("x"),
    });
    let mut child = vmctl_cmd()
        .arg("-s")
        .arg(&s.socket)
        .args(["co", "web1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out_rx = pump(child.stdout.take().unwrap());
    let mut out = Vec::new();
    collect_until(
        &out_rx,
        &mut out,
        &format!("Connected to {slave} (speed 115200)\n"),
    );

    // The VM speaks; we see it.
    let mut m = &master;
    m.write_all(b"login: ").unwrap();
    collect_until(&out_rx, &mut out, "login: ");

    // We type: `~.` mid-line and `~~` go through (as `~.` and `~`), then
    // `~.` at the start of a line disconnects and nothing after it is sent.
    let master_rx = pump(master.try_clone().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo a~.b\n~~x\n").unwrap();
    let mut got = Vec::new();
    collect_until(&master_rx, &mut got, "~x\n");
    assert_eq!(text(&got), "echo a~.b\n~x\n");
    stdin.write_all(b"~.after\n").unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "vmctl console did not exit on ~."
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    collect_until(&out_rx, &mut out, "[EOT]\n");
    assert_eq!(
        text(&out),
        format!("Connected to {slave} (speed 115200)\nlogin: \n[EOT]\n")
    );
    while let Ok(b) = master_rx.recv_timeout(Duration::from_millis(200)) {
        got.extend(b);
    }
    assert_eq!(text(&got), "echo a~.b\n~x\n", "sent past the escape");
}

#[test]
fn console_ends_when_the_vm_goes_away() {
    let (master, slave) = openpty();
    let tty = slave.clone();
    let s = Server::start("console-hup", move |_| {
        let mut vm = vms()[1].clone();
        vm["tty"] = json!(tty);
        ok(vm)
    });
    let mut child = vmctl_cmd()
        .arg("-s")
        .arg(&s.socket)
        .args(["console", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out_rx = pump(child.stdout.take().unwrap());
    let mut out = Vec::new();
    collect_until(&out_rx, &mut out, "(speed 115200)\n");
    (&master).write_all(b"System halted.\r\n").unwrap();
    collect_until(&out_rx, &mut out, "halted");
    drop(master);
    collect_until(&out_rx, &mut out, "[EOT]\n");
    assert!(child.wait().unwrap().success());
    assert!(
        text(&out).ends_with("System halted.\r\n\n[EOT]\n"),
        "{:?}",
        text(&out)
    );
}

/// `vmctl guestinfo`'s three forms against a server that answers as vmd
/// does (GET listing, GET one, PUT one; JSON errors).
#[test]
fn guestinfo_list_get_set() {
    let s = Server::start("guestinfo", |req| {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/v1/vms/web1/guestinfo") => ok(json!({
                "ip": "10.0.0.5",
                "motd": "hi\nip = 6.6.6.6",
                "empty": ""
            })),
            ("GET", "/v1/vms/web1/guestinfo/motd") => ok(json!({ "value": "hi\nip = 6.6.6.6" })),
            ("PUT", "/v1/vms/web1/guestinfo/role") => ok(req.json()),
            ("GET", "/v1/vms/web1/guestinfo/nosuch") => Reply {
                status: 404,
                body: json!({ "error": "vm web1: guestinfo.nosuch is not set" }),
                chunked: false,
            },
            _ => Reply {
                status: 400,
                body: json!({ "error": format!("unexpected {} {}", req.method, req.path) }),
                chunked: false,
            },
        }
    });

    // All of them, in key order; what could forge a line is escaped.
    let out = s.vmctl(&["guestinfo", "web1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "empty = \nip = 10.0.0.5\nmotd = hi\\nip = 6.6.6.6\n"
    );
    // --json: the daemon's object, exact.
    let out = s.vmctl(&["--json", "guestinfo", "web1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["motd"], "hi\nip = 6.6.6.6");
    assert_eq!(v.as_object().unwrap().len(), 3);

    // One value, exactly as set, under the shortest prefix.
    let out = s.vmctl(&["g", "web1", "motd"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\nip = 6.6.6.6\n");

    // Set: a PUT of {"value": ...}, nothing printed.
    let out = s.vmctl(&["guestinfo", "web1", "role", "db"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "");
    let put = s.requests().pop().unwrap();
    assert_eq!(put.method, "PUT");
    assert_eq!(put.json(), json!({ "value": "db" }));
    // An empty value is a value (it clears the variable).
    let out = s.vmctl(&["guestinfo", "--json", "web1", "role", ""]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({ "value": "" }));

    // vmd's errors, as it says them.
    let out = s.vmctl(&["guestinfo", "web1", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vmctl: vm web1: guestinfo.nosuch is not set\n"
    );
    assert_eq!(text(&out.stdout), "");
    // Bad keys are refused before anything is sent, in vmd's words (a key
    // too long for a URL would get only the HTTP server's bare 414).
    let before = s.requests().len();
    let out = s.vmctl(&["guestinfo", "web1", "a/b", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vmctl: guestinfo key may not contain '/'\n"
    );
    let long = "k".repeat(65517);
    let out = s.vmctl(&["guestinfo", "web1", &long]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "vmctl: guestinfo key is too long: 65517 bytes, at most 65516\n"
    );
    assert_eq!(s.requests().len(), before);
    // Usage errors never reach the daemon either.
    for args in [&["guestinfo"][..], &["guestinfo", "web1", "k", "v", "more"]] {
        let out = s.vmctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert_eq!(s.requests().len(), before);
}
