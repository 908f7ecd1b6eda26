//! The files in dist/ that install vmt into guests: the systemd unit
//! passes `systemd-analyze verify` (where systemd is installed) and agrees
//! with the binary on the pid file; the init script is valid sh and knows
//! the same pid file. (The init script runs for real in the Linux test
//! fixture's busybox guest: crates/vmd/tests/linux.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn dist(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(name)
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(dist("vmt.service")).unwrap();
    assert!(unit.contains(&format!("\nPIDFile={}\n", vmt::status::PID_FILE)));
    assert!(unit.contains("\nType=forking\n"));
    assert!(unit.contains("\nExecStart=/usr/sbin/vmt\n"));
    // Any VM, not only those systemd-detect-virt calls vmware.
    assert!(unit.contains("\nConditionVirtualization=vm\n"));
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("no systemd-analyze: not verified");
        return;
    };
    assert!(out.status.success());
    // verify wants ExecStart's program to exist: this test's vmt.
    let dir = std::env::temp_dir().join(format!("vmt-dist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("vmt.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/sbin/vmt", env!("CARGO_BIN_EXE_vmt")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_init_script_is_sh() {
    let path = dist("vmt.init");
    let script = std::fs::read_to_string(&path).unwrap();
    assert!(script.starts_with("#!/bin/sh\n"));
    assert!(script.contains(&format!("\nPIDFILE={}\n", vmt::status::PID_FILE)));
    for cmd in [
        "start)",
        "stop)",
        "reload)",
        "restart|force-reload)",
        "status)",
    ] {
        assert!(script.contains(cmd), "{cmd}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "not executable");
    let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Usage, without touching anything.
    let out = Command::new("sh").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: "));
}
