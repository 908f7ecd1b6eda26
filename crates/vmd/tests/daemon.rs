//! The daemon itself: its HTTP API under bad input, its control socket,
//! configuration reloads and signals.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// An error answer: a JSON object whose `error` is a non-empty string.
fn assert_error_body(body: &str) -> String {
    let v = json(body);
    let e = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {body}"));
    assert!(!e.is_empty(), "{body}");
    e.to_owned()
}

/// A configured VM that is never started (no /dev/kvm needed).
fn disabled_vm(name: &str) -> String {
    format!(
        "vm \"{name}\" {{\n\tdisable\n\tkernel \"{}\"\n\tmemory 32M\n}}\n",
        guest("tools")
    )
}

#[test]
fn malformed_requests_get_4xx_and_hurt_nothing() {
    let d = TestDaemon::start(&disabled_vm("web1"));
    let sock = d.sock.as_path();

    let (code, body) = http(sock, "POST", "/v1/vms", Some("{bad json")).unwrap();
    assert_eq!(code, Some(400), "{body}");
    assert_error_body(&body);

    let (code, body) = http(
        sock,
        "POST",
        "/v1/vms/web1/stop",
        Some(r#"{"force": "yes", "wait": 3}"#),
    )
    .unwrap();
    assert_eq!(code, Some(400), "{body}");
    assert_error_body(&body);
    // The same request well formed is judged on its merits: web1 is not
    // running. So the 400 above was about the body.
    let (code, body) = http(
        sock,
        "POST",
        "/v1/vms/web1/stop",
        Some(r#"{"force": true}"#),
    )
    .unwrap();
    assert_eq!(code, Some(409), "{body}");
    assert!(assert_error_body(&body).contains("not running"), "{body}");
    // A start request that is not an object, and one with a negative size.
    for bad in [r#"["web1"]"#, r#"{"name": "x", "memory": -1}"#, "null"] {
        let (code, body) = http(sock, "POST", "/v1/vms", Some(bad)).unwrap();
        assert_eq!(code, Some(400), "{bad}: {body}");
        assert_error_body(&body);
    }

    let (code, body) = http(sock, "GET", "/v1/nosuch", None).unwrap();
    assert_eq!(code, Some(404), "{body}");
    assert_error_body(&body);
    let (code, body) = http(sock, "GET", "/v1/vms/nosuch", None).unwrap();
    assert_eq!(code, Some(404), "{body}");
    assert!(assert_error_body(&body).contains("nosuch"), "{body}");

    // Garbage instead of HTTP: an error answer or a closed connection.
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"\x00\x01\x02\xff\xfe\r\n\r\n",
        b"GET /v1/vms HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    ] {
        match http_raw(sock, garbage) {
            Ok((None, _)) | Err(_) => {}
            Ok((Some(code), body)) => assert_eq!(code, 400, "{garbage:?}: {body}"),
        }
    }

    // A client that connects and says nothing does not block the others.
    let idle = UnixStream::connect(sock).unwrap();
    let half = {
        let mut s = UnixStream::connect(sock).unwrap();
        std::io::Write::write_all(
            &mut s,
            b"POST /v1/vms HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
        )
        .unwrap();
        s
    };
    let o = d.vmctl_ok(&["status"]);
    assert!(o.stdout.contains("web1"), "{o:?}");
    drop((idle, half));

    // The OpenAPI document.
    let (code, body) = http(sock, "GET", "/openapi.json", None).unwrap();
    assert_eq!(code, Some(200), "{body}");
    let doc = json(&body);
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/vms",
        "/v1/vms/{id}",
        "/v1/vms/{id}/stop",
        "/v1/vms/{id}/wait",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
    }
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')));

    // The daemon is none the worse.
    let vms = d.status();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].state, VmState::Disabled);
    assert!(
        d.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        d.log()
    );
}

#[test]
fn a_second_vmd_on_the_same_socket_is_refused() {
    let d = TestDaemon::start(&disabled_vm("web1"));
    let mut c = Command::new(vmd_bin());
    c.arg("-d")
        .arg("-f")
        .arg(&d.conf)
        .arg("-s")
        .arg(&d.sock)
        .stdin(std::process::Stdio::null());
    let o = run_bounded(c, Duration::from_secs(10));
    assert!(o.code.is_some_and(|c| c != 0), "{o:?}");
    assert!(o.stderr.contains("already"), "{o:?}");
    assert!(o.stderr.contains(&d.sock.display().to_string()), "{o:?}");
    // The first one still has its socket and answers on it.
    assert!(d.sock.exists());
    let vms = d.status();
    assert_eq!(vms[0].name, "web1");
}

