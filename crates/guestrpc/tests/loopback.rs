//! End to end: the guest client against the host side through a fake vCPU.

#![cfg(feature = "alloc")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use guestrpc::backdoor::{cmd, vmx_type, Regs, VERSION_MAGIC};
use guestrpc::client::{self, rpci, tclo_poll, Backdoor, Channel, Error, TcloSession};
use guestrpc::guestinfo::nicinfo::{IpEntry, NicEntry};
use guestrpc::guestinfo::{
    format_set_guest_info, format_set_guest_info_nics, format_set_guest_info_os, GuestInfoKey,
};
use guestrpc::host::{CommandStatus, StateChange};
use guestrpc::proto::{subcmd, MAX_CHANNELS, MAX_MESSAGE, PROTO_RPCI, PROTO_TCLO};
use guestrpc::tclo::{PowerState, TcloCommand, REPLY_OK, REPLY_RESET, REPLY_UNKNOWN};
use guestrpc::testing::{FakeVcpu, HOST_TIME_US};

fn call(vm: &mut FakeVcpu, req: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    rpci(vm, req, &mut buf).expect("rpci").to_vec()
}

#[test]
fn checkvm_and_probe() {
    let mut vm = FakeVcpu::new();
    assert_eq!(
        client::checkvm(&mut vm),
        Some((VERSION_MAGIC, vmx_type::ESX))
    );
    assert!(client::probe(&mut vm));
    let t = client::get_time_full(&mut vm).unwrap();
    assert_eq!(u64::from(t.usecs) + t.secs * 1_000_000, HOST_TIME_US);
    assert_eq!(t.max_lag_us, 1_000_000);
    vm.platform.time_us = None;
    assert_eq!(client::get_time_full(&mut vm), None);
}

#[test]
fn guestinfo_round_trip() {
    let mut vm = FakeVcpu::new();
    assert_eq!(call(&mut vm, b"info-set guestinfo.foo bar baz"), b"1 ");
    assert_eq!(call(&mut vm, b"info-get guestinfo.foo"), b"1 bar baz");
    // vmtoolsd's trailing NUL, hostctl's NUL padding.
    assert_eq!(call(&mut vm, b"info-get guestinfo.foo\0"), b"1 bar baz");
    let mut padded = b"info-get guestinfo.foo".to_vec();
    padded.resize(4096, 0);
    assert_eq!(call(&mut vm, &padded), b"1 bar baz");
    assert_eq!(vm.tools.get_guestinfo("foo"), Some(&b"bar baz"[..]));
    assert_eq!(
        vm.tools.get_guestinfo("guestinfo.foo"),
        Some(&b"bar baz"[..])
    );

    vm.tools
        .set_guestinfo("guestinfo.fromhost", b"hello")
        .unwrap();
    assert_eq!(call(&mut vm, b"info-get guestinfo.fromhost"), b"1 hello");

    assert_eq!(
        call(&mut vm, b"info-get guestinfo.missing"),
        b"0 No value found"
    );
    assert_eq!(call(&mut vm, b"info-get other.key"), b"0 No value found");
    assert_eq!(
        call(&mut vm, b"info-set guestinfo.foo"),
        b"0 Two and exactly two arguments expected"
    );
    assert!(call(&mut vm, b"info-set other.key x").starts_with(b"0 "));
    // An empty value is a value.
    assert_eq!(call(&mut vm, b"info-set guestinfo.empty "), b"1 ");
    assert_eq!(call(&mut vm, b"info-get guestinfo.empty"), b"1 ");
    assert!(vm.tools.guest_state().tools_present);
    assert_eq!(vm.channels.open_count(), 0);
}

