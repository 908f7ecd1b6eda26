//! Who may do what: vmctl run as an unprivileged user (`vmdtest`) against
//! a VM it owns and one it does not, and as root.

mod common;

use common::*;

#[test]
fn owners_control_their_vms_and_only_those() {
    if !kvm_or_skip() {
        return;
    }
    if !is_root() {
        eprintln!("skipping: creating a user and acting as it needs root");
        return;
    }
    let (uid, gid) = test_user();
    let tools = guest("tools");
    let conf = format!(
        r#"socket owner {USER}
vm "mine" {{
	kernel "{tools}"
	cmdline "hostname=mine poll_ms=200"
	memory 32M
	owner {USER}
}}
vm "theirs" {{
	kernel "{tools}"
	cmdline "hostname=theirs poll_ms=200"
	memory 32M
}}
"#
    );
    let d = TestDaemon::start(&conf);
    let as_user = user_vmctl(&d, uid, gid);

    // The socket is the user's (group too), mode 0660.
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&d.sock).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (uid, gid, 0o660));
    }
    let mine = d.wait_tools("mine");
    let theirs = d.wait_tools("theirs");
    assert_eq!(mine.owner, USER);
    assert_eq!(theirs.owner, "root");

    // Anyone who reaches the socket may look.
    let o = as_user(&["--json", "status"]);
    assert!(o.ok(), "{o:?}");
    let vms: Vec<VmStatus> = serde_json::from_str(&o.stdout).unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["mine", "theirs"]);

    // Not touch.
    for args in [
        &["stop", "theirs"][..],
        &["stop", "-f", "theirs"],
        &["pause", "theirs"],
        &["unpause", "theirs"],
        &["start", "theirs"],
        &["reload"],
        &["load", "/dev/null"],
        &["reset"],
        &["log", "verbose"],
        &["start", "-b", &tools, "-m", "32M", "adhoc"],
    ] {
        let o = as_user(args);
        assert_eq!(o.code, Some(1), "vmctl {args:?} as {USER}: {o:?}");
        assert!(
            o.stderr.contains("permission denied"),
            "vmctl {args:?} as {USER}: {o:?}"
        );
    }
    // The console of root's VM: its pty is root's, 0660.
    let o = as_user(&["console", "theirs"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.to_lowercase().contains("permission denied"),
        "{o:?}"
    );
    let theirs_now = d.vm("theirs");
    assert_eq!(theirs_now.state, VmState::Running);
    assert_eq!(theirs_now.pid, theirs.pid);
    assert!(d.status().iter().all(|v| v.name != "adhoc"));

    // Its own VM: console (stdin at EOF ends the session at once), pause,
    // unpause, stop, start.
    let o = as_user(&["console", "mine"]);
    assert!(o.ok(), "console mine as {USER}: {o:?}");
    assert!(o.stdout.contains("Connected to /dev/pts/"), "{o:?}");
    let o = as_user(&["pause", "mine"]);
    assert!(o.ok(), "{o:?}");
    assert_eq!(d.vm("mine").state, VmState::Paused);
    let o = as_user(&["unpause", "mine"]);
    assert!(o.ok(), "{o:?}");
    assert_eq!(d.vm("mine").state, VmState::Running);
    let o = as_user(&["stop", "-w", "mine"]);
    assert!(o.ok(), "{o:?}");
    let m = d.vm("mine");
    assert_eq!(m.state, VmState::Stopped);
    assert_eq!(m.last_exit.as_deref(), Some("halted by guest tools"));
    assert!(!process_exists(mine.pid.unwrap()));
    let o = as_user(&["start", "mine"]);
    assert!(o.ok(), "{o:?}");
    d.wait_running("mine");
    // Though not with other settings than the configured ones.
    let o = as_user(&["stop", "-f", "-w", "mine"]);
    assert!(o.ok(), "{o:?}");
    let o = as_user(&["start", "-m", "64M", "mine"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("permission denied"), "{o:?}");

    // Root may do all of it.
    d.vmctl_ok(&["pause", "theirs"]);
    d.vmctl_ok(&["unpause", "theirs"]);
    d.vmctl_ok(&["stop", "-w", "theirs"]);
    assert_eq!(d.vm("theirs").state, VmState::Stopped);
    d.vmctl_ok(&["start", "mine"]);
    d.wait_running("mine");
    d.vmctl_ok(&["stop", "-f", "-w", "mine"]);
    d.vmctl_ok(&["reload"]);
}

/// An unprivileged user's instance may have disks only the user could
/// read and write: the VM process opens them as root.
#[test]
fn instance_disks_must_be_the_users_own() {
    if !kvm_or_skip() {
        return;
    }
    if !is_root() {
        eprintln!("skipping: creating a user and acting as it needs root");
        return;
    }
    let (uid, gid) = test_user();
    let tools = guest("tools");
    let conf = format!(
        r#"socket owner {USER}
vm "base" {{
	disable
	kernel "{tools}"
	memory 32M
	allow instance {{ disk, owner {USER} }}
}}
"#
    );
    let d = TestDaemon::start(&conf);
    let as_user = user_vmctl(&d, uid, gid);
    use std::os::unix::fs::PermissionsExt;
    let secret = d.dir.join("root.img");
    std::fs::File::create(&secret)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let own = d.dir.join("own.img");
    std::fs::File::create(&own)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&own, Some(uid), Some(gid)).unwrap();
    // The test directory must be searchable by the user for its paths.
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    let o = as_user(&["start", "-t", "base", "-d", secret.to_str().unwrap(), "i1"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(o.stderr.contains("permission denied"), "{o:?}");
    assert!(o.stderr.contains("root.img"), "{o:?}");

    let o = as_user(&["start", "-t", "base", "-d", own.to_str().unwrap(), "i2"]);
    assert!(o.ok(), "{o:?}\n{}", d.log());
    let st = d.vmctl_ok(&["status", "i2"]);
    assert!(st.stdout.contains("own.img"), "{st:?}");
    d.vmctl_ok(&["stop", "-f", "i2"]);
}
