//! vmt's command line, in-process, against the host's real state machine
//! (`guestrpc::host`) through a fake vCPU: what it prints, its exit
//! status, and what the host ends up with.

use guestrpc::backdoor::vmx_type;
use guestrpc::client::{Backdoor, Channel};
use guestrpc::proto::{MAX_CHANNELS, PROTO_RPCI, PROTO_TCLO};
use guestrpc::testing::{FakeVcpu, NoBackdoor};
use vmt::cli::{self, Command, Info};
use vmt::detect::{self, Via, VMWARE_SIGNATURE};

/// Runs `command` as the binary does after its checks: detection, then
/// the command. Returns (exit status, stdout, stderr).
fn vmt(bd: &mut impl Backdoor, command: Command) -> (u8, String, String) {
    let host = detect::host(None, bd).expect("a VM");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run(&command, &host, bd, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn rpc(text: &str) -> Command {
    Command::Rpc {
        text: text.to_owned(),
    }
}

fn get(key: &str) -> Command {
    Command::Info(Info::Get {
        key: key.to_owned(),
    })
}

fn set(key: &str, value: &str) -> Command {
    Command::Info(Info::Set {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

#[test]
fn checkvm_prints_version_and_product() {
    let mut vm = FakeVcpu::new();
    let (code, out, err) = vmt(&mut vm, Command::Checkvm { product: false });
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "VMware software version 6 (good)\n", "")
    );
    let (code, out, _) = vmt(&mut vm, Command::Checkvm { product: true });
    assert_eq!((code, out.as_str()), (0, "ESX Server\n"));
    vm.platform.vmx_type = vmx_type::WORKSTATION;
    let (_, out, _) = vmt(&mut vm, Command::Checkvm { product: true });
    assert_eq!(out, "Workstation\n");
}

#[test]
fn detection_by_signature_or_backdoor() {
    let mut vm = FakeVcpu::new();
    let host = detect::host(Some(*VMWARE_SIGNATURE), &mut vm).unwrap();
    assert_eq!(host.via, Via::Cpuid);
    // PVM: user-space CPUID shows the host machine's KVM leaves.
    let host = detect::host(Some(*b"KVMKVMKVM\0\0\0"), &mut vm).unwrap();
    assert_eq!(host.via, Via::Backdoor);
    assert_eq!(host.version.version, 6);
    assert_eq!(detect::host(None, &mut vm).unwrap().via, Via::Backdoor);
}

#[test]
fn not_a_vm_is_one_clear_line() {
    let e = detect::host(None, &mut NoBackdoor).unwrap_err();
    assert_eq!(
        e.to_string(),
        "not running in a VMware virtual machine (no hypervisor, no VMware backdoor)"
    );
    let e = detect::host(Some(*b"KVMKVMKVM\0\0\0"), &mut NoBackdoor).unwrap_err();
    assert_eq!(
        e.to_string(),
        "not running in a VMware virtual machine (hypervisor 'KVMKVMKVM', no VMware backdoor)"
    );
    let e = detect::host(Some(*VMWARE_SIGNATURE), &mut NoBackdoor).unwrap_err();
    assert!(e.to_string().contains("CPUID says VMware"), "{e}");
}

#[test]
fn rpc_prints_the_reply_like_rpctool() {
    let mut vm = FakeVcpu::new();
    let (code, out, err) = vmt(&mut vm, rpc("info-set guestinfo.foo bar baz"));
    assert_eq!((code, out.as_str(), err.as_str()), (0, "\n", ""));
    let (code, out, err) = vmt(&mut vm, rpc("info-get guestinfo.foo"));
    assert_eq!((code, out.as_str(), err.as_str()), (0, "bar baz\n", ""));
    let (code, out, err) = vmt(&mut vm, rpc("no-such-request"));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", "vmt: Unknown command\n")
    );
    // One channel per request, closed after it.
    assert_eq!(vm.channels.open_count(), 0);
}

#[test]
fn info_set_and_get_round_trip() {
    for lb_send in [false, true] {
        let mut vm = FakeVcpu::new();
        vm.lb_send = lb_send;
        let (code, out, err) = vmt(&mut vm, set("k", "v with spaces"));
        assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
        assert_eq!(vm.tools.get_guestinfo("k"), Some(&b"v with spaces"[..]));
        // The prefix may be given.
        vmt(&mut vm, set("guestinfo.k2", "two"));
        assert_eq!(vm.tools.get_guestinfo("k2"), Some(&b"two"[..]));

        vm.tools
            .set_guestinfo("fromhost", b"set by the host")
            .unwrap();
        let (code, out, _) = vmt(&mut vm, get("fromhost"));
        assert_eq!((code, out.as_str()), (0, "set by the host\n"));
        let (_, out, _) = vmt(&mut vm, get("guestinfo.k"));
        assert_eq!(out, "v with spaces\n");

        // An empty value is a value.
        vmt(&mut vm, set("empty", ""));
        let (code, out, _) = vmt(&mut vm, get("empty"));
        assert_eq!((code, out.as_str()), (0, "\n"));

        // Near the largest message, through whichever port the host offers.
        let big = "x".repeat(60_000);
        assert_eq!(vmt(&mut vm, set("big", &big)).0, 0);
        let (code, out, _) = vmt(&mut vm, get("big"));
        assert_eq!((code, out.len()), (0, big.len() + 1));
        assert_eq!(vm.channels.open_count(), 0);
    }
}

#[test]
fn missing_key_fails_with_the_hosts_words() {
    let mut vm = FakeVcpu::new();
    let (code, out, err) = vmt(&mut vm, get("nosuch"));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", "vmt: info get nosuch: No value found\n")
    );
}

#[test]
fn bad_keys_are_refused_before_the_host_sees_them() {
    let mut vm = FakeVcpu::new();
    let host = detect::host(None, &mut vm).unwrap();
    let before = vm.exits();
    for key in ["", "guestinfo.", "a b", "a\nb"] {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = cli::run(&set(key, "v"), &host, &mut vm, &mut out, &mut err);
        assert_eq!(code, 1, "{key:?}");
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.starts_with("vmt: info set ") && err.contains("bad key"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err:?}");
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    cli::run(&get("a\nb"), &host, &mut vm, &mut out, &mut err);
    assert_eq!(
        String::from_utf8(err).unwrap(),
        "vmt: info get a\\nb: bad key 'a\\nb': white space or control characters\n"
    );
    assert_eq!(vm.exits(), before);
}

/// A host with every channel taken refuses OPEN (with and without the
/// cookie flag): a clear error, exit 1, and nothing left behind.
#[test]
fn a_host_that_refuses_open() {
    let mut vm = FakeVcpu::new();
    let taken: Vec<Channel> = (0..MAX_CHANNELS)
        .map(|i| {
            let proto = if i % 2 == 0 { PROTO_RPCI } else { PROTO_TCLO };
            Channel::open(&mut vm, proto).expect("a free channel")
        })
        .collect();
    for command in [rpc("info-get guestinfo.x"), get("x"), set("x", "y")] {
        let (code, out, err) = vmt(&mut vm, command.clone());
        assert_eq!(code, 1, "{command:?}");
        assert_eq!(out, "");
        assert!(
            err.starts_with("vmt: ") && err.ends_with(": cannot open a GuestRPC channel\n")
                || err == "vmt: cannot open a GuestRPC channel\n",
            "{err:?}"
        );
    }
    assert_eq!(vm.tools.get_guestinfo("x"), None);
    // checkvm needs no channel.
    assert_eq!(vmt(&mut vm, Command::Checkvm { product: false }).0, 0);
    for c in taken {
        c.close(&mut vm).unwrap();
    }
    assert_eq!(vmt(&mut vm, set("x", "y")).0, 0);
}

/// The command line as clap parses it.
#[test]
fn command_line() {
    use clap::Parser;
    let parse = |args: &[&str]| cli::Cli::try_parse_from(args).map(|c| c.command.unwrap());
    assert_eq!(
        parse(&["vmt", "rpc", "info-get guestinfo.a"]).unwrap(),
        rpc("info-get guestinfo.a")
    );
    assert_eq!(
        parse(&["vmt", "info", "set", "k", "a b"]).unwrap(),
        set("k", "a b")
    );
    assert_eq!(parse(&["vmt", "info", "get", "k"]).unwrap(), get("k"));
    assert_eq!(
        parse(&["vmt", "checkvm", "-p"]).unwrap(),
        Command::Checkvm { product: true }
    );
    // No command: the daemon; -d keeps it in the foreground.
    let daemon = cli::Cli::try_parse_from(["vmt", "-d"]).unwrap();
    assert!(daemon.foreground && daemon.command.is_none());
    let daemon = cli::Cli::try_parse_from(["vmt"]).unwrap();
    assert!(!daemon.foreground && daemon.command.is_none());
    assert!(cli::Cli::try_parse_from(["vmt", "-d", "checkvm"]).is_err());
    assert!(parse(&["vmt", "info", "set", "k"]).is_err());
    assert!(parse(&["vmt", "rpc"]).is_err());
}

/// `vmt -n -f FILE`: `file:line: message` per error and exit 1, or
/// `configuration OK`; flags override the file.
#[test]
fn configuration_file_and_flags() {
    use clap::Parser;
    use std::time::Duration;
    use vmt::config::LogLevel;

    let dir = std::env::temp_dir().join(format!("vmt-cli-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vmt.conf");
    let f = file.to_str().unwrap();
    let check = |args: &[&str]| {
        let cli = cli::Cli::try_parse_from(args).unwrap();
        let mut err = Vec::new();
        let code = cli.check_config(&mut err);
        (code, String::from_utf8(err).unwrap())
    };

    std::fs::write(&file, "poll_interval 2\nclock_sync_period x\nfoo bar\n").unwrap();
    assert_eq!(
        check(&["vmt", "-n", "-f", f]),
        (
            1,
            format!(
                "{f}:2: clock_sync_period: 'x' is not a number of seconds\n\
                 {f}:3: unknown keyword 'foo'\n"
            )
        )
    );
    std::fs::write(
        &file,
        "# ok\nclock_sync_period 120\npoll_interval 2\nhalt_command /bin/true\n",
    )
    .unwrap();
    assert_eq!(
        check(&["vmt", "-n", "-f", f]),
        (0, "configuration OK\n".into())
    );
    let missing = dir.join("nope.conf");
    let (code, err) = check(&["vmt", "-n", "-f", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!("{}: ", missing.display())),
        "{err}"
    );

    let c = cli::Cli::try_parse_from(["vmt", "-d", "-f", f]).unwrap();
    let conf = c.config().unwrap();
    assert_eq!(conf.settings.clock_sync_period, Duration::from_secs(120));
    assert_eq!(conf.settings.poll_interval, Duration::from_secs(2));
    assert_eq!(
        conf.halt_command.as_deref(),
        Some(&["/bin/true".to_owned()][..])
    );
    assert_eq!(conf.reboot_command, None, "the init's way");
    assert_eq!(conf.log_level, LogLevel::Info);
    let c = cli::Cli::try_parse_from(["vmt", "-d", "-f", f, "-p", "0", "-i", "0.5", "-v"]).unwrap();
    let conf = c.config().unwrap();
    assert_eq!(conf.settings.clock_sync_period, Duration::ZERO);
    assert_eq!(conf.settings.poll_interval, Duration::from_millis(500));
    assert_eq!(conf.log_level, LogLevel::Debug);
    assert_eq!(
        conf.halt_command.as_deref(),
        Some(&["/bin/true".to_owned()][..]),
        "from the file still"
    );
    // Bad flag values are usage errors.
    assert!(cli::Cli::try_parse_from(["vmt", "-d", "-p", "-1"]).is_err());
    assert!(cli::Cli::try_parse_from(["vmt", "-d", "-i", "0"]).is_err());
    // The flags are the daemon's.
    assert!(cli::Cli::try_parse_from(["vmt", "-n", "checkvm"]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The real binary's `-n`: no root and no VM needed, errors on standard
/// error, exit 1; and the daemon refuses to start on a bad file before it
/// touches the backdoor.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn binary_checks_its_configuration() {
    use std::process::Command as Cmd;
    let dir = std::env::temp_dir().join(format!("vmt-bin-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vmt.conf");
    let f = file.to_str().unwrap();
    std::fs::write(&file, "log_level loud\n").unwrap();
    for args in [&["-n", "-f", f][..], &["-d", "-f", f][..]] {
        let out = Cmd::new(env!("CARGO_BIN_EXE_vmt"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{f}:1: log_level: log level 'loud' is not one of error, info, debug\n")
        );
        assert!(out.stdout.is_empty());
    }
    std::fs::write(&file, "log_level error\n").unwrap();
    let out = Cmd::new(env!("CARGO_BIN_EXE_vmt"))
        .args(["-n", "-f", f])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "configuration OK\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
