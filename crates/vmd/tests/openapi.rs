//! The API does what its OpenAPI document says (issue 12, item 8).
//!
//! Schemathesis (from PyPI), driven by the `/openapi.json` a private vmd
//! serves, with all its checks: every status an answer has is documented
//! for its operation, every body fits its schema and is JSON, a request
//! the schema allows is not refused as malformed (a 400) and one it
//! forbids is not accepted, no answer is a 5xx, methods a path does not
//! have are a 405 with `Allow`, and its stateful phase chains requests
//! through the links it infers (start a VM, then stop, pause, read its
//! guestinfo...). The daemon runs in a network namespace of the test's own
//! (requests ask for taps), with a configured VM that boots the tools test
//! guest and one that runs from the start, so the operations on running
//! VMs are reached too.
//!
//! Two things are told to schemathesis rather than found by it:
//! - a request the schema allows may be answered 422 (documented where it
//!   can be): the schema cannot know the host's files, switches and
//!   memory, nor which CPU family goes with which model;
//! - `GET /v1/vms/{id}/wait` is left out: it is a long poll (documented)
//!   that answers only when the VM stops, and would hold schemathesis until
//!   its request timeout. It is checked here directly instead.
//!
//! Schemathesis is installed on first use into a virtual environment
//! outside the repository (`~/.cache/vmd-schemathesis/VERSION`, from PyPI
//! with pip; `.ci/run` installs python3-venv). Where it cannot be, the
//! test skips, and fails under `CI=true`, as it does without /dev/kvm or
//! network namespaces.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The schemathesis release the test runs (pinned: a newer one may add
/// checks, and that should be a change of this line, not a surprise).
const SCHEMATHESIS: &str = "4.32.5";

/// Test cases per operation and phase: about a minute here, with the
/// stateful phase's scenarios.
const EXAMPLES: &str = "200";

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (returns None) or, under CI, fails, saying why.
fn cannot(why: String) -> Option<PathBuf> {
    assert!(!under_ci(), "under CI: {why}");
    eprintln!("skipping: {why}");
    None
}

/// The `st` program of a virtual environment holding schemathesis
/// [`SCHEMATHESIS`], made (python3 -m venv, pip install) if it is not
/// there yet. A `.complete` file says it was made whole; one without is
/// made again.
fn schemathesis() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    let venv = cache.join("vmd-schemathesis").join(SCHEMATHESIS);
    let st = venv.join("bin/st");
    let complete = venv.join(".complete");
    let works = || {
        complete.exists()
            && Command::new(&st)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
    };
    if works() {
        return Some(st);
    }
    let _ = std::fs::remove_dir_all(&venv);
    eprintln!(
        "installing schemathesis {SCHEMATHESIS} into {}",
        venv.display()
    );
    // Debian's, which .ci/run sees to (python3-venv), before another on
    // the PATH.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| !p.starts_with('/') || Path::new(p).exists())
        .expect("python3 is the last resort");
    let mut mk = Command::new(python);
    mk.args(["-m", "venv"]).arg(&venv);
    let o = match mk.output() {
        Ok(o) => o,
        Err(e) => {
            return cannot(format!(
                "python3: {e} (Debian: apt-get install python3-venv)"
            ))
        }
    };
    if !o.status.success() {
        let _ = std::fs::remove_dir_all(&venv);
        return cannot(format!(
            "python3 -m venv failed (Debian: apt-get install python3-venv):\n{}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("schemathesis=={SCHEMATHESIS}"),
    ]);
    let o = run_bounded(pip, Duration::from_secs(600));
    if o.ok() {
        std::fs::write(&complete, "").expect("mark the environment complete");
    }
    if !works() {
        let _ = std::fs::remove_dir_all(&venv);
        return cannot(format!(
            "pip install schemathesis=={SCHEMATHESIS} failed: {o:?}"
        ));
    }
    Some(st)
}

/// A TCP port on 127.0.0.1 that forwards each connection to vmd's Unix
/// socket (schemathesis speaks HTTP over TCP only). vmd sees the test's
/// own credentials: root's. The listener lives as long as the test
/// process.
fn bridge(sock: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("local address").port();
    let sock = sock.to_owned();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let sock = sock.clone();
            std::thread::spawn(move || {
                if let Ok(unix) = UnixStream::connect(&sock) {
                    splice(tcp, unix);
                }
            });
        }
    });
    port
}

/// Copies both ways until each side has closed its half.
fn splice(tcp: TcpStream, unix: UnixStream) {
    let (Ok(mut tcp_in), Ok(mut unix_out)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_in, &mut unix_out);
        let _ = unix_out.shutdown(Shutdown::Write);
    });
    let (mut unix_in, mut tcp_out) = (unix, tcp);
    let _ = std::io::copy(&mut unix_in, &mut tcp_out);
    let _ = tcp_out.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// The configuration both tests run on: `a`, disabled, boots the tools
