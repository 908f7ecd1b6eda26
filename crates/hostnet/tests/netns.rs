//! hostnet against the real kernel, each test in a network namespace of its
//! own (never the host's interfaces): the test body runs in a thread that
//! unshared CLONE_NEWNET (network namespaces are per thread), on a
//! current-thread tokio runtime built in that thread.
//!
//! Without the privilege to make a namespace the tests print "skipping" and
//! pass, except under CI (CI=true), where they fail.

use std::future::Future;
use std::io;
use std::net::IpAddr;

use hostnet::{open_tap, Netlink};

/// Runs `f`'s future in a fresh network namespace (see the file's comment).
fn in_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("cannot make a network namespace ({e}); under CI=true this test needs root");
            }
            eprintln!("skipping: cannot make a network namespace ({e}); run as root");
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("tokio runtime");
        runtime.block_on(f());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn netlink() -> Netlink {
    Netlink::connect().await.expect("netlink socket")
}

/// Creates a veth pair `name`/`peer` with rtnetlink directly (hostnet has no
/// call for one; veth rather than dummy, which not every kernel has built in).
async fn add_veth(name: &str, peer: &str) {
    let (connection, handle, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(connection);
    handle
        .link()
        .add(rtnetlink::LinkVeth::new(name, peer).build())
        .execute()
        .await
        .expect("creating a veth pair");
}

#[test]
fn bridge_created_then_found_then_deleted() {
    in_netns(|| async {
        let nl = netlink().await;
        assert_eq!(nl.link_kind("br0").await.unwrap(), None);
        assert!(nl.ensure_bridge("br0").await.unwrap(), "created now");
        assert_eq!(
            nl.link_kind("br0").await.unwrap().as_deref(),
            Some("bridge")
        );
        assert!(!nl.is_up("br0").await.unwrap(), "created down");
        nl.set_up("br0", true).await.unwrap();
        assert!(!nl.ensure_bridge("br0").await.unwrap(), "found");
        assert!(
            nl.is_up("br0").await.unwrap(),
            "an existing bridge is left as it is"
        );

        nl.delete_link("br0").await.unwrap();
        assert_eq!(nl.link_kind("br0").await.unwrap(), None);
        nl.delete_link("br0").await.unwrap();
    });
}

#[test]
fn a_link_that_is_not_a_bridge_is_left_untouched() {
    in_netns(|| async {
        let nl = netlink().await;
        add_veth("ve0", "ve1").await;
        nl.set_group("ve0", 5).await.unwrap();
        nl.set_up("ve0", true).await.unwrap();
        let e = nl.ensure_bridge("ve0").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "ve0 exists and is not a bridge (it is a veth)"
        );
        assert_eq!(nl.link_kind("ve0").await.unwrap().as_deref(), Some("veth"));
        assert_eq!(nl.group("ve0").await.unwrap(), 5);
        assert!(nl.is_up("ve0").await.unwrap());

        let (_tap, name) = open_tap("vm1").unwrap();
        assert_eq!(name, "vm1");
        let e = nl.ensure_bridge("vm1").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "vm1 exists and is not a bridge (it is a tun)"
        );
        assert_eq!(nl.link_kind("vm1").await.unwrap().as_deref(), Some("tun"));

        // lo has no IFLA_INFO_KIND.
        assert_eq!(nl.link_kind("lo").await.unwrap().as_deref(), Some(""));
        let e = nl.ensure_bridge("lo").await.unwrap_err();
        assert!(
            e.to_string().starts_with("lo exists and is not a bridge"),
            "{e}"
        );
    });
}

