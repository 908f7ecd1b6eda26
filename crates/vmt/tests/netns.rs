//! The NIC reports for real: the daemon with the real Linux system
//! (`getifaddrs`, uname) and the real netlink watcher, in a network
//! namespace this test makes (never the machine's own interfaces), against
//! the host's real state machine through the fake vCPU. An address added,
//! an address removed, a link added: each reaches the host within a second,
//! woken by netlink, not by a poll. (This machine has no `dummy` module:
//! veth pairs.)
//!
//! Needs root (a network namespace); skipped without it, except under
//! `CI=true`, where that is a failure.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use guestrpc::client::Backdoor;
use guestrpc::host::GuestState;
use guestrpc::testing::FakeVcpu;
use vmt::daemon::{self, Daemon};
use vmt::netlink::Watcher;
use vmt::sys::LinuxSystem;

/// The fake vCPU, shared with the check that reads the host's state while
/// the daemon's loop holds the backdoor.
struct Shared(Rc<RefCell<FakeVcpu>>);

impl Backdoor for Shared {
    fn lb(&mut self, regs: &mut guestrpc::Regs) {
        self.0.borrow_mut().lb(regs)
    }
    fn hb_out(&mut self, regs: &mut guestrpc::Regs, data: &[u8]) {
        self.0.borrow_mut().hb_out(regs, data)
    }
    fn hb_in(&mut self, regs: &mut guestrpc::Regs, buf: &mut [u8]) {
        self.0.borrow_mut().hb_in(regs, buf)
    }
}

/// `ip ARGS` (in this thread's namespace); panics if it fails.
fn ip(args: &str) {
    let o = Command::new("ip")
        .args(args.split(' '))
        .output()
        .expect("ip");
    assert!(
        o.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn has_addr(st: &GuestState, nic: &str, addr: IpAddr) -> bool {
    st.nics
        .iter()
        .any(|n| n.mac == nic && n.addrs.iter().any(|a| a.addr == addr))
}

/// A link's MAC, as getifaddrs tells it in this thread's namespace
/// (/sys shows the namespace it was mounted in, not ours).
fn mac_of(link: &str) -> String {
    vmt::sys::nics(&[])
        .unwrap()
        .into_iter()
        .find(|n| n.name == link)
        .unwrap_or_else(|| panic!("no {link}"))
        .mac
}

/// A change made (`ip` commands), and what the host must then show.
type Step = (&'static [&'static str], Box<dyn Fn(&GuestState) -> bool>);

#[test]
fn nic_changes_reach_the_host_within_a_second() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!ci, "CI=true: this test needs root (a network namespace)");
        eprintln!("skipped: needs root for a network namespace");
        return;
    }
    // Its own thread: the namespace is the thread's, and the commands it
    // runs inherit it.
    let t = std::thread::spawn(move || {
        // SAFETY: unshare of this thread's network namespace only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            assert!(!ci, "CI=true: unshare(CLONE_NEWNET): {e}");
            eprintln!("skipped: unshare(CLONE_NEWNET): {e}");
            return;
        }
        in_namespace();
    });
    t.join().unwrap();
}

fn in_namespace() {
    ip("link add vt0 type veth peer name vt1");
    // A container's end: vmtoolsd's default leaves veth* out.
    ip("link add veth9 type veth peer name vt9");
    for l in ["vt0", "vt1", "veth9", "vt9"] {
        ip(&format!("link set {l} up"));
    }
    let (mac0, mac1) = (mac_of("vt0"), mac_of("vt1"));

    let vm = Rc::new(RefCell::new(FakeVcpu::new()));
    let mut bd = Shared(vm.clone());
    let mut d = Daemon::new(LinuxSystem::default());
    let mut watcher = Watcher::open().expect("netlink socket");

    let a = IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7));
    let b = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 1));
    let steps: Vec<Step> = vec![
        (&["addr add 10.9.8.7/24 dev vt0"], {
            let m = mac0.clone();
            Box::new(move |st: &GuestState| has_addr(st, &m, a))
        }),
        (&["addr add 10.9.9.1/24 dev vt1"], {
            let m = mac1.clone();
            Box::new(move |st: &GuestState| has_addr(st, &m, b))
        }),
        (&["addr del 10.9.8.7/24 dev vt0"], {
            let m = mac0.clone();
            Box::new(move |st: &GuestState| !has_addr(st, &m, a))
        }),
        (
            &[
                "link add vt2 type veth peer name vt3",
                "link set vt2 up",
                "link set vt3 up",
            ],
            Box::new(move |st: &GuestState| st.nics.len() == 5),
        ),
    ];

    // The loop as the binary runs it. Its stop check does the test's
    // work: once the start is reported, each step's change, then waiting
    // for the host to show it.
    let start = Instant::now();
    let mut step = 0;
    let mut changed: Option<Instant> = None;
    let mut latencies = Vec::new();
    let mut started = false;
    let mut failure = None;
    daemon::run(
        &mut d,
        &mut bd,
        |t| watcher.wait(t),
        || {
            if step == steps.len() || failure.is_some() {
                return true;
            }
            let st = vm.borrow().tools.guest_state().clone();
            if start.elapsed() > Duration::from_secs(30) {
                failure = Some(format!("step {step} not seen in time: {st:?}"));
                return true;
            }
            if !started {
                // The start's report: both vt links, not veth9's pair
                // end; vt9 is not excluded.
                started = st.nics.len() == 3;
                if started {
                    let macs: Vec<&str> = st.nics.iter().map(|n| n.mac.as_str()).collect();
                    assert!(!macs.contains(&mac_of("veth9").as_str()), "{macs:?}");
                    assert!(macs.contains(&mac0.as_str()) && macs.contains(&mac1.as_str()));
                }
                return false;
            }
            match changed {
                None => {
                    // Let the link-local addresses settle first, so that
                    // what is timed is the step's own change.
                    if step == 0 && start.elapsed() < Duration::from_millis(2500) {
                        return false;
                    }
                    for cmd in steps[step].0 {
                        ip(cmd);
                    }
                    changed = Some(Instant::now());
                }
                Some(t) if (steps[step].1)(&st) => {
                    latencies.push(t.elapsed());
                    changed = None;
                    step += 1;
                    if step == steps.len() {
                        return true;
                    }
                }
                Some(_) => {}
            }
            false
        },
    );
    if let Some(f) = failure {
        panic!("{f}; latencies so far {latencies:?}");
    }
    eprintln!("report latencies: {latencies:?}");
    for (i, l) in latencies.iter().enumerate() {
        assert!(
            *l < Duration::from_secs(1),
            "step {i} ({:?}): {l:?}",
            steps[i].0
        );
    }
    // The guest's first IPv4 went out with them (guestinfo.ip).
    assert_eq!(
        vm.borrow().tools.get_guestinfo("ip"),
        Some(&b"10.9.9.1"[..])
    );
}