/// The largest message: `info-set` of exactly 64 KiB, then the reply of the
/// same size back, over both transports.
#[test]
fn max_message_lb_and_hb() {
    for force_lb in [true, false] {
        let mut vm = FakeVcpu::new();
        let prefix = b"info-set guestinfo.big ";
        let mut req = prefix.to_vec();
        req.extend((0..MAX_MESSAGE - prefix.len()).map(|i| b'a' + (i % 26) as u8));
        assert_eq!(req.len(), MAX_MESSAGE);

        let mut chan = Channel::open(&mut vm, PROTO_RPCI).unwrap();
        chan.force_lb = force_lb;
        let mut buf = vec![0u8; MAX_MESSAGE];
        assert_eq!(chan.call(&mut vm, &req, &mut buf).unwrap(), b"1 ");
        let reply = chan
            .call(&mut vm, b"info-get guestinfo.big", &mut buf)
            .unwrap();
        assert_eq!(&reply[..2], b"1 ");
        assert_eq!(&reply[2..], &req[prefix.len()..]);
        chan.close(&mut vm).unwrap();

        if force_lb {
            assert_eq!(vm.hb_out_exits, 0);
            assert!(vm.lb_exits > 2 * MAX_MESSAGE / 4);
        } else {
            // Per-byte OUT exits, ≤1024-byte IN chunks, a handful of LB calls.
            assert_eq!(
                vm.hb_out_exits,
                MAX_MESSAGE + b"info-get guestinfo.big".len()
            );
            assert!(vm.hb_in_exits >= MAX_MESSAGE / 1024);
            assert!(vm.lb_exits < 20);
        }

        // One byte more is refused by the client before anything is sent.
        let mut chan = Channel::open(&mut vm, PROTO_RPCI).unwrap();
        req.push(b'x');
        assert_eq!(chan.send(&mut vm, &req), Err(Error::TooLarge));
        chan.close(&mut vm).unwrap();
    }
}

#[test]
fn reply_too_large_for_buffer_is_discarded() {
    let mut vm = FakeVcpu::new();
    vm.tools.set_guestinfo("v", b"0123456789").unwrap();
    let mut chan = Channel::open(&mut vm, PROTO_RPCI).unwrap();
    let mut small = [0u8; 4];
    assert_eq!(
        chan.call(&mut vm, b"info-get guestinfo.v", &mut small),
        Err(Error::BufferTooSmall(12))
    );
    let mut buf = [0u8; 64];
    assert_eq!(
        chan.call(&mut vm, b"info-get guestinfo.v", &mut buf)
            .unwrap(),
        b"1 0123456789"
    );
    chan.close(&mut vm).unwrap();
}

#[test]
fn sixteen_channels_then_refused() {
    let mut vm = FakeVcpu::new();
    let mut chans: Vec<Channel> = (0..MAX_CHANNELS)
        .map(|i| Channel::open(&mut vm, if i % 2 == 0 { PROTO_RPCI } else { PROTO_TCLO }).unwrap())
        .collect();
    assert_eq!(Channel::open(&mut vm, PROTO_RPCI), Err(Error::OpenFailed));
    // All usable at once.
    let mut buf = [0u8; 64];
    for c in chans.iter_mut().step_by(2) {
        assert_eq!(c.call(&mut vm, b"log hi", &mut buf).unwrap(), b"1 ");
    }
    let freed = chans.remove(3);
    let freed_id = freed.id();
    freed.close(&mut vm).unwrap();
    let again = Channel::open(&mut vm, PROTO_RPCI).unwrap();
    assert_eq!(again.id(), freed_id);
}

#[test]
fn unknown_protocol_refused() {
    let mut vm = FakeVcpu::new();
    assert_eq!(Channel::open(&mut vm, 0x1234_5678), Err(Error::OpenFailed));
}

#[test]
fn unknown_rpci_command() {
    let mut vm = FakeVcpu::new();
    assert_eq!(call(&mut vm, b"no.such.command arg"), b"0 Unknown command");
    assert_eq!(call(&mut vm, b""), b"0 Unknown command");
    for ok in [
        &b"tools.capability.hgfs_server toolbox 1"[..],
        b"tools.capability.statechange ",
        b"vmx.capability.unified_loop toolbox",
        b"log something\0",
        b"vmbackup.eventSet req.done 0",
        b"SetGuestDiskInfo x",
        b"tools.set.versiontype 12389 4",
    ] {
        assert_eq!(call(&mut vm, ok), b"1 ", "{}", String::from_utf8_lossy(ok));
    }
    assert_eq!(vm.tools.guest_state().tools_version, Some(12389));
    assert_eq!(vm.tools.guest_state().tools_version_type, Some(4));
}