#[test]
fn tap_from_pattern_goes_away_with_its_fd() {
    in_netns(|| async {
        let nl = netlink().await;
        let (tap, name) = open_tap("tap%d").unwrap();
        assert!(name.starts_with("tap") && name != "tap%d", "{name}");
        assert_eq!(nl.link_kind(&name).await.unwrap().as_deref(), Some("tun"));
        let (tap2, name2) = open_tap("tap%d").unwrap();
        assert_ne!(name, name2);

        // O_CLOEXEC, and left blocking.
        // SAFETY: F_GETFD/F_GETFL on an fd we own.
        let (fd_flags, fl_flags) = unsafe {
            use std::os::fd::AsRawFd;
            (
                libc::fcntl(tap.as_raw_fd(), libc::F_GETFD),
                libc::fcntl(tap.as_raw_fd(), libc::F_GETFL),
            )
        };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        assert_eq!(fl_flags & libc::O_NONBLOCK, 0);
        assert_eq!(fl_flags & libc::O_ACCMODE, libc::O_RDWR);

        drop(tap);
        assert_eq!(
            nl.link_kind(&name).await.unwrap(),
            None,
            "a non-persistent tap goes with its fd"
        );
        assert_eq!(nl.link_kind(&name2).await.unwrap().as_deref(), Some("tun"));
        drop(tap2);
        assert_eq!(nl.link_kind(&name2).await.unwrap(), None);
    });
}

#[test]
fn named_tap_opened_twice_is_in_use() {
    in_netns(|| async {
        let (tap, name) = open_tap("vmtap0").unwrap();
        assert_eq!(name, "vmtap0");
        let e = open_tap("vmtap0").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
        assert_eq!(e.to_string(), "tap vmtap0 is in use");
        drop(tap);
        let (_tap, name) = open_tap("vmtap0").unwrap();
        assert_eq!(name, "vmtap0");
    });
}

#[test]
fn tap_named_like_a_bridge() {
    in_netns(|| async {
        let nl = netlink().await;
        nl.ensure_bridge("br1").await.unwrap();
        let e = open_tap("br1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "br1 exists and is not a tap");
        assert_eq!(
            nl.link_kind("br1").await.unwrap().as_deref(),
            Some("bridge")
        );
    });
}

#[test]
fn tap_name_checked_before_the_kernel() {
    for name in ["abcdefghijklmnop", "", "a/b"] {
        let e = open_tap(name).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        assert!(e.to_string().contains("1 to 15 characters"), "{e}");
    }
}

#[test]
fn bridge_ports_and_link_state() {
    in_netns(|| async {
        let nl = netlink().await;
        nl.ensure_bridge("br0").await.unwrap();
        nl.ensure_bridge("br1").await.unwrap();
        let (_tap, tap) = open_tap("tap%d").unwrap();

        assert_eq!(nl.master(&tap).await.unwrap(), None);
        nl.set_master(&tap, "br0").await.unwrap();
        assert_eq!(nl.master(&tap).await.unwrap().as_deref(), Some("br0"));
        nl.set_master(&tap, "br1").await.unwrap();
        assert_eq!(nl.master(&tap).await.unwrap().as_deref(), Some("br1"));
        assert_eq!(nl.master("br1").await.unwrap(), None);

        add_veth("ve0", "ve1").await;
        let e = nl.set_master(&tap, "ve0").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("adding {tap} to bridge ve0: ve0 is not a bridge (it is a veth)")
        );
        let e = nl.set_master(&tap, "br9").await.unwrap_err();
        assert_eq!(e.to_string(), "no interface br9");

        assert!(!nl.is_up(&tap).await.unwrap());
        nl.set_up(&tap, true).await.unwrap();
        nl.set_up("br1", true).await.unwrap();
        assert!(nl.is_up(&tap).await.unwrap());
        assert!(nl.is_up("br1").await.unwrap());
        nl.set_up(&tap, false).await.unwrap();
        assert!(!nl.is_up(&tap).await.unwrap());
        assert!(nl.is_up("br1").await.unwrap());

        assert_eq!(nl.group(&tap).await.unwrap(), 0);
        nl.set_group(&tap, 7).await.unwrap();
        assert_eq!(nl.group(&tap).await.unwrap(), 7);
        nl.set_group(&tap, u32::MAX).await.unwrap();
        assert_eq!(nl.group(&tap).await.unwrap(), u32::MAX);
        assert_eq!(nl.group("br0").await.unwrap(), 0);
    });
}

