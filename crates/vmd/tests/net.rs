//! Networks under the daemon, each test inside a network namespace of its
//! own (vmd runs in it; never the host's interfaces): a `local interface`
//! whose guest gets its address from the VM process's DHCP server and
//! echoes the host; two guests on one switch (a bridge vmd creates, and
//! removes at exit, leaving alone one it found); `locked lladdr` dropping a
//! guest's spoofed frames; a switch on a link that is not a bridge; a tap
//! name in use; the guest-tools guest reporting the address our DHCP gave
//! it, and answering pings and UDP on it.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

/// Sends `msg` to `to` from `sock` until it comes back (every 200 ms, at
/// most `timeout`); true if it did.
fn echoed(sock: &UdpSocket, to: &str, msg: &[u8], timeout: Duration) -> bool {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // Errors (ICMP unreachable while the guest is not up yet) are
        // reported on the socket: try again.
        let _ = sock.send_to(msg, to);
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == msg => return true,
            r => eprintln!("echo from {to}: {r:?}"),
        }
    }
    false
}

/// Datagrams arriving on `sock` until `quiet` passes without one.
fn count_until_quiet(sock: &UdpSocket, quiet: Duration) -> usize {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while sock.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

fn stopped(d: &TestDaemon, name: &str, timeout: Duration) -> api::v1::VmStatus {
    d.wait_vm(name, "stopped", timeout, |v| {
        v.pid.is_none() && v.last_exit.is_some()
    })
}

#[test]
fn a_local_interface_gets_its_address_by_dhcp_and_echoes_the_host() {
    if !kvm_or_skip() {
        return;
    }
    let Some(ns) = Netns::new("local") else {
        return;
    };
    let dir = fresh_dir();
    let conf = format!(
        "vm \"web1\" {{\n\tdisable\n\tkernel \"{net}\"\n\tmemory 32M\n\
         \tcmdline \"dhcp=1 echo=7777 timeout_ms=10000\"\n\tlocal interface\n}}\n",
        net = guest("net"),
    );
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let d = TestDaemon::start_in_netns(dir, &ns);
    d.vmctl_ok(&["start", "web1"]);
    let vm = d.wait_running("web1");
    // VM 1, interface 0: OpenBSD's addressing gives the host side
    // 100.64.1.2/31 and the guest 100.64.1.3.
    let st = d.vmctl_ok(&["status", "web1"]);
    let line = st
        .stdout
        .lines()
        .find(|l| l.starts_with("if0 "))
        .unwrap_or_else(|| panic!("no interface line: {st:?}"))
        .to_owned();
    assert!(
        line.ends_with(" local 100.64.1.2/31 guest 100.64.1.3"),
        "{line}"
    );
    let tap = line.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(vm.interfaces.len(), 1, "{vm:?}");
    assert_eq!(vm.interfaces[0].tap, tap);
    assert!(
        ns.ip(&["-o", "addr", "show", "dev", &tap])
            .contains("inet 100.64.1.2/31"),
        "the host side's address is on the tap"
    );
    // The guest only knows 100.64.1.3 if our DHCP server gave it.
    let sock = ns.udp("100.64.1.2:0");
    assert!(
        echoed(&sock, "100.64.1.3:7777", b"one", Duration::from_secs(30)),
        "no echo from the guest's DHCP address:\n{}",
        d.log()
    );
    assert!(echoed(
        &sock,
        "100.64.1.3:7777",
        b"two",
        Duration::from_secs(10)
    ));
    // The guest powers off after 10 s without a datagram (not after a
    // count: `echoed` resends while it waits, so a slow echo is echoed
    // twice).
    let vm = stopped(&d, "web1", Duration::from_secs(30));
    assert_eq!(vm.last_exit.as_deref(), Some("powered off"), "{vm:?}");
    assert!(vm.interfaces.is_empty(), "{vm:?}");
    // The tap went with the VM process.
    assert!(
        poll(Duration::from_secs(5), || ns.link(&tap).is_none()),
        "{tap} outlived its VM"
    );
}

#[test]
fn guests_on_one_switch_reach_each_other_and_locked_lladdr_drops_spoofed_frames() {
    if !kvm_or_skip() {
        return;
    }
    let Some(ns) = Netns::new("switch") else {
        return;
    };
    // One bridge vmd finds (and must leave), one it creates (and removes).
    ns.ip(&["link", "add", "brpre", "type", "bridge"]);
    let dir = fresh_dir();
    let vm = |name: &str, cmdline: &str, iface: &str| {
        format!(
            "vm \"{name}\" {{\n\tdisable\n\tkernel \"{net}\"\n\tmemory 32M\n\
             \tcmdline \"{cmdline}\"\n\tinterface {{ {iface} }}\n}}\n",
            net = guest("net"),
        )
    };
    let conf = [
        "switch \"lan\" {\n\tinterface brlan\n}\n".to_owned(),
        "switch \"pre\" {\n\tinterface brpre\n\tlocked lladdr\n}\n".to_owned(),
        vm(
            "a",
            "ip=10.9.0.1/24 echo=7000 count=4 timeout_ms=60000",
            "switch \"lan\"",
        ),
        vm(
            "b",
            "ip=10.9.0.2/24 blast=3 to=10.9.0.1:7000 size=100",
            "switch \"lan\"",
        ),
        // Spoofing guests: on a locked interface, on a locked switch, and
        // (the control) unlocked.
        vm(
            "spoof-if",
            "ip=10.9.0.5/24 srcmac=02:00:00:00:00:99 blast=5 to=10.9.0.254:7100 size=64 timeout_ms=2000",
            "switch \"lan\", locked lladdr",
        ),
        vm(
            "spoof-sw",
            "ip=10.8.0.5/24 srcmac=02:00:00:00:00:98 blast=5 to=10.8.0.254:7100 size=64 timeout_ms=2000",
            "switch \"pre\"",
        ),
        vm(
            "spoof-open",
            "ip=10.9.0.6/24 srcmac=02:00:00:00:00:97 blast=5 to=10.9.0.254:7100 size=64 timeout_ms=2000",
            "switch \"lan\"",
        ),
    ]
    .concat();
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let mut d = TestDaemon::start_in_netns(dir, &ns);
    assert!(
        poll(Duration::from_secs(10), || ns
            .link("brlan")
            .is_some_and(|l| l.contains("bridge"))),
        "vmd did not create brlan:\n{}",
        d.log()
    );
    ns.ip(&["addr", "add", "10.9.0.254/24", "dev", "brlan"]);
    ns.ip(&["addr", "add", "10.8.0.254/24", "dev", "brpre"]);
    ns.ip(&["link", "set", "brpre", "up"]);

    // a listens; the host reaches it through the bridge...
    d.vmctl_ok(&["start", "a"]);
    let a = d.wait_running("a");
    assert_eq!(a.interfaces[0].bridge.as_deref(), Some("brlan"), "{a:?}");
    assert_eq!(
        ns.link(&a.interfaces[0].tap)
            .map(|l| l.contains("master brlan")),
        Some(true),
        "a's tap is a port of brlan"
    );
    let sock = ns.udp("10.9.0.254:0");
    assert!(
        echoed(&sock, "10.9.0.1:7000", b"host", Duration::from_secs(30)),
        "no echo from a:\n{}",
        d.log()
    );
    // ...then b blasts it three datagrams: a has its count of four and
    // powers off only if all of b's came across the switch (b resolved a
    // by ARP, a answered: frames went both ways).
    d.vmctl_ok(&["start", "b"]);
    let a = stopped(&d, "a", Duration::from_secs(20));
    assert_eq!(a.last_exit.as_deref(), Some("powered off"), "{a:?}");
    let b = stopped(&d, "b", Duration::from_secs(20));
    assert_eq!(b.last_exit.as_deref(), Some("powered off"), "{b:?}");

    // Spoofed source MACs: dropped on a locked interface and on a locked
    // switch's ports; the unlocked guest's datagrams arrive.
    let lan = ns.udp("10.9.0.254:7100");
    let pre = ns.udp("10.8.0.254:7100");
    for name in ["spoof-if", "spoof-sw"] {
        d.vmctl_ok(&["start", name]);
        let v = d.wait_running(name);
        assert!(v.interfaces[0].locked, "{v:?}");
        stopped(&d, name, Duration::from_secs(20));
    }
    assert_eq!(count_until_quiet(&lan, Duration::from_millis(500)), 0);
    assert_eq!(count_until_quiet(&pre, Duration::from_millis(500)), 0);
    d.vmctl_ok(&["start", "spoof-open"]);
    assert!(!d.wait_running("spoof-open").interfaces[0].locked);
    stopped(&d, "spoof-open", Duration::from_secs(20));
    assert_eq!(count_until_quiet(&lan, Duration::from_millis(500)), 5);

    // At exit vmd removes the bridge it made, not the one it found.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).is_some());
    assert!(ns.link("brlan").is_none(), "brlan is still there");
    assert!(ns.link("brpre").is_some(), "brpre was removed");
}

#[test]
fn a_switch_on_a_link_that_is_not_a_bridge_and_a_tap_in_use_are_refused() {
    if !kvm_or_skip() {
        return;
    }
    let Some(ns) = Netns::new("refuse") else {
        return;
    };
    ns.ip(&[
        "link", "add", "notbr", "type", "veth", "peer", "name", "notbr-p",
    ]);
    let dir = fresh_dir();
    let conf = format!(
        "switch \"bad\" {{\n\tinterface notbr\n}}\n\
         vm \"on-bad\" {{\n\tdisable\n\tkernel \"{net}\"\n\tmemory 32M\n\tinterface {{ switch \"bad\" }}\n}}\n\
         vm \"t1\" {{\n\tdisable\n\tkernel \"{net}\"\n\tmemory 32M\n\tcmdline \"ip=10.7.0.1/24 echo=1 timeout_ms=60000\"\n\tinterface tap7\n}}\n\
         vm \"t2\" {{\n\tdisable\n\tkernel \"{net}\"\n\tmemory 32M\n\tinterface tap7\n}}\n",
        net = guest("net"),
    );
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let d = TestDaemon::start_in_netns(dir, &ns);
    let o = d.vmctl(&["start", "on-bad"]);
    assert!(!o.ok(), "{o:?}");
    assert!(
        o.stderr.contains("notbr exists and is not a bridge"),
        "{o:?}"
    );
    let l = ns.link("notbr").expect("the veth is left alone");
    assert!(l.contains("veth") && !l.contains("master"), "{l}");
    assert!(!l.contains(",UP"), "{l}");

    d.vmctl_ok(&["start", "t1"]);
    assert_eq!(d.wait_running("t1").interfaces[0].tap, "tap7");
    let o = d.vmctl(&["start", "t2"]);
    assert!(!o.ok(), "{o:?}");
    assert!(o.stderr.contains("tap tap7 is in use"), "{o:?}");
    // t1 is unharmed.
    assert!(d.vm("t1").pid.is_some());
}

/// The guest-tools test guest on a local interface (`dhcp=1`): the IP that
/// `vmctl status` shows is the one it reports through its tools, which is
/// the one our DHCP server gave it; the host pings it and it echoes UDP on
/// that address while idling in its TCLO loop; `stop -w` halts it through
/// its tools.
#[test]
fn the_tools_guest_reports_its_dhcp_address_and_answers_on_it() {
    if !kvm_or_skip() {
        return;
    }
    let Some(ns) = Netns::new("tools") else {
        return;
    };
    let dir = fresh_dir();
    let conf = format!(
        "vm \"web1\" {{\n\tdisable\n\tkernel \"{tools}\"\n\tmemory 32M\n\
         \tcmdline \"hostname=web1.test dhcp=1 echo=7 poll_ms=200 clock_sync=0\"\n\
         \tlocal interface\n}}\n",
        tools = guest("tools"),
    );
    std::fs::write(dir.join("vm.conf"), conf).unwrap();
    let d = TestDaemon::start_in_netns(dir, &ns);
    d.vmctl_ok(&["start", "web1"]);
    let vm = d.wait_vm(
        "web1",
        "hostname and IP from the guest's tools",
        Duration::from_secs(30),
        |v| v.hostname.is_some() && v.ip.is_some(),
    );
    assert_eq!(vm.hostname.as_deref(), Some("web1.test"), "{vm:#?}");
    // VM 1, interface 0: the host side 100.64.1.2/31, the guest 100.64.1.3,
    // which the guest only knows from our DHCP server.
    assert_eq!(vm.interfaces.len(), 1, "{vm:#?}");
    let guest_ip = vm.interfaces[0].guest.clone().expect("a local interface");
    assert_eq!(guest_ip, "100.64.1.3", "{vm:#?}");
    assert_eq!(vm.ip.as_deref(), Some(guest_ip.as_str()), "{vm:#?}");
    assert_eq!(
        vm.interfaces[0].local.as_deref(),
        Some("100.64.1.2/31"),
        "{vm:#?}"
    );
    let o = d.vmctl_ok(&["status", "web1"]);
    assert!(o.stdout.contains(" 100.64.1.3"), "{o:?}");

    // The guest answers once a tick (200 ms): a ping's 2 s is plenty.
    let ping = || {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", ns.name(), "ping", "-c1", "-W2", &guest_ip]);
        run_bounded(c, Duration::from_secs(10))
    };
    let o = ping();
    assert!(
        o.ok(),
        "the host pinging the guest: {o:?}\nvmd:\n{}",
        d.log()
    );
    let sock = ns.udp("100.64.1.2:0");
    assert!(
        echoed(
            &sock,
            &format!("{guest_ip}:7"),
            b"hello tools",
            Duration::from_secs(10)
        ),
        "no UDP echo from the tools guest:\n{}",
        d.log()
    );

    let pid = vm.pid.expect("a pid");
    d.vmctl_ok(&["stop", "-w", "web1"]);
    assert!(!process_exists(pid), "vmm {pid} still exists after stop -w");
    let vm = d.vm("web1");
    assert_eq!(
        vm.last_exit.as_deref(),
        Some("halted by guest tools"),
        "{vm:#?}"
    );
    assert!(vm.interfaces.is_empty(), "{vm:?}");
}