#[test]
fn set_guest_info_reaches_guest_state() {
    let mut vm = FakeVcpu::new();
    let mut buf = [0u8; 1024];
    let mut send = |vm: &mut FakeVcpu, key, value: &[u8]| {
        let req = format_set_guest_info(&mut buf, key, value)
            .unwrap()
            .to_vec();
        // Exactly "1 ": vmtoolsd treats anything after it as failure.
        assert_eq!(call(vm, &req), b"1 ");
    };
    send(&mut vm, GuestInfoKey::DnsName, b"web1.example\0");
    send(&mut vm, GuestInfoKey::IpAddress, b"192.0.2.7");
    send(&mut vm, GuestInfoKey::OsName, b"OpenBSD");
    send(
        &mut vm,
        GuestInfoKey::OsNameFull,
        b"OpenBSD 7.5 GENERIC.MP/amd64",
    );
    send(&mut vm, GuestInfoKey::Uptime, b"12300");
    send(&mut vm, GuestInfoKey::BuildNumber, b"whatever");
    let st = vm.tools.guest_state();
    assert_eq!(st.hostname.as_deref(), Some("web1.example"));
    assert_eq!(st.ipv4, Some(Ipv4Addr::new(192, 0, 2, 7)));
    assert_eq!(st.os_name.as_deref(), Some("OpenBSD"));
    assert_eq!(
        st.os_full_name.as_deref(),
        Some("OpenBSD 7.5 GENERIC.MP/amd64")
    );
    assert_eq!(st.uptime.map(|u| u.secs()), Some(123));

    // Modern vmtoolsd's key 11 (binary, NULs inside) carries both names.
    let req = format_set_guest_info_os(
        &mut buf,
        b"debian12-64",
        b"Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm)",
        b"bitness='64' familyName='Linux' prettyName='Debian GNU/Linux 12 (bookworm)'",
    )
    .unwrap()
    .to_vec();
    assert_eq!(call(&mut vm, &req), b"1 ");
    let st = vm.tools.guest_state();
    assert_eq!(st.os_name.as_deref(), Some("debian12-64"));
    assert_eq!(
        st.os_full_name.as_deref(),
        Some("Linux 6.1.0-18-amd64 Debian GNU/Linux 12 (bookworm)")
    );
    assert_eq!(
        st.os_detailed.as_deref(),
        Some("bitness='64' familyName='Linux' prettyName='Debian GNU/Linux 12 (bookworm)'")
    );
    // One of another version is acknowledged and ignored.
    let mut other = req.clone();
    other["SetGuestInfo  11 ".len()] = 2;
    assert_eq!(call(&mut vm, &other), b"1 ");
    assert_eq!(
        vm.tools.guest_state().os_name.as_deref(),
        Some("debian12-64")
    );

    let lo = [IpEntry {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        prefix_len: 8,
    }];
    let em0 = [
        IpEntry {
            addr: IpAddr::V6("fe80::1".parse::<Ipv6Addr>().unwrap()),
            prefix_len: 64,
        },
        IpEntry {
            addr: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            prefix_len: 24,
        },
    ];
    let nics = [
        NicEntry {
            mac: "00:00:00:00:00:00",
            addrs: &lo,
        },
        NicEntry {
            mac: "fe:e1:ba:d0:00:01",
            addrs: &em0,
        },
    ];
    let mut big = [0u8; 1024];
    let req = format_set_guest_info_nics(&mut big, &nics)
        .unwrap()
        .to_vec();
    assert!(req.starts_with(b"SetGuestInfo  10 "));
    assert!(req.contains(&0), "binary XDR must survive the NUL cut");
    assert_eq!(call(&mut vm, &req), b"1 ");
    let st = vm.tools.guest_state();
    assert_eq!(st.nics.len(), 2);
    assert_eq!(st.nics[1].mac, "fe:e1:ba:d0:00:01");
    assert_eq!(st.nics[1].addrs, em0);
    // The first non-loopback IPv4 wins.
    assert_eq!(st.ipv4, Some(Ipv4Addr::new(10, 1, 2, 3)));
    assert_eq!(st.nicinfo_raw, None);

    // Undecodable NicInfo is kept raw, and still acknowledged.
    assert_eq!(
        call(&mut vm, b"SetGuestInfo  10 \x00\x00\x00\x09junk"),
        b"1 "
    );
    assert!(vm.tools.guest_state().nicinfo_raw.is_some());
    assert_eq!(vm.tools.guest_state().nics.len(), 2);

    // vmt's answer to "Set_Option broadcastIP 1".
    assert_eq!(call(&mut vm, b"info-set guestinfo.ip 198.51.100.4"), b"1 ");
    assert_eq!(
        vm.tools.guest_state().ipv4,
        Some(Ipv4Addr::new(198, 51, 100, 4))
    );
}