#[test]
fn a_stale_socket_is_reclaimed() {
    let dir = fresh_dir();
    std::fs::write(dir.join("vm.conf"), disabled_vm("web1")).unwrap();
    // A socket file nobody listens on, as a crashed vmd leaves it.
    drop(UnixListener::bind(dir.join("sock")).unwrap());
    assert!(dir.join("sock").exists());
    // (A process another test forks at that moment holds a copy of the
    // listener until it execs: wait for that to pass.)
    assert!(poll(Duration::from_secs(5), || UnixStream::connect(
        dir.join("sock")
    )
    .is_err()));
    let d = TestDaemon::start_in(dir);
    assert_eq!(d.status()[0].name, "web1");
}

#[test]
fn reload_and_load() {
    let d = TestDaemon::start(&disabled_vm("a"));
    assert_eq!(d.status().len(), 1);

    // SIGHUP rereads the file.
    d.write_conf(&format!("{}{}", disabled_vm("a"), disabled_vm("b")));
    d.signal(libc::SIGHUP);
    d.wait_until("b after SIGHUP", Duration::from_secs(10), |vms| {
        vms.iter().any(|v| v.name == "b")
    });

    // So does vmctl reload, which also forgets what the file dropped.
    d.write_conf(&format!("{}{}", disabled_vm("b"), disabled_vm("c")));
    d.vmctl_ok(&["reload"]);
    let names: Vec<String> = d.status().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["b", "c"]);

    // A bad file: each error as file:line: message, exit 1, nothing changed.
    d.write_conf("vm \"d\" {\n\tmemory lots\n}\n");
    let o = d.vmctl(&["reload"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    let conf = d.conf.display().to_string();
    assert!(o.stderr.starts_with(&format!("{conf}:2: ")), "{o:?}");
    let names: Vec<String> = d.status().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["b", "c"]);

    // load adds a file's VMs to the configuration.
    let other = d.dir.join("other.conf");
    std::fs::write(&other, disabled_vm("e")).unwrap();
    d.vmctl_ok(&["load", other.to_str().unwrap()]);
    let names: Vec<String> = d.status().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["b", "c", "e"]);
    // A bad one is refused with its errors.
    std::fs::write(&other, "vm \"f\" {\n\tmemory 1G\n\tnosuchkeyword\n}\n").unwrap();
    let o = d.vmctl(&["load", other.to_str().unwrap()]);
    assert_eq!(o.code, Some(1), "{o:?}");
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{o:?}");
    assert!(
        lines[0].starts_with(&format!("{}:3: ", other.display())),
        "{o:?}"
    );
    assert!(lines[0].contains("nosuchkeyword"), "{o:?}");
    assert!(d.status().iter().all(|v| v.name != "f"));
}

#[test]
fn reload_starts_added_vms_and_sigterm_stops_them_gracefully() {
    if !kvm_or_skip() {
        return;
    }
    let web1 = format!(
        "vm \"web1\" {{\n\tkernel \"{}\"\n\tcmdline \"hostname=web1 poll_ms=200\"\n\tmemory 32M\n}}\n",
        guest("tools")
    );
    let mut d = TestDaemon::start(&disabled_vm("a"));
    d.write_conf(&format!("{}{web1}", disabled_vm("a")));
    d.vmctl_ok(&["reload"]);
    let vm = d.wait_tools("web1");
    let pid = vm.pid.unwrap();

    let t = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15));
    let took = t.elapsed();
    assert!(
        status.is_some(),
        "vmd still runs 15 s after SIGTERM:\n{}",
        d.log()
    );
    assert_eq!(status.unwrap().code(), Some(0), "{}", d.log());
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    assert!(!process_exists(pid), "vmm {pid} outlived vmd");
    assert!(!d.sock.exists(), "the socket file is left behind");
    // The guest was asked, and halted: not killed, not powered off.
    assert!(
        d.log().contains("stopped: halted by guest tools"),
        "{}",
        d.log()
    );
}
