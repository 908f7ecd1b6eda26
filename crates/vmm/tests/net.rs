//! virtio-net under the `vmm` binary, on a tap inside a network namespace
//! the test creates (never the host's own interfaces): the `net` test
//! guest (a CPL3 driver also proven on QEMU's virtio-net-pci) gets its
//! address from the VM process's built-in DHCP server on a local
//! interface, and echoes UDP datagrams a host socket sends it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A network namespace, deleted on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let name = format!("vmmtest-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("CI").ok().as_deref() != Some("true"),
                "network namespaces (ip netns, root) are required under CI"
            );
            eprintln!("skipping: cannot create a network namespace");
            return None;
        }
        Some(Netns(name))
    }

    /// Runs `args` inside the namespace; panics if it fails.
    fn run(&self, args: &[&str]) {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {o:?}");
    }

    fn cmd(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn a_local_interface_gives_the_guest_its_address_by_dhcp_and_udp_flows() {
    if !kvm_or_skip() {
        return;
    }
    let Some(ns) = Netns::new("local") else {
        return;
    };
    // What vmd does for a local interface of VM 1 (OpenBSD's addressing:
    // the host side is the first address of the VM's /31).
    ns.run(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
    ns.run(&["ip", "addr", "add", "100.64.1.2/31", "dev", "tap0"]);
    ns.run(&["ip", "link", "set", "tap0", "up"]);

    let mut c = ns.cmd(std::path::Path::new(env!("CARGO_BIN_EXE_vmm")));
    c.args(["-m", "64M", "-k"])
        .arg(guest("net"))
        .args(["--net", "tap=tap0,local=1:0,hostname=web1"])
        .args(["-a", "dhcp=1 echo=7777 count=3 timeout_ms=20000"]);
    let mut vm = Live::spawn(c);
    let dhcp = vm.wait_for(Duration::from_secs(30), |l| l.starts_with("net: dhcp"));
    assert_eq!(
        dhcp.as_deref(),
        Some("net: dhcp ip 100.64.1.3/31 router 100.64.1.2 server 100.64.1.2"),
        "{}",
        vm.transcript()
    );
    assert!(
        vm.wait_for(Duration::from_secs(10), |l| l
            .starts_with("net: echo port 7777 ready"))
            .is_some(),
        "{}",
        vm.transcript()
    );
    // The host side sends from inside the namespace, three sizes.
    let py = "import socket\n\
              s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
              s.settimeout(5)\n\
              for n in (1, 512, 1400):\n\
              \x20   d = bytes(range(256)) * 6\n\
              \x20   s.sendto(d[:n], ('100.64.1.3', 7777))\n\
              \x20   r, a = s.recvfrom(2000)\n\
              \x20   assert r == d[:n] and a == ('100.64.1.3', 7777), (n, a)\n\
              print('echoed')\n";
    let o = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c", py])
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("echoed"),
        "{o:?}\n{}",
        vm.transcript()
    );
    assert!(
        vm.wait_for(Duration::from_secs(10), |l| l.starts_with("net: done"))
            .is_some(),
        "{}",
        vm.transcript()
    );
    assert!(vm.transcript().contains("net: echoed 3"));
    let _ = wait_timeout(&mut vm.child, Duration::from_secs(10));
}

#[test]
fn bad_interface_settings_are_refused() {
    for (spec, want) in [
        ("mac=fe:e1:ba:00:00:01", "tap=NAME"),
        ("tap=t0,mac=01:00:00:00:00:01", "multicast"),
        ("tap=t0,mac=zz", "six hex bytes"),
        ("tap=t0,local=x", "VMID:IDX"),
        ("tap=t0,speed=10", "unknown interface setting"),
    ] {
        let o = run_guest("hello", &["--net", spec]);
        assert_eq!(o.code(), Some(2), "{spec}: {o:?}");
        assert!(o.stderr.contains(want), "{spec}: {o:?}");
    }
}

/// The built-in DHCP server answers only its guest's MAC: a guest that
/// asks as another (the `net` guest's `srcmac=`, on an interface that is
/// not locked, so its frames do leave the VM) gets no offer. The host
/// side sees the request on the tap, so the silence is the server's.
#[test]
fn the_dhcp_server_ignores_other_macs() {
    if !kvm_or_skip() {
        return;
    }
    let Some(ns) = Netns::new("spoof") else {
        return;
    };
    ns.run(&["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"]);
    ns.run(&["ip", "addr", "add", "100.64.1.2/31", "dev", "tap0"]);
    ns.run(&["ip", "link", "set", "tap0", "up"]);

    // Capture on the tap: the first DHCP request's source MAC and chaddr.
    let py = "import socket, sys\n\
              s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n\
              s.bind(('tap0', 0))\n\
              s.settimeout(30)\n\
              print('listening', flush=True)\n\
              while True:\n\
              \x20   f = s.recv(4096)\n\
              \x20   if len(f) > 42 + 34 and f[12:14] == b'\\x08\\x00' and f[23] == 17 and f[36:38] == b'\\x00\\x43':\n\
              \x20       print('request', f[6:12].hex(), f[42 + 28:42 + 34].hex(), flush=True)\n\
              \x20       break\n";
    let mut cap = ns.cmd(std::path::Path::new("python3"));
    cap.args(["-c", py])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut cap = cap.spawn().unwrap();
    let mut out = std::io::BufReader::new(cap.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "listening");

    let mut c = ns.cmd(std::path::Path::new(env!("CARGO_BIN_EXE_vmm")));
    c.args(["-m", "64M", "-k"])
        .arg(guest("net"))
        .args(["--net", "tap=tap0,local=1:0,hostname=web1"])
        .args(["-a", "dhcp=1 srcmac=02:00:00:00:00:66 timeout_ms=4000"]);
    let mut vm = Live::spawn(c);
    let fail = vm.wait_for(Duration::from_secs(30), |l| {
        l.starts_with("net: dhcp") || l.starts_with("net: FAIL")
    });
    assert!(
        fail.as_deref()
            .is_some_and(|l| l.starts_with("net: FAIL dhcp")),
        "a DHCP request from another MAC was answered: {fail:?}\n{}",
        vm.transcript()
    );
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = cap.kill();
    let _ = cap.wait();
    assert_eq!(
        line.trim(),
        "request 020000000066 020000000066",
        "the spoofed request did not reach the tap"
    );
    let _ = wait_timeout(&mut vm.child, Duration::from_secs(10));
}