/// The vmt(4) flow of §5 and §7(c), step by step.
#[test]
fn tclo_halt_flow() {
    let mut vm = FakeVcpu::new();
    let mut buf = [0u8; 256];
    let mut chan = Channel::open(&mut vm, PROTO_TCLO).unwrap();
    assert!(!vm.tools.guest_state().tools_present);

    // Every new channel gets "reset" first.
    assert_eq!(
        tclo_poll(&mut chan, &mut vm, b"", &mut buf).unwrap(),
        Some(TcloCommand::Reset)
    );
    assert!(!vm.tools.has_toolbox_channel());
    // "OK ATR toolbox" marks the main service; Capabilities_Register follows.
    let cmd = tclo_poll(&mut chan, &mut vm, REPLY_RESET, &mut buf).unwrap();
    assert_eq!(cmd, Some(TcloCommand::CapabilitiesRegister));
    assert!(vm.tools.has_toolbox_channel());
    assert!(vm.tools.guest_state().tools_present);
    // The guest's RPCIs inside its handler, before its TCLO reply.
    assert_eq!(call(&mut vm, b"tools.capability.statechange "), b"1 ");
    assert_eq!(call(&mut vm, b"tools.set.version 2147483647"), b"1 ");
    assert_eq!(
        tclo_poll(&mut chan, &mut vm, REPLY_OK, &mut buf).unwrap(),
        None
    );
    assert_eq!(vm.tools.guest_state().tools_version, Some(0x7FFF_FFFF));

    // Idle polls.
    vm.now_ms = 2_000;
    assert_eq!(tclo_poll(&mut chan, &mut vm, b"", &mut buf).unwrap(), None);
    assert_eq!(vm.tools.guest_state().last_poll_ms, Some(2_000));

    let id = vm.tools.queue(TcloCommand::OsHalt).unwrap();
    assert_eq!(vm.tools.command_status(id), Some(CommandStatus::Pending));
    vm.now_ms = 3_000;
    let cmd = tclo_poll(&mut chan, &mut vm, b"", &mut buf).unwrap();
    assert_eq!(cmd, Some(TcloCommand::OsHalt));
    assert_eq!(cmd.unwrap().power_state(), Some(PowerState::Halt));
    assert_eq!(
        vm.tools.command_status(id),
        Some(CommandStatus::Sent { at_ms: 3_000 })
    );

    vm.now_ms = 3_010;
    assert_eq!(call(&mut vm, b"tools.os.statechange.status 1 1\0"), b"1 ");
    vm.now_ms = 3_020;
    assert_eq!(
        tclo_poll(&mut chan, &mut vm, REPLY_OK, &mut buf).unwrap(),
        None
    );
    assert_eq!(
        vm.tools.command_status(id),
        Some(CommandStatus::Acked("OK ".into()))
    );
    let change = vm.tools.guest_state().last_state_change.unwrap();
    assert_eq!(
        change,
        StateChange {
            ok: true,
            state: 1,
            at_ms: 3_010
        }
    );
    assert_eq!(change.power_state(), Some(PowerState::Halt));

    // A later tick does not touch a finished command.
    vm.tools.tick(100_000);
    assert_eq!(
        vm.tools.command_status(id),
        Some(CommandStatus::Acked("OK ".into()))
    );
    chan.close(&mut vm).unwrap();
    assert!(!vm.tools.has_toolbox_channel());
}

