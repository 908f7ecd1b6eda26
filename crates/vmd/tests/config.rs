//! `vmd -n`: the configuration test. No VM runs, so no /dev/kvm needed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{fresh_dir, guest, run_bounded, vmd_bin, Outcome};

fn vmd(args: &[&std::ffi::OsStr]) -> Outcome {
    let mut c = Command::new(vmd_bin());
    c.args(args).env_remove("RUST_LOG");
    run_bounded(c, Duration::from_secs(20))
}

fn check(path: &Path) -> Outcome {
    vmd(&["-n".as_ref(), "-f".as_ref(), path.as_os_str()])
}

#[test]
fn good_configurations_print_configuration_ok() {
    let dir = fresh_dir();
    let good = dir.join("good.conf");
    std::fs::write(
        &good,
        format!(
            r#"# two VMs, a switch, globals
tools = "{tools}"
socket owner root
grace 30
switch "lan" {{
	interface br0
}}
vm "web1" {{
	kernel $tools
	cmdline "hostname=web1 ip=10.0.0.5/24 poll_ms=200"
	memory 64M
	owner root
	interface {{ switch "lan" }}
}}
vm "tick" {{
	disable
	kernel "{ticker}"
	memory 32M
	grace 2
}}
"#,
            tools = guest("tools"),
            ticker = guest("ticker")
        ),
    )
    .unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmconf/examples/vm.conf");
    for conf in [good.as_path(), example.as_path()] {
        let o = check(conf);
        assert_eq!(o.code, Some(0), "{}: {o:?}", conf.display());
        assert_eq!(o.stdout, "configuration OK\n", "{}: {o:?}", conf.display());
        assert_eq!(o.stderr, "", "{}: {o:?}", conf.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configurations_print_one_line_per_error() {
    let dir = fresh_dir();
    let bad = dir.join("bad.conf");
    std::fs::write(
        &bad,
        r#"vm "a" {
	memory 1G
	frobnicate yes
}
vm "a" {
	memory 12Q
}
vm "b" {
	interface { switch "nosuch" }
}
"#,
    )
    .unwrap();
    let o = check(&bad);
    assert_ne!(o.code, Some(0), "{o:?}");
    assert!(o.code.is_some(), "vmd -n died of a signal: {o:?}");
    assert_eq!(o.stdout, "", "nothing but errors: {o:?}");
    let shown = bad.display().to_string();
    let lines: Vec<&str> = o.stderr.lines().collect();
    // (line, a word the message must contain)
    let want = [(3, "frobnicate"), (5, "twice"), (6, "12Q"), (9, "nosuch")];
    assert_eq!(lines.len(), want.len(), "one line per error: {o:?}");
    for (l, (n, word)) in lines.iter().zip(want) {
        let prefix = format!("{shown}:{n}: ");
        assert!(
            l.starts_with(&prefix) && l.len() > prefix.len(),
            "{l:?} is not `{prefix}message`: {o:?}"
        );
        assert!(l.contains(word), "{l:?} should mention {word:?}");
    }

    // A missing file is an error of the same shape.
    let missing = dir.join("missing.conf");
    let o = check(&missing);
    assert_ne!(o.code, Some(0), "{o:?}");
    assert_eq!(o.stdout, "");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(
        o.stderr.starts_with(&format!("{}:", missing.display())),
        "{o:?}"
    );

    // And the daemon refuses to start on a bad file, before binding.
    let sock = dir.join("sock");
    let o = vmd(&[
        "-d".as_ref(),
        "-f".as_ref(),
        bad.as_os_str(),
        "-s".as_ref(),
        sock.as_os_str(),
    ]);
    assert_ne!(o.code, Some(0), "{o:?}");
    assert!(o.stderr.contains(&format!("{shown}:3: ")), "{o:?}");
    assert!(!sock.exists(), "vmd bound its socket on a bad config");
    let _ = std::fs::remove_dir_all(&dir);
}