#[test]
fn addresses_v4_and_v6() {
    in_netns(|| async {
        let nl = netlink().await;
        nl.ensure_bridge("br0").await.unwrap();
        let v4: IpAddr = "100.64.1.1".parse().unwrap();
        let v6: IpAddr = "fd00:1::1".parse().unwrap();
        assert_eq!(nl.addrs("br0").await.unwrap(), vec![]);
        for _ in 0..2 {
            nl.add_addr("br0", v4, 31).await.unwrap();
            nl.add_addr("br0", v6, 64).await.unwrap();
        }
        let addrs = nl.addrs("br0").await.unwrap();
        assert!(addrs.contains(&(v4, 31)), "{addrs:?}");
        assert!(addrs.contains(&(v6, 64)), "{addrs:?}");
        assert_eq!(addrs.len(), 2, "{addrs:?}");

        // Another prefix on the same bridge, and nothing on lo from it.
        let v4b: IpAddr = "10.0.0.1".parse().unwrap();
        nl.add_addr("br0", v4b, 24).await.unwrap();
        assert!(nl.addrs("br0").await.unwrap().contains(&(v4b, 24)));
        assert_eq!(nl.addrs("lo").await.unwrap(), vec![]);

        let e = nl.add_addr("br0", v4, 33).await.unwrap_err();
        assert!(e.to_string().contains("prefix length is 0 to 32"), "{e}");
        let e = nl.add_addr("br0", v6, 129).await.unwrap_err();
        assert!(e.to_string().contains("prefix length is 0 to 128"), "{e}");
    });
}

#[test]
fn missing_and_invalid_interfaces() {
    in_netns(|| async {
        let nl = netlink().await;
        assert_eq!(nl.link_kind("tap9").await.unwrap(), None);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let errors = [
            nl.set_up("tap9", true).await.unwrap_err(),
            nl.is_up("tap9").await.unwrap_err(),
            nl.set_master("tap9", "lo").await.unwrap_err(),
            nl.master("tap9").await.unwrap_err(),
            nl.set_group("tap9", 1).await.unwrap_err(),
            nl.group("tap9").await.unwrap_err(),
            nl.add_addr("tap9", ip, 24).await.unwrap_err(),
            nl.addrs("tap9").await.unwrap_err(),
        ];
        for e in errors {
            assert_eq!(e.to_string(), "no interface tap9");
            assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        }
        nl.delete_link("tap9").await.unwrap();

        for bad in ["abcdefghijklmnop", "", "a/b", "a b"] {
            let e = nl.link_kind(bad).await.unwrap_err();
            assert!(e.to_string().starts_with("invalid interface name"), "{e}");
            assert!(nl.ensure_bridge(bad).await.is_err());
            assert!(nl.delete_link(bad).await.is_err());
        }
    });
}

/// Drops CAP_NET_ADMIN from this thread's effective set (capabilities are
/// per thread), so the kernel refuses what vmd would need it for.
fn drop_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

#[test]
fn without_cap_net_admin() {
    in_netns(|| async {
        let nl = netlink().await;
        nl.ensure_bridge("br0").await.unwrap();
        drop_net_admin();
        let e = nl.ensure_bridge("br1").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "creating bridge br1: Operation not permitted (vmd needs CAP_NET_ADMIN)"
        );
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let e = nl.set_up("br0", true).await.unwrap_err();
        assert!(e.to_string().ends_with("(vmd needs CAP_NET_ADMIN)"), "{e}");
        // Reading needs no privilege.
        assert_eq!(
            nl.link_kind("br0").await.unwrap().as_deref(),
            Some("bridge")
        );

        let e = open_tap("vmtap1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            e.to_string(),
            "tap vmtap1: permission denied (vmd needs CAP_NET_ADMIN)"
        );
    });
}