/// guest when asked; `b` runs from the start. A short grace period, so a
/// graceful stop of a guest that ignores it (a paused one) ends soon.
fn config() -> String {
    let tools = guest("tools");
    format!(
        "vm \"a\" {{\n\tdisable\n\tkernel \"{tools}\"\n\tcmdline \"hostname=a poll_ms=200\"\n\
         \tmemory 32M\n\tgrace 2\n}}\n\
         vm \"b\" {{\n\tkernel \"{tools}\"\n\tcmdline \"hostname=b poll_ms=200\"\n\
         \tmemory 32M\n\tgrace 2\n}}\n"
    )
}

#[test]
fn schemathesis_finds_nothing() {
    if !kvm_or_skip() {
        return;
    }
    let Some(ns) = Netns::new("openapi") else {
        return;
    };
    let Some(st) = schemathesis() else {
        return;
    };
    let dir = fresh_dir();
    std::fs::write(dir.join("vm.conf"), config()).expect("write vm.conf");
    let d = TestDaemon::start_in_netns(dir.clone(), &ns);
    d.wait_running("b");
    let port = bridge(&d.sock);
    // 422 is an answer to a request the schema allows: see the top.
    let toml = dir.join("schemathesis.toml");
    std::fs::write(
        &toml,
        "[checks.positive_data_acceptance]\n\
         expected-statuses = [\"2xx\", \"3xx\", \"401\", \"403\", \"404\", \"409\", \"422\", \"429\", \"5xx\"]\n",
    )
    .expect("write schemathesis.toml");
    let mut cmd = Command::new(&st);
    cmd.arg("--config-file")
        .arg(&toml)
        .args([
            "run",
            &format!("http://127.0.0.1:{port}/openapi.json"),
            "--checks",
            "all",
            "--max-examples",
            EXAMPLES,
            "--exclude-path",
            "/v1/vms/{id}/wait",
            // A graceful stop with `wait` takes the guest's grace period
            // at most (2 s) after its tools' 3 + 10 s.
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--no-color",
        ])
        // Whatever it writes (hypothesis' examples) stays in the test's
        // directory.
        .current_dir(&dir)
        .env("NO_COLOR", "1");
    let started = Instant::now();
    let o = run_bounded(cmd, Duration::from_secs(400));
    let took = started.elapsed();
    assert!(
        o.ok(),
        "schemathesis found something ({took:?}):\n{}\n{}\nvmd:\n{}",
        o.stdout,
        o.stderr,
        d.log()
    );
    // It did test: every operation but /wait, and no failure or error.
    assert!(o.stdout.contains("13 selected / 14 total"), "{}", o.stdout);
    let summary = o
        .stdout
        .lines()
        .rev()
        .find(|l| l.contains(" in "))
        .unwrap_or("");
    assert!(
        !summary.contains("failure") && !summary.contains("error"),
        "{}",
        o.stdout
    );
    eprintln!("{}\nschemathesis took {took:?}", o.stdout);
    let starts = d.log().matches(" INFO starting ").count();
    eprintln!("VM processes started: {starts}");
    // The operations on running VMs were reached: schemathesis started
    // some.
    assert!(starts > 1, "{}", d.log());
    // vmd is still there and lists its VMs.
    assert!(d.status().len() >= 2, "{}", d.log());
}

/// A JSON error answer's message.
fn error_of(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {body}"))
        .to_owned()
}

/// The headers of one raw exchange.
fn head_of(sock: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    got
}