/// After the first poll got `reset`: answers it, gets and answers
/// `Capabilities_Register`, and sees the queue empty.
fn answer_reset_and_register(vm: &mut FakeVcpu, s: &mut TcloSession, buf: &mut [u8]) {
    s.set_reply(TcloSession::default_reply(&TcloCommand::<&str>::Reset));
    assert_eq!(
        s.poll(vm, buf).unwrap(),
        Some(TcloCommand::CapabilitiesRegister)
    );
    s.set_reply(REPLY_OK);
    assert_eq!(s.poll(vm, buf).unwrap(), None);
}

#[test]
fn tclo_session_like_vmt() {
    let mut vm = FakeVcpu::new();
    let mut s = TcloSession::new();
    let mut buf = [0u8; 256];
    // The first poll opens, sends "OK ATR toolbox" unsolicited, gets "reset".
    assert_eq!(s.poll(&mut vm, &mut buf).unwrap(), Some(TcloCommand::Reset));
    assert!(vm.tools.has_toolbox_channel());
    answer_reset_and_register(&mut vm, &mut s, &mut buf);

    let ping = vm.tools.queue(TcloCommand::Ping).unwrap();
    let opt = vm
        .tools
        .queue(TcloCommand::SetOption("synctime".into(), "1".into()))
        .unwrap();
    let other = vm
        .tools
        .queue(TcloCommand::Other("vmbackup.start 1".into()))
        .unwrap();
    for want in [
        TcloCommand::Ping,
        TcloCommand::SetOption("synctime", "1"),
        TcloCommand::Other("vmbackup.start 1"),
    ] {
        let cmd = s.poll(&mut vm, &mut buf).unwrap().unwrap();
        assert_eq!(cmd, want);
        s.set_reply(TcloSession::default_reply(&cmd));
    }
    assert_eq!(s.poll(&mut vm, &mut buf).unwrap(), None);
    assert_eq!(
        vm.tools.command_status(ping),
        Some(CommandStatus::Acked("OK ".into()))
    );
    let unknown = String::from_utf8(REPLY_UNKNOWN.to_vec()).unwrap();
    assert_eq!(
        vm.tools.command_status(opt),
        Some(CommandStatus::Failed(unknown.clone()))
    );
    assert_eq!(
        vm.tools.command_status(other),
        Some(CommandStatus::Failed(unknown))
    );
    s.close(&mut vm);
    assert_eq!(vm.channels.open_count(), 0);
}

