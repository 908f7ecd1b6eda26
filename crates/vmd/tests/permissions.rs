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

/// Every file a user names for his instance is opened with his rights,
/// by the kernel's own checks, not by a look at mode bits: a root-only
/// file is refused at once (403), and so are a readable file in a
/// directory he may not search and a qcow2 image of his own whose base
/// image is root's, which only opening them as him can tell. A kernel he
/// may read boots (reopened by descriptor at every reset).
#[test]
fn instance_files_open_with_the_users_rights() {
    if !kvm_or_skip() {
        return;
    }
    if !is_root() {
        eprintln!("skipping: creating a user and acting as it needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let (uid, gid) = test_user();
    let tools = guest("tools");
    let conf = format!(
        r#"socket owner {USER}
vm "base" {{
	disable
	kernel "{tools}"
	memory 32M
	allow instance {{ boot, disk, owner {USER} }}
}}
"#
    );
    let d = TestDaemon::start(&conf);
    let as_user = user_vmctl(&d, uid, gid);
    mode(&d.dir, 0o755);
    let refused = |args: &[&str], what: &str| {
        let o = as_user(args);
        assert_eq!(o.code, Some(1), "{args:?}: {o:?}");
        assert!(
            o.stderr.to_lowercase().contains("permission denied") && o.stderr.contains(what),
            "{args:?}: {o:?}\n{}",
            d.log()
        );
    };

    // Root's secret as an initial ramdisk, as the issue found it.
    refused(
        &["start", "-t", "base", "--initrd", "/etc/shadow", "i1"],
        "/etc/shadow",
    );
    // A root-only copy of the kernel.
    let private_kernel = d.dir.join("kernel-0600");
    std::fs::copy(&tools, &private_kernel).unwrap();
    mode(&private_kernel, 0o600);
    refused(
        &[
            "start",
            "-t",
            "base",
            "-b",
            private_kernel.to_str().unwrap(),
            "i2",
        ],
        "kernel-0600",
    );
    // A readable kernel behind a directory only root may search: its mode
    // bits say yes; opening it as the user says no.
    let hidden = d.dir.join("root-only");
    std::fs::create_dir(&hidden).unwrap();
    let hidden_kernel = hidden.join("kernel");
    std::fs::copy(&tools, &hidden_kernel).unwrap();
    mode(&hidden_kernel, 0o644);
    mode(&hidden, 0o700);
    refused(
        &[
            "start",
            "-t",
            "base",
            "-b",
            hidden_kernel.to_str().unwrap(),
            "i3",
        ],
        "root-only/kernel",
    );
    // The user's own overlay on root's image: the top is his, the base
    // image it names is not.
    let root_base = d.dir.join("root-base.img");
    std::fs::File::create(&root_base)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    mode(&root_base, 0o600);
    let overlay = d.dir.join("mine.qcow2");
    d.vmctl_ok(&[
        "create",
        "-b",
        root_base.to_str().unwrap(),
        overlay.to_str().unwrap(),
    ]);
    std::os::unix::fs::chown(&overlay, Some(uid), Some(gid)).unwrap();
    refused(
        &["start", "-t", "base", "-d", overlay.to_str().unwrap(), "i4"],
        "root-base.img",
    );
    for i in ["i1", "i2", "i3", "i4"] {
        let st = d.vmctl(&["status", i]);
        assert!(!st.stdout.contains(" running"), "{i}: {st:?}");
    }

    // A kernel the user may read starts, and its VM process opened it
    // with his rights.
    let own_kernel = d.dir.join("kernel-0644");
    std::fs::copy(&tools, &own_kernel).unwrap();
    mode(&own_kernel, 0o644);
    let o = as_user(&[
        "start",
        "-t",
        "base",
        "-b",
        own_kernel.to_str().unwrap(),
        "i5",
    ]);
    assert!(o.ok(), "{o:?}\n{}", d.log());
    let vm = d.wait_running("i5");
    let pid = vm.pid.expect("a pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        args.iter()
            .any(|a| a.starts_with(&format!("--open-as={uid}:{gid}"))),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a == "--user-files=kernel"), "{args:?}");
    d.wait_tools("i5");
    d.vmctl_ok(&["stop", "-f", "-w", "i5"]);
}

/// An instance a user starts is his (vmd.8), not its parent's owner's: he
/// may stop it and status names him. An instance of an instance needs
/// `allow instance { instance }` in the (inherited) instance options, as
/// in vm.conf.
#[test]
fn instances_belong_to_their_creator() {
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
	allow instance {{ owner {USER} }}
}}
vm "tmpl" {{
	disable
	kernel "{tools}"
	memory 32M
	allow instance {{ instance, owner {USER} }}
}}
"#
    );
    let d = TestDaemon::start(&conf);
    let as_user = user_vmctl(&d, uid, gid);
    let o = as_user(&["start", "-t", "base", "i1"]);
    assert!(o.ok(), "{o:?}\n{}", d.log());
    assert_eq!(d.vm("i1").owner, USER, "{:#?}", d.vm("i1"));
    // base has no owner: before, nobody but root could stop i1.
    let o = as_user(&["stop", "-f", "-w", "i1"]);
    assert!(o.ok(), "{o:?}\n{}", d.log());

    let o = as_user(&["start", "-t", "i1", "i2"]);
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr
            .contains("vm i1: is an instance and does not allow instance"),
        "{o:?}"
    );
    let o = d.vmctl(&["start", "-t", "i1", "i2"]);
    assert_eq!(o.code, Some(1), "root too, as in vm.conf: {o:?}");

    let o = as_user(&["start", "-t", "tmpl", "j1"]);
    assert!(o.ok(), "{o:?}\n{}", d.log());
    let o = as_user(&["start", "-t", "j1", "j2"]);
    assert!(o.ok(), "{o:?}\n{}", d.log());
    assert_eq!(d.vm("j2").owner, USER);
    for vm in ["j1", "j2"] {
        let o = as_user(&["stop", "-f", "-w", vm]);
        assert!(o.ok(), "{o:?}\n{}", d.log());
    }
}