/// What schemathesis found once, each checked directly: documented
/// statuses with JSON bodies, the schema's bounds kept by the server, the
/// long poll described, and a VM process that fails a 502.
#[test]
fn the_findings_stay_fixed() {
    let d = TestDaemon::start(&config().replace("vm \"b\" {\n", "vm \"b\" {\n\tdisable\n"));
    let sock = &d.sock;
    let (code, text) = http(sock, "GET", "/openapi.json", None).unwrap();
    assert_eq!(code, Some(200));
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let statuses = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("no {method} {path}"))
            .keys()
            .cloned()
            .collect()
    };

    // 400 on a body that does not fit, documented, with a JSON error.
    for (path, body) in [
        ("/v1/config/load", "{}"),
        ("/v1/log", r#"{"level":"loud"}"#),
        ("/v1/reset", r#"{"what":7}"#),
        ("/v1/vms/a/stop", r#"{"force":false,"wait":{}}"#),
    ] {
        let (code, text) = http(sock, "POST", path, Some(body)).unwrap();
        assert_eq!(code, Some(400), "{path}: {text}");
        assert!(error_of(&text).starts_with("bad request body: "), "{text}");
        let doc_path = path.replace("/a/", "/{id}/");
        assert!(
            statuses(&doc_path, "post").contains(&"400".into()),
            "{path}"
        );
    }
    // 404 for pause and unpause of no VM, documented.
    for op in ["pause", "unpause"] {
        let (code, text) = http(sock, "POST", &format!("/v1/vms/nosuch/{op}"), None).unwrap();
        assert_eq!(code, Some(404), "{text}");
        assert_eq!(error_of(&text), "vm nosuch not found");
        assert!(statuses(&format!("/v1/vms/{{id}}/{op}"), "post").contains(&"404".into()));
    }
    // Starts: an unknown instance_of is a 404 (documented), an empty one
    // a 400, not looked up; so is an empty name, which the schema refuses
    // too.
    let start = |body: &str| http(sock, "POST", "/v1/vms", Some(body)).unwrap();
    let (code, text) = start(r#"{"name":"i1","instance_of":"nosuch"}"#);
    assert_eq!(code, Some(404), "{text}");
    let (code, text) = start(r#"{"name":"i1","instance_of":""}"#);
    assert_eq!(code, Some(400), "{text}");
    assert!(
        error_of(&text).starts_with("invalid instance_of \"\""),
        "{text}"
    );
    let (code, text) = start(r#"{"name":""}"#);
    assert_eq!(code, Some(400), "{text}");
    let name = &doc["components"]["schemas"]["StartRequest"]["properties"]["name"];
    assert_eq!(name["minLength"], 1, "{name}");
    // A number names an existing VM: none is a 404, not a bad name.
    let (code, text) = start(r#"{"name":"4711","kernel":"/x"}"#);
    assert_eq!(code, Some(404), "{text}");
    assert!(statuses("/v1/vms", "post").contains(&"404".into()));
    // What the request names on the host and cannot be used: a 422.
    let (code, text) = start(r#"{"name":"a","kernel":"/nonexistent/k"}"#);
    assert_eq!(code, Some(422), "{text}");
    assert_eq!(
        error_of(&text),
        "kernel /nonexistent/k: No such file or directory"
    );
    let (code, text) = start(r#"{"name":"a","initrd":"/"}"#);
    assert_eq!(code, Some(422), "{text}");
    assert_eq!(
        error_of(&text),
        "initrd /: is a directory, not a regular file"
    );
    let (code, text) = start(r#"{"name":"a","switches":["nosuch"]}"#);
    assert_eq!(code, Some(422), "{text}");
    let (code, text) = start(r#"{"name":"a","memory":18446744073709551615}"#);
    assert_eq!(code, Some(422), "{text}");
    let (code, text) = start(r#"{"name":"a","cpu":{"family":5,"model":44}}"#);
    assert_eq!(code, Some(422), "{text}");
    // Numbers as JSON Schema has them: 64.0 is an integer.
    let (code, text) = start(r#"{"name":"a","cpus":1.5}"#);
    assert_eq!(code, Some(400), "{text}");
    // A relative path is no path on vmd's host.
    let (code, text) = start(r#"{"name":"a","kernel":"vmlinuz"}"#);
    assert_eq!(code, Some(400), "{text}");
    assert!(error_of(&text).ends_with("not an absolute path"), "{text}");

    // A VM process that fails to start is the server side's failure: a
    // 502 saying why, and the configured VM is as it was.
    let before = d.vm("a");
    let junk = d.dir.join("junk-kernel");
    std::fs::write(&junk, b"not a kernel").unwrap();
    let body = serde_json::json!({"name": "a", "kernel": junk, "memory": 64 << 20});
    let (code, text) = start(&body.to_string());
    assert_eq!(code, Some(502), "{text}");
    assert!(error_of(&text).starts_with("vm a: "), "{text}");
    assert!(statuses("/v1/vms", "post").contains(&"502".into()));
    let after = d.vm("a");
    assert_eq!(after.maxmem, before.maxmem, "{after:#?}");
    // The empty initrd stays refused, as a malformed request.
    let (code, text) = start(r#"{"name":"a","initrd":""}"#);
    assert_eq!(code, Some(400), "{text}");
    assert!(error_of(&text).contains("empty path"), "{text}");
    // vmctl says the 502's message as it says any other.
    let o = d.vmctl(&["start", "-b", junk.to_str().unwrap(), "a"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.starts_with("vmctl: vm a: "), "{o:?}");

    // 405: a JSON error, and Allow says what the path takes.
    let got = head_of(
        sock,
        "DELETE /v1/vms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (head, body) = got.split_once("\r\n\r\n").expect("an answer");
    assert!(head.starts_with("HTTP/1.1 405 "), "{got}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\ncontent-type: application/json"), "{got}");
    assert!(head.contains("\r\nallow: get,head,post"), "{got}");
    assert!(error_of(body).starts_with("method not allowed"), "{body}");
    // A path that does not decode: a JSON 400 too.
    let (code, text) = http(sock, "GET", "/v1/vms/%FF", None).unwrap();
    assert_eq!(code, Some(400), "{text}");
    error_of(&text);

    // /wait is described as the long poll it is, and answers at once for
    // a VM that is not running.
    let wait = &doc["paths"]["/v1/vms/{id}/wait"]["get"];
    let said = format!("{} {}", wait["summary"], wait["description"]);
    assert!(said.contains("long poll"), "{wait}");
    let (code, text) = http(sock, "GET", "/v1/vms/a/wait", None).unwrap();
    assert_eq!(code, Some(200), "{text}");
}