#[test]
fn power_ops_only_to_the_toolbox_channel() {
    let mut vm = FakeVcpu::new();
    let mut buf = [0u8; 256];
    // vmtoolsd's user service.
    let mut dnd = Channel::open(&mut vm, PROTO_TCLO).unwrap();
    assert_eq!(
        tclo_poll(&mut dnd, &mut vm, b"", &mut buf).unwrap(),
        Some(TcloCommand::Reset)
    );
    assert_eq!(
        tclo_poll(&mut dnd, &mut vm, b"OK ATR toolbox-dnd", &mut buf).unwrap(),
        None
    );
    let id = vm.tools.queue(TcloCommand::OsReboot).unwrap();
    assert_eq!(tclo_poll(&mut dnd, &mut vm, b"", &mut buf).unwrap(), None);
    assert_eq!(vm.tools.command_status(id), Some(CommandStatus::Pending));

    let mut main = Channel::open(&mut vm, PROTO_TCLO).unwrap();
    assert_eq!(
        tclo_poll(&mut main, &mut vm, b"", &mut buf).unwrap(),
        Some(TcloCommand::Reset)
    );
    let caps = tclo_poll(&mut main, &mut vm, REPLY_RESET, &mut buf).unwrap();
    assert_eq!(caps, Some(TcloCommand::CapabilitiesRegister));
    assert_eq!(
        tclo_poll(&mut main, &mut vm, REPLY_OK, &mut buf).unwrap(),
        Some(TcloCommand::OsReboot)
    );
    assert_eq!(
        tclo_poll(&mut main, &mut vm, REPLY_OK, &mut buf).unwrap(),
        None
    );
    assert_eq!(
        vm.tools.command_status(id),
        Some(CommandStatus::Acked("OK ".into()))
    );
    assert_eq!(tclo_poll(&mut dnd, &mut vm, b"", &mut buf).unwrap(), None);
}

#[test]
fn tclo_timeout_and_late_reply() {
    let mut vm = FakeVcpu::new();
    let mut s = TcloSession::new();
    let mut buf = [0u8; 256];
    s.poll(&mut vm, &mut buf).unwrap(); // reset
    s.set_reply(REPLY_RESET);
    s.poll(&mut vm, &mut buf).unwrap(); // Capabilities_Register
    s.set_reply(REPLY_OK);
    s.poll(&mut vm, &mut buf).unwrap();

    let id = vm.tools.queue(TcloCommand::OsSuspend).unwrap();
    vm.now_ms = 10_000;
    assert_eq!(
        s.poll(&mut vm, &mut buf).unwrap(),
        Some(TcloCommand::OsSuspend)
    );
    // Empty polls while awaiting mean "no reply", not an answer.
    vm.now_ms = 11_000;
    assert_eq!(s.poll(&mut vm, &mut buf).unwrap(), None);
    vm.tools.tick(13_000);
    assert_eq!(
        vm.tools.command_status(id),
        Some(CommandStatus::Sent { at_ms: 10_000 })
    );
    vm.tools.tick(13_001);
    assert_eq!(vm.tools.command_status(id), Some(CommandStatus::TimedOut));
    // A late reply is accepted as unsolicited and changes nothing.
    s.set_reply(REPLY_OK);
    assert_eq!(s.poll(&mut vm, &mut buf).unwrap(), None);
    assert_eq!(vm.tools.command_status(id), Some(CommandStatus::TimedOut));

    // A command never delivered stays pending (no poll, no timeout).
    let pending = vm.tools.queue(TcloCommand::Ping).unwrap();
    vm.tools.tick(1_000_000);
    assert_eq!(
        vm.tools.command_status(pending),
        Some(CommandStatus::Pending)
    );
}

/// Passes calls through, but turns the next RECVSTATUS into a failure
/// report (EBX = 0), as a guest does when it could not read the message.
struct FailNextRecvStatus<'a>(&'a mut FakeVcpu, bool);

impl Backdoor for FailNextRecvStatus<'_> {
    fn lb(&mut self, regs: &mut Regs) {
        if self.1 && regs.command() == cmd::MESSAGE && regs.subcommand() == subcmd::RECVSTATUS {
            regs.ebx = 0;
            self.1 = false;
        }
        self.0.lb(regs);
    }
    fn hb_out(&mut self, regs: &mut Regs, data: &[u8]) {
        self.0.hb_out(regs, data);
    }
    fn hb_in(&mut self, regs: &mut Regs, buf: &mut [u8]) {
        self.0.hb_in(regs, buf);
    }
}

