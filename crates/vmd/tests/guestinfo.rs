//! guestinfo through vmd: what the tools test guest sets with `info-set
//! guestinfo.*` read back with `vmctl guestinfo` and the API, host sets
//! (with the guest's own size limit, the store's key limit), bad keys,
//! missing keys, a VM that is not running, and who may do it.
//!
//! The guest (`tools`, `selftest=1 ip=...`) sets `selftest = hello`,
//! `big.lb` and `big.hb` (each an `info-set` of exactly one 64 KiB
//! message) and `ip`. It reads no host-set variable back on its console;
//! that the guest's `info-get` sees what the host set is guestrpc's
//! loopback test, on the same store this reaches.

mod common;

use std::time::Duration;

use common::*;

/// An owner that needs no user account: vm.conf takes numeric ids, and
/// root's vmctl can run as any uid.
const OWNER: u32 = 47_110;

/// The tools guest's selftest value byte `i` (tools.rs `pattern`).
fn pattern(i: usize) -> u8 {
    b'!' + ((i * 7 + i / 94) % 94) as u8
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// An error answer's message (its body must be `{"error": "..."}`).
fn error_of(body: &str) -> String {
    json(body)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {body}"))
        .to_owned()
}

#[test]
fn guestinfo_read_and_set_through_the_api_and_vmctl() {
    if !kvm_or_skip() {
        return;
    }
    let tools = guest("tools");
    let conf = format!(
        r#"socket owner {OWNER}:{OWNER}
vm "gi" {{
	kernel "{tools}"
	cmdline "hostname=gi ip=10.0.0.7/24 poll_ms=200 selftest=1"
	memory 32M
	owner {OWNER}
}}
vm "other" {{
	kernel "{tools}"
	cmdline "hostname=other poll_ms=200"
	memory 32M
}}
vm "off" {{
	disable
	kernel "{tools}"
	memory 32M
}}
"#
    );
    let d = TestDaemon::start(&conf);
    let sock = d.sock.as_path();
    d.wait_tools("gi");
    d.wait_tools("other");

    // What the guest set, as `vmctl guestinfo` lists it: its ip comes
    // with the guest info batch, a moment after the hostname.
    let mut listing = String::new();
    let seen = poll(Duration::from_secs(20), || {
        listing = d.vmctl_ok(&["guestinfo", "gi"]).stdout;
        listing.lines().any(|l| l == "ip = 10.0.0.7")
    });
    assert!(seen, "no ip in the listing:\n{listing}\nvmd:\n{}", d.log());
    assert!(
        listing.lines().any(|l| l == "selftest = hello"),
        "{listing}"
    );
    let keys: Vec<&str> = listing
        .lines()
        .map(|l| l.split_once(" = ").expect("KEY = VALUE").0)
        .collect();
    assert_eq!(keys, ["big.hb", "big.lb", "ip", "selftest"]);

    // --json: the exact values, 64 KiB ones included.
    let o = d.vmctl_ok(&["--json", "guestinfo", "gi"]);
    let all = json(&o.stdout);
    let big = all["big.lb"].as_str().expect("big.lb is a string");
    let want_len = 65536 - "info-set guestinfo.big.lb ".len();
    assert_eq!(big.len(), want_len);
    assert!(big.bytes().enumerate().all(|(i, b)| b == pattern(i)));
    assert_eq!(all["big.hb"].as_str().map(str::len), Some(want_len));

    // One key, exactly; with or without the prefix; by id too.
    let o = d.vmctl_ok(&["guestinfo", "gi", "ip"]);
    assert_eq!(o.stdout, "10.0.0.7\n");
    let o = d.vmctl_ok(&["g", "1", "guestinfo.selftest"]);
    assert_eq!(o.stdout, "hello\n");
    let (code, body) = http(sock, "GET", "/v1/vms/gi/guestinfo/ip", None).unwrap();
    assert_eq!(code, Some(200), "{body}");
    assert_eq!(json(&body), serde_json::json!({ "value": "10.0.0.7" }));

    // Host sets, read back through vmctl and the API.
    let o = d.vmctl_ok(&["guestinfo", "gi", "role", "db primary"]);
    assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("", ""));
    assert_eq!(
        d.vmctl_ok(&["guestinfo", "gi", "role"]).stdout,
        "db primary\n"
    );
    d.vmctl_ok(&["guestinfo", "gi", "guestinfo.role", "two\nlines"]);
    assert_eq!(
        d.vmctl_ok(&["guestinfo", "gi", "role"]).stdout,
        "two\nlines\n"
    );
    assert!(
        d.vmctl_ok(&["guestinfo", "gi"])
            .stdout
            .lines()
            .any(|l| l == "role = two\\nlines"),
        "the listing escapes the newline"
    );
    // An empty value clears it, as guest tools do: still there, empty.
    d.vmctl_ok(&["guestinfo", "gi", "role", ""]);
    assert_eq!(d.vmctl_ok(&["guestinfo", "gi", "role"]).stdout, "\n");
    let (code, body) = http(
        sock,
        "PUT",
        "/v1/vms/gi/guestinfo/from.api",
        Some(r#"{"value":"é ✓"}"#),
    )
    .unwrap();
    assert_eq!(code, Some(200), "{body}");
    assert_eq!(json(&body)["value"], "é ✓");
    let (_, body) = http(sock, "GET", "/v1/vms/gi/guestinfo", None).unwrap();
    assert_eq!(json(&body)["from.api"], "é ✓");

    // The size limit is the guest's own: key and value as in one 64 KiB
    // info-set. big.lb's own length fits; a byte more does not.
    let put_len = |key: &str, n: usize| {
        let body = format!(r#"{{"value":"{}"}}"#, "x".repeat(n));
        http(
            sock,
            "PUT",
            &format!("/v1/vms/gi/guestinfo/{key}"),
            Some(&body),
        )
        .unwrap()
    };
    let (code, body) = put_len("big.lb", want_len);
    assert_eq!(code, Some(200), "{body}");
    let (code, body) = put_len("big.lb", want_len + 1);
    // Each fits the schema; together they are too long: a 422.
    assert_eq!(code, Some(422), "{body}");
    assert!(error_of(&body).contains("at most 65516"), "{body}");
    assert_eq!(
        d.vmctl_ok(&["guestinfo", "gi", "big.lb"]).stdout.len(),
        want_len + 1,
        "the refused set changed nothing"
    );

    // Bad keys and bodies: 400 with a message, through the API...
    for (key, why) in [
        ("guestinfo.", "empty"),
        ("a%2Fb", "'/'"),
        ("a%20b", "space"),
        ("a%0Ab", "control"),
        ("a%00b", "control"),
        ("a%FFb", "UTF-8"),
        ("guestinfo.guestinfo.x", "guestinfo.guestinfo."),
    ] {
        let path = format!("/v1/vms/gi/guestinfo/{key}");
        for (method, body) in [("GET", None), ("PUT", Some(r#"{"value":"v"}"#))] {
            let (code, answer) = http(sock, method, &path, body).unwrap();
            assert_eq!(code, Some(400), "{method} {key:.20}: {answer}");
            assert!(error_of(&answer).contains(why), "{key:.20}: {answer}");
        }
    }
    for body in [
        "",
        "{}",
        r#"{"value":5}"#,
        r#"{"value":"a\u0000b"}"#,
        "not json",
    ] {
        let (code, answer) = http(sock, "PUT", "/v1/vms/gi/guestinfo/k", Some(body)).unwrap();
        assert_eq!(code, Some(400), "{body:?}: {answer}");
        error_of(&answer);
    }
    // ... and through vmctl.
    let o = d.vmctl(&["guestinfo", "gi", "a b", "v"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(
        o.stderr, "vmctl: guestinfo key may not contain a space\n",
        "{o:?}"
    );
    // A key over the limit cannot be in a URL at all: hyper refuses a
    // request target over 64 KiB (414) before vmd sees it. vmctl says why.
    let long_key = "k".repeat(65517);
    let (code, _) = http(
        sock,
        "GET",
        &format!("/v1/vms/gi/guestinfo/{long_key}"),
        None,
    )
    .unwrap();
    assert_eq!(code, Some(414));
    let o = d.vmctl(&["guestinfo", "gi", &long_key, "v"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(
        o.stderr,
        "vmctl: guestinfo key is too long: 65517 bytes, at most 65516\n"
    );

    // A variable that is not set, a VM that does not exist: 404.
    let (code, body) = http(sock, "GET", "/v1/vms/gi/guestinfo/nosuch", None).unwrap();
    assert_eq!(code, Some(404), "{body}");
    assert_eq!(error_of(&body), "vm gi: guestinfo.nosuch is not set");
    let o = d.vmctl(&["guestinfo", "gi", "nosuch"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(o.stderr, "vmctl: vm gi: guestinfo.nosuch is not set\n");
    let (code, body) = http(sock, "GET", "/v1/vms/nosuch/guestinfo", None).unwrap();
    assert_eq!(code, Some(404), "{body}");
    error_of(&body);

    // A VM that is not running: the same 409 as pause gives.
    let (code, pause) = http(sock, "POST", "/v1/vms/off/pause", None).unwrap();
    assert_eq!(code, Some(409), "{pause}");
    for (method, path, body) in [
        ("GET", "/v1/vms/off/guestinfo", None),
        ("GET", "/v1/vms/off/guestinfo/ip", None),
        ("PUT", "/v1/vms/off/guestinfo/ip", Some(r#"{"value":"v"}"#)),
    ] {
        let (code, answer) = http(sock, method, path, body).unwrap();
        assert_eq!(code, Some(409), "{method} {path}: {answer}");
        assert_eq!(error_of(&answer), error_of(&pause), "{method} {path}");
    }

    // The store's bound: 128 variables. New keys up to it are taken,
    // the one after is a 409 that says why; replacing one still works.
    let (_, body) = http(sock, "GET", "/v1/vms/gi/guestinfo", None).unwrap();
    let have = json(&body).as_object().expect("an object").len();
    for i in have..128 {
        let (code, body) = http(
            sock,
            "PUT",
            &format!("/v1/vms/gi/guestinfo/fill.{i}"),
            Some(r#"{"value":"v"}"#),
        )
        .unwrap();
        assert_eq!(code, Some(200), "fill.{i}: {body}");
    }
    let (code, body) = http(
        sock,
        "PUT",
        "/v1/vms/gi/guestinfo/one.more",
        Some(r#"{"value":"v"}"#),
    )
    .unwrap();
    assert_eq!(code, Some(409), "{body}");
    assert!(error_of(&body).contains("guestinfo store full"), "{body}");
    d.vmctl_ok(&["guestinfo", "gi", "role", "again"]);

    // The OpenAPI document has the three operations.
    let (_, body) = http(sock, "GET", "/openapi.json", None).unwrap();
    let doc = json(&body);
    assert!(doc["paths"]["/v1/vms/{id}/guestinfo"]["get"].is_object());
    assert!(doc["paths"]["/v1/vms/{id}/guestinfo/{key}"]["get"].is_object());
    assert!(doc["paths"]["/v1/vms/{id}/guestinfo/{key}"]["put"].is_object());

    // Who may: the owner and root, as for stop and pause; reading too.
    if !is_root() {
        eprintln!("skipping the permission checks: acting as another user needs root");
        return;
    }
    // The unprivileged user runs its own copy of vmctl: the build tree
    // need not be open to it.
    let vmctl = d.dir.join("vmctl");
    std::fs::copy(vmctl_bin(), &vmctl).unwrap();
    let as_owner = |args: &[&str]| {
        let mut c = std::process::Command::new(&vmctl);
        c.arg("-s")
            .arg(&d.sock)
            .args(args)
            .env_remove("VMD_SOCKET")
            .stdin(std::process::Stdio::null());
        std::os::unix::process::CommandExt::uid(&mut c, OWNER);
        std::os::unix::process::CommandExt::gid(&mut c, OWNER);
        run_bounded(c, Duration::from_secs(60))
    };
    let o = as_owner(&["guestinfo", "gi", "ip"]);
    assert!(o.ok(), "{o:?}");
    assert_eq!(o.stdout, "10.0.0.7\n");
    let o = as_owner(&["guestinfo", "gi", "role", "mine"]);
    assert!(o.ok(), "{o:?}");
    assert!(as_owner(&["guestinfo", "gi"]).ok());
    for args in [
        &["guestinfo", "other"][..],
        &["guestinfo", "other", "ip"],
        &["guestinfo", "other", "role", "theirs"],
    ] {
        let o = as_owner(args);
        assert_eq!(o.code, Some(1), "{args:?}: {o:?}");
        assert_eq!(o.stderr, "vmctl: vm other: permission denied\n", "{args:?}");
    }
    // Nothing was set by the refused request; root may set and read it.
    let o = d.vmctl(&["guestinfo", "other", "role"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    d.vmctl_ok(&["guestinfo", "other", "role", "root's"]);
    assert_eq!(
        d.vmctl_ok(&["guestinfo", "other", "role"]).stdout,
        "root's\n"
    );
}
