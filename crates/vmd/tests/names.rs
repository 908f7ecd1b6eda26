//! VM names and what guests report, on a real daemon (issue 12, item 3).
//!
//! A new VM's name follows OpenBSD's rule (`vmconf::check_vm_name`):
//! letters, digits, `.`, `-`, `_`, not starting with one of the last three,
//! not digits only, at most 63 characters. The API refuses any other with a
//! 400 that says why (digits only name a VM by number: a 404 when there is
//! none), for ad-hoc VMs and instances alike, and adds nothing;
//! so are paths and switch names with control characters.
//! And what a guest reports (its host name here, through the `tools` test
//! guest's `hostname=`) reaches `vmctl status` escaped: no escape sequence
//! gets to the terminal of whoever runs it.

mod common;

use std::time::Duration;

use common::*;

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

/// Whether `s` has a character a terminal would act on rather than show,
/// other than the newlines that end lines.
fn raw_controls(s: &str) -> bool {
    s.chars()
        .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

/// The names refused, each with (part of) the reason given.
fn bad_names() -> Vec<(String, &'static str)> {
    vec![
        ("a/b".into(), "contains \"/\""),
        ("\x1b[31m".into(), "contains a non-printable character"),
        ("a\nb".into(), "contains whitespace"),
        ("-x".into(), "starts with"),
        (".x".into(), "starts with"),
        ("_x".into(), "starts with"),
        ("a".repeat(70_000), "longer than 63 characters"),
        ("b".repeat(64), "longer than 63 characters"),
        ("a b".into(), "contains whitespace"),
        ("a:b".into(), "other than letters, digits"),
        ("caf\u{e9}".into(), "other than letters, digits"),
        ("a\u{202e}b".into(), "other than letters, digits"),
    ]
}

#[test]
fn the_api_refuses_bad_names_and_adds_nothing() {
    let tools = guest("tools");
    let d = TestDaemon::start(&format!(
        "vm \"base\" {{\n\tdisable\n\tkernel \"{tools}\"\n\tmemory 32M\n}}\n"
    ));
    for (name, why) in bad_names() {
        let shown = format!("{:?}", &name[..name.len().min(20)]);
        let bodies = [
            // An ad-hoc VM (root may start one).
            serde_json::json!({"name": name, "kernel": tools, "memory": 32 << 20}),
            // An instance of a configured VM.
            serde_json::json!({"name": name, "instance_of": "base"}),
        ];
        for body in bodies {
            let (code, answer) =
                http(&d.sock, "POST", "/v1/vms", Some(&body.to_string())).expect("vmd answers");
            assert_eq!(code, Some(400), "name {shown}: {answer}");
            let msg = error_of(&answer);
            assert!(
                msg.starts_with("invalid vm name ") && msg.contains(why),
                "name {shown}: {msg:?}"
            );
            // The message quotes the name escaped, and not all of it.
            assert!(!raw_controls(&msg), "name {shown}: {msg:?}");
            assert!(msg.len() < 200, "name {shown}: {} bytes", msg.len());
        }
    }
    // The 70,000-character name: what it was is still said.
    let long = "a".repeat(70_000);
    let body = serde_json::json!({"name": long, "kernel": tools});
    let (_, answer) = http(&d.sock, "POST", "/v1/vms", Some(&body.to_string())).unwrap();
    assert_eq!(
        error_of(&answer),
        format!(
            "invalid vm name \"{}\"... (70000 characters): longer than 63 characters",
            "a".repeat(63)
        )
    );
    // Digits only are a VM's number, for every start: no VM 4711 is a 404
    // that says why it is no new name either.
    for body in [
        serde_json::json!({"name": "4711", "kernel": tools, "memory": 32 << 20}),
        serde_json::json!({"name": "4711", "instance_of": "base"}),
    ] {
        let (code, answer) =
            http(&d.sock, "POST", "/v1/vms", Some(&body.to_string())).expect("vmd answers");
        assert_eq!(code, Some(404), "{answer}");
        assert!(error_of(&answer).contains("not all digits"), "{answer}");
    }
    // An empty name is refused as before.
    let (code, answer) = http(&d.sock, "POST", "/v1/vms", Some(r#"{"name": ""}"#)).unwrap();
    assert_eq!(code, Some(400), "{answer}");

    // Paths and switch names with control characters are refused too:
    // they would reach messages, logs and `vmctl status`.
    let evil = "/tmp/x\nvmd: forged\x1b[2J";
    for body in [
        serde_json::json!({"name": "ok1", "kernel": evil}),
        serde_json::json!({"name": "ok1", "kernel": tools, "initrd": evil}),
        serde_json::json!({"name": "ok1", "kernel": tools, "disks": ["/tmp/a", evil]}),
        serde_json::json!({"name": "ok1", "kernel": tools, "cdrom": evil}),
        serde_json::json!({"name": "ok1", "kernel": tools, "switches": [evil]}),
    ] {
        let (code, answer) = http(&d.sock, "POST", "/v1/vms", Some(&body.to_string())).unwrap();
        assert_eq!(code, Some(400), "{body}: {answer}");
        let msg = error_of(&answer);
        assert!(
            msg.ends_with(" /tmp/x\\nvmd: forged\\x1b[2J: contains a control character"),
            "{msg:?}"
        );
    }

    // Nothing was added: the configured VM is all there is.
    let names: Vec<String> = d.status().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["base"]);

    // vmctl says why, on one line, with the ESC escaped.
    let o = d.vmctl(&["start", "-b", &tools, "\x1b[31m"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(
        o.stderr,
        "vmctl: invalid vm name \"\\u{1b}[31m\": contains a non-printable character\n"
    );
    let o = d.vmctl(&["start", "-b", &tools, "a\nvmctl: forged"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(!raw_controls(&o.stderr), "{o:?}");
    // A name that is no VM, looked up: escaped too.
    let o = d.vmctl(&["status", "\x1b]0;x\x07"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(!raw_controls(&o.stderr), "{o:?}");
    assert!(o.stderr.contains("not found"), "{o:?}");

    // A good name is not refused for its name: an instance of the disabled
    // VM is made (and starts, or fails to start where there is no KVM).
    let body = serde_json::json!({"name": "web-1.example_2", "instance_of": "base"});
    let (code, answer) = http(&d.sock, "POST", "/v1/vms", Some(&body.to_string())).unwrap();
    if code != Some(200) {
        assert!(!error_of(&answer).contains("vm name"), "{answer}");
    }
    assert!(d.status().iter().any(|v| v.name == "web-1.example_2"));

    let o = d.vmctl_ok(&["status"]);
    assert!(!raw_controls(&o.stdout), "{o:?}");
    assert!(!d.log().contains('\x1b'), "vmd's log:\n{}", d.log());
}

/// A guest whose tools report a host name full of escape sequences: the
/// API hands it on as it is (JSON escapes it), `vmctl status` shows it
/// escaped.
#[test]
fn a_hostile_guest_host_name_is_shown_escaped() {
    if !kvm_or_skip() {
        return;
    }
    let tools = guest("tools");
    let d = TestDaemon::start("");
    // The guest's command line splits words at ASCII white space, so the
    // name carries everything else: OSC (set the window title), SGR, clear
    // screen, a C1 CSI, a right-to-left override, backspace and DEL.
    let hostile = "\x1b]0;pwned\x07\x1b[31mred\x1b[2J\u{9b}31m\u{202e}evil\x08\x7f";
    let body = serde_json::json!({
        "name": "web-1.example_2",
        "kernel": tools,
        "memory": 32 << 20,
        "cmdline": format!("hostname={hostile} poll_ms=200"),
    });
    let (code, answer) = http(&d.sock, "POST", "/v1/vms", Some(&body.to_string())).unwrap();
    assert_eq!(code, Some(200), "{answer}\nvmd:\n{}", d.log());
    let vm = d.wait_tools("web-1.example_2");
    assert_eq!(vm.hostname.as_deref(), Some(hostile));

    let escaped = "\\x1b]0;pwned\\x07\\x1b[31mred\\x1b[2J\\u{9b}31m\\u{202e}evil\\x08\\x7f";
    for args in [&["status"][..], &["status", "web-1.example_2"]] {
        let o = d.vmctl_ok(args);
        assert!(!raw_controls(&o.stdout), "vmctl {args:?}: {:?}", o.stdout);
        assert!(o.stdout.contains(escaped), "vmctl {args:?}:\n{}", o.stdout);
        // The header and one row; given a name, the lines below the table
        // are each one of the VM's devices or of what its tools report
        // (the test guest reports its uptime), none a piece of the name.
        let rows: Vec<&str> = o.stdout.lines().collect();
        assert!(rows.len() >= 2, "vmctl {args:?}:\n{}", o.stdout);
        let below = ["disk", "cdrom ", "if", "os ", "uptime ", "nic"];
        for l in &rows[2..] {
            assert!(
                args.len() == 2 && below.iter().any(|p| l.starts_with(p)),
                "vmctl {args:?}: {l:?}\n{}",
                o.stdout
            );
        }
        // The IP column still lines up under its header.
        assert_eq!(
            rows[0].find(" IP"),
            rows[1].rfind(' '),
            "vmctl {args:?}:\n{}",
            o.stdout
        );
    }
    assert!(!d.log().contains('\x1b'), "vmd's log:\n{}", d.log());

    d.vmctl_ok(&["stop", "-f", "-w", "web-1.example_2"]);
    let vm = d.wait_vm("web-1.example_2", "stopped", Duration::from_secs(20), |v| {
        v.state == VmState::Stopped
    });
    assert_eq!(vm.hostname, None);
}