#[test]
fn tclo_failed_delivery_is_redelivered() {
    let mut vm = FakeVcpu::new();
    let mut buf = [0u8; 64];
    let mut chan = Channel::open(&mut vm, PROTO_TCLO).unwrap();
    // "reset" whose delivery failed comes again.
    let mut failing = FailNextRecvStatus(&mut vm, true);
    assert_eq!(
        tclo_poll(&mut chan, &mut failing, b"", &mut buf).unwrap(),
        Some(TcloCommand::Reset)
    );
    assert_eq!(
        tclo_poll(&mut chan, &mut vm, b"", &mut buf).unwrap(),
        Some(TcloCommand::Reset)
    );
    tclo_poll(&mut chan, &mut vm, REPLY_RESET, &mut buf).unwrap(); // Capabilities_Register
    tclo_poll(&mut chan, &mut vm, REPLY_OK, &mut buf).unwrap();

    let id = vm.tools.queue(TcloCommand::OsHalt).unwrap();
    let mut failing = FailNextRecvStatus(&mut vm, true);
    assert_eq!(
        tclo_poll(&mut chan, &mut failing, b"", &mut buf).unwrap(),
        Some(TcloCommand::OsHalt)
    );
    assert_eq!(vm.tools.command_status(id), Some(CommandStatus::Pending));
    assert_eq!(
        tclo_poll(&mut chan, &mut vm, b"", &mut buf).unwrap(),
        Some(TcloCommand::OsHalt)
    );
    assert!(matches!(
        vm.tools.command_status(id),
        Some(CommandStatus::Sent { .. })
    ));
    assert_eq!(
        tclo_poll(&mut chan, &mut vm, REPLY_OK, &mut buf).unwrap(),
        None
    );
    assert_eq!(
        vm.tools.command_status(id),
        Some(CommandStatus::Acked("OK ".into()))
    );
}

#[test]
fn tclo_queue_bounded() {
    let mut vm = FakeVcpu::new();
    for _ in 0..guestrpc::host::MAX_QUEUED_COMMANDS {
        vm.tools.queue(TcloCommand::Ping).unwrap();
    }
    assert_eq!(
        vm.tools.queue(TcloCommand::Ping),
        Err(guestrpc::host::QueueFull)
    );
}

#[test]
fn reports_move_with_news_not_with_idle_polls() {
    let mut vm = FakeVcpu::new();
    let mut s = TcloSession::new();
    let mut buf = [0u8; 256];
    assert_eq!(vm.tools.reports(), 0);
    // Opening the TCLO channel is news (the tools are there).
    assert_eq!(s.poll(&mut vm, &mut buf).unwrap(), Some(TcloCommand::Reset));
    let opened = vm.tools.reports();
    assert!(opened > 0);
    answer_reset_and_register(&mut vm, &mut s, &mut buf);
    let settled = vm.tools.reports();
    assert!(settled > opened, "replies to commands are news");
    // Idle polls move the poll time only.
    for _ in 0..3 {
        assert_eq!(s.poll(&mut vm, &mut buf).unwrap(), None);
    }
    assert_eq!(vm.tools.reports(), settled);
    assert!(vm.tools.guest_state().last_poll_ms.is_some());
    // Every RPCI request is news, whatever it says.
    call(&mut vm, b"info-get guestinfo.nothing");
    assert_eq!(vm.tools.reports(), settled + 1);
    s.close(&mut vm);
    assert_eq!(vm.tools.reports(), settled + 2);
}

#[test]
fn reset_closes_every_channel() {
    let mut vm = FakeVcpu::new();
    let mut s = TcloSession::new();
    let mut buf = [0u8; 256];
    assert_eq!(s.poll(&mut vm, &mut buf).unwrap(), Some(TcloCommand::Reset));
    let _rpc = Channel::open(&mut vm, PROTO_RPCI).unwrap();
    assert_eq!(vm.channels.open_count(), 2);
    assert!(vm.tools.has_toolbox_channel());
    vm.channels.reset(&mut vm.tools);
    assert_eq!(vm.channels.open_count(), 0);
    assert!(!vm.tools.has_toolbox_channel());
    // A rebooted guest's tools start over and get "reset" first again.
    let mut s = TcloSession::new();
    assert_eq!(s.poll(&mut vm, &mut buf).unwrap(), Some(TcloCommand::Reset));
}
