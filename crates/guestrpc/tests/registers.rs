//! Exact register values from guest-channel.md, checked on the host side with
//! hand-built calls like the ones OpenBSD vmt, open-vm-tools and FreeBSD
//! make.

#![cfg(feature = "alloc")]

use guestrpc::backdoor::{
    cmd, handle_lb, vmx_type, LbAction, Regs, FAILURE, MAGIC, PORT_HB, PORT_LB,
};
use guestrpc::client::Backdoor;
use guestrpc::proto::{subcmd, FLAG_COOKIE, HB_EBX, PROTO_RPCI, PROTO_TCLO};
use guestrpc::testing::{FakePlatform, FakeVcpu, HOST_TIME_US, TSC_HZ};

const GUARD: Regs = Regs {
    eax: MAGIC,
    ebx: 0x1111_1111,
    ecx: 0,
    edx: PORT_LB as u32,
    esi: 0x3333_3333,
    edi: 0x4444_4444,
    ebp: 0x5555_5555,
};

fn lb(vm: &mut FakeVcpu, command: u16, ebx: u32) -> Regs {
    let mut r = Regs {
        ebx,
        ecx: 0xFFFF_0000 | u32::from(command),
        ..GUARD
    };
    vm.lb(&mut r);
    r
}

/// A channel opened by hand: (id << 16, cookie1, cookie2).
#[derive(Clone, Copy)]
struct Ch(u32, u32, u32);

fn open(vm: &mut FakeVcpu, ebx: u32) -> (Regs, Ch) {
    let mut r = Regs {
        ebx,
        ecx: u32::from(subcmd::OPEN) << 16 | u32::from(cmd::MESSAGE),
        ..GUARD
    };
    vm.lb(&mut r);
    (r, Ch(r.edx & 0xFFFF_0000, r.esi, r.edi))
}

fn msg(vm: &mut FakeVcpu, ch: Ch, sub: u16, ebx: u32) -> Regs {
    let mut r = Regs {
        eax: MAGIC,
        ebx,
        ecx: u32::from(sub) << 16 | u32::from(cmd::MESSAGE),
        edx: ch.0 | u32::from(PORT_LB),
        esi: ch.1,
        edi: ch.2,
        ebp: 0x5555_5555,
    };
    vm.lb(&mut r);
    r
}

/// Sends `data` 4 bytes per SENDPAYLOAD.
fn send_lb(vm: &mut FakeVcpu, ch: Ch, data: &[u8]) {
    assert_eq!(
        msg(vm, ch, subcmd::SENDSIZE, data.len() as u32).ecx,
        0x0081_0000
    );
    for c in data.chunks(4) {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        assert_eq!(
            msg(vm, ch, subcmd::SENDPAYLOAD, u32::from_le_bytes(w)).ecx,
            0x0001_0000
        );
    }
}

#[test]
fn getversion() {
    let mut vm = FakeVcpu::new();
    let r = lb(&mut vm, cmd::GETVERSION, !MAGIC);
    assert_eq!((r.eax, r.ebx, r.ecx), (6, MAGIC, vmx_type::ESX));
    assert_eq!(
        (r.edx, r.esi, r.edi, r.ebp),
        (GUARD.edx, GUARD.esi, GUARD.edi, GUARD.ebp)
    );
}

#[test]
fn gettimefull() {
    let mut vm = FakeVcpu::new();
    let r = lb(&mut vm, cmd::GETTIMEFULL, 0);
    let secs = HOST_TIME_US / 1_000_000;
    assert_eq!(r.eax, MAGIC, "success leaves EAX = magic");
    assert_eq!(r.esi, (secs >> 32) as u32);
    assert_eq!(r.edx, secs as u32);
    assert_eq!(r.ebx, (HOST_TIME_US % 1_000_000) as u32);
    assert_eq!(r.ecx, 1_000_000);
    assert_eq!(r.ebp, GUARD.ebp);

    let r = lb(&mut vm, cmd::GETTIME, 0);
    assert_eq!(
        (r.eax, r.ebx, r.ecx),
        (secs as u32, (HOST_TIME_US % 1_000_000) as u32, 1_000_000)
    );

    vm.platform.time_us = None;
    let r = lb(&mut vm, cmd::GETTIMEFULL, 0x1111_1111);
    assert_eq!(r.eax, FAILURE);
    assert_eq!(
        Regs { eax: MAGIC, ..r },
        Regs {
            ebx: 0x1111_1111,
            ecx: r.ecx,
            ..GUARD
        }
    );
}

#[test]
fn gethz_and_getmhz() {
    let mut vm = FakeVcpu::new();
    let r = lb(&mut vm, cmd::GETHZ, 0xFFFF_FFFF);
    assert_eq!(u64::from(r.ebx) << 32 | u64::from(r.eax), TSC_HZ);
    assert_eq!(r.ecx, 1_000_000_000);
    let r = lb(&mut vm, cmd::GETMHZ, 0);
    assert_eq!(r.eax, 3000);
    assert_ne!(r.eax, MAGIC);
}

#[test]
fn unknown_command_changes_only_eax() {
    let mut vm = FakeVcpu::new();
    for c in [0u16, 2, 9, 15, 44, 91, 39, 40, 41, 0x1234, 0xFFFF, 30 + 256] {
        let r = lb(&mut vm, c, 0xFFFF_FFFF);
        assert_eq!(r.eax, FAILURE, "cmd {c}");
        assert_eq!(
            Regs { eax: MAGIC, ..r },
            Regs {
                ebx: 0xFFFF_FFFF,
                ecx: 0xFFFF_0000 | u32::from(c),
                ..GUARD
            },
            "cmd {c}"
        );
    }
}

#[test]
fn wrong_magic_changes_only_eax() {
    let p = FakePlatform {
        time_us: Some(1),
        ..FakePlatform::default()
    };
    for c in [cmd::GETVERSION, cmd::MESSAGE, cmd::GETTIMEFULL] {
        let before = Regs {
            eax: 0x1234_5678,
            ecx: u32::from(c),
            ..GUARD
        };
        let mut r = before;
        assert_eq!(handle_lb(&mut r, &p), LbAction::Done);
        assert_eq!(
            r,
            Regs {
                eax: FAILURE,
                ..before
            }
        );
        // And through the whole LB path, MESSAGE included.
        let mut vm = FakeVcpu::new();
        let mut r = before;
        vm.lb(&mut r);
        assert_eq!(
            r,
            Regs {
                eax: FAILURE,
                ..before
            }
        );
    }
}

#[test]
fn message_registers_rpci() {
    let mut vm = FakeVcpu::new();
    let (r, ch) = open(&mut vm, PROTO_RPCI | FLAG_COOKIE);
    assert_eq!(r.ecx, 0x0001_0000, "OPEN: ECX exactly");
    assert_eq!(r.edx & 0xFFFF, 0, "OPEN: EDX[15:0] = 0");
    assert!(r.esi != 0 || r.edi != 0 || r.edx >> 16 != 0);

    send_lb(&mut vm, ch, b"info-get guestinfo.x");
    let r = msg(&mut vm, ch, subcmd::RECVSIZE, 0);
    assert_eq!(r.ecx, 0x0083_0000, "RECVSIZE with a message");
    assert_eq!(
        r.edx >> 16,
        1,
        "RECVSIZE: EDX[31:16] = MESSAGE_TYPE_SENDSIZE"
    );
    assert_eq!(r.ebx, b"0 No value found".len() as u32);
    let mut got = Vec::new();
    for _ in 0..r.ebx.div_ceil(4) {
        let r = msg(&mut vm, ch, subcmd::RECVPAYLOAD, 1);
        assert_eq!(r.ecx, 0x0001_0000);
        assert_eq!(
            r.edx >> 16,
            2,
            "RECVPAYLOAD: EDX[31:16] = MESSAGE_TYPE_SENDPAYLOAD"
        );
        got.extend_from_slice(&r.ebx.to_le_bytes());
    }
    assert_eq!(&got[..], b"0 No value found");
    // Reading past the end is refused.
    assert_eq!(msg(&mut vm, ch, subcmd::RECVPAYLOAD, 1).ecx, 0);
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSTATUS, 1).ecx, 0x0001_0000);
    // Nothing pending now: SUCCESS|HB, no DORECV.
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSIZE, 0).ecx, 0x0081_0000);
    // RECVSTATUS with nothing announced is a state error.
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSTATUS, 1).ecx, 0);

    let r = msg(&mut vm, ch, subcmd::CLOSE, 0);
    assert_eq!(r.ecx, 0x0001_0000);
    assert_eq!(r.ecx & 0xFFFF, 0, "CLOSE: ECX[15:0] = 0");
    // The channel is gone.
    assert_eq!(msg(&mut vm, ch, subcmd::SENDSIZE, 0).ecx, 0);
}

#[test]
fn reply_consumed_even_if_partly_read() {
    let mut vm = FakeVcpu::new();
    let (_, ch) = open(&mut vm, PROTO_RPCI | FLAG_COOKIE);
    send_lb(&mut vm, ch, b"log x");
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSIZE, 0).ebx, 2);
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSTATUS, 0).ecx, 0x0001_0000);
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSIZE, 0).ecx, 0x0081_0000);
}

#[test]
fn bad_cookie_channel_state_get_ecx_zero() {
    let mut vm = FakeVcpu::new();
    let (_, ch) = open(&mut vm, PROTO_RPCI | FLAG_COOKIE);
    let wrong = Ch(ch.0, ch.1 ^ 1, ch.2);
    for sub in [subcmd::SENDSIZE, subcmd::RECVSIZE, subcmd::CLOSE] {
        let r = msg(&mut vm, wrong, sub, 0);
        assert_eq!(r.ecx, 0, "wrong cookie, sub {sub}");
        assert_eq!(
            (r.eax, r.ebx, r.edx, r.esi),
            (MAGIC, 0, wrong.0 | 0x5658, wrong.1)
        );
    }
    // The real cookies still work: the wrong ones changed nothing.
    send_lb(&mut vm, ch, b"log");
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSIZE, 0).ecx, 0x0083_0000);

    // Unopened channel, unknown sub-command, oversized SENDSIZE, payload
    // without SENDSIZE, receive in the middle of a send.
    assert_eq!(
        msg(&mut vm, Ch(5 << 16, ch.1, ch.2), subcmd::SENDSIZE, 0).ecx,
        0
    );
    assert_eq!(
        msg(&mut vm, Ch(0xFFFF << 16, 0, 0), subcmd::SENDSIZE, 0).ecx,
        0
    );
    assert_eq!(msg(&mut vm, ch, 7, 0).ecx, 0);
    assert_eq!(msg(&mut vm, ch, subcmd::SENDSIZE, 65537).ecx, 0);
    assert_eq!(msg(&mut vm, ch, subcmd::SENDSIZE, 65536).ecx, 0x0081_0000);
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSIZE, 0).ecx, 0);
    assert_eq!(msg(&mut vm, ch, subcmd::SENDSIZE, 0).ecx, 0x0081_0000);
    assert_eq!(msg(&mut vm, ch, subcmd::SENDPAYLOAD, 0).ecx, 0);

    // Without the cookie flag, cookies are not checked.
    let (_, plain) = open(&mut vm, PROTO_RPCI);
    send_lb(&mut vm, Ch(plain.0, 0, 0), b"log");
    assert_eq!(
        msg(&mut vm, Ch(plain.0, 7, 7), subcmd::RECVSIZE, 0).ecx,
        0x0083_0000
    );
}

#[test]
fn channel_zero_never_has_zero_cookies() {
    for seed in 0..2000u64 {
        let mut vm = FakeVcpu::new();
        vm.channels = guestrpc::host::Channels::new(seed);
        let (r, _) = open(&mut vm, PROTO_TCLO | FLAG_COOKIE);
        assert_eq!(r.edx >> 16, 0);
        assert!(r.esi != 0 || r.edi != 0, "seed {seed}");
    }
}

#[test]
fn hb_registers() {
    let mut vm = FakeVcpu::new();
    let (_, ch) = open(&mut vm, PROTO_RPCI | FLAG_COOKIE);
    let req = b"info-set guestinfo.hb value";
    assert_eq!(
        msg(&mut vm, ch, subcmd::SENDSIZE, req.len() as u32).ecx,
        0x0081_0000
    );
    // OUT: ESI = buffer, EBP = cookie1, EDI = cookie2.
    let mut r = Regs {
        eax: MAGIC,
        ebx: HB_EBX,
        ecx: req.len() as u32,
        edx: ch.0 | u32::from(PORT_HB),
        esi: 0,
        edi: ch.2,
        ebp: ch.1,
    };
    vm.hb_out(&mut r, req);
    assert_eq!(r.ebx, 0x0001_0000, "HB success leaves EBX = 0x00010000");
    let r = msg(&mut vm, ch, subcmd::RECVSIZE, 0);
    assert_eq!((r.ecx, r.ebx), (0x0083_0000, 2));
    // IN: EDI = buffer, ESI = cookie1, EBP = cookie2.
    let mut r = Regs {
        eax: MAGIC,
        ebx: HB_EBX,
        ecx: 2,
        edx: ch.0 | u32::from(PORT_HB),
        esi: ch.1,
        edi: 0,
        ebp: ch.2,
    };
    let mut buf = [0u8; 2];
    vm.hb_in(&mut r, &mut buf);
    assert_eq!((r.ebx, &buf), (0x0001_0000, b"1 "));
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSTATUS, 1).ecx, 0x0001_0000);
    assert_eq!(vm.tools.get_guestinfo("hb"), Some(&b"value"[..]));

    // Cookies swapped (LB order) are refused; so is more data than declared.
    assert_eq!(msg(&mut vm, ch, subcmd::SENDSIZE, 3).ecx, 0x0081_0000);
    let mut bad = Regs {
        eax: MAGIC,
        ebx: HB_EBX,
        ecx: 3,
        edx: ch.0 | 0x5659,
        esi: 0,
        edi: ch.1,
        ebp: ch.2,
    };
    assert!(!vm.channels.hb_out(&bad, b"log", &mut vm.tools));
    bad.edi = ch.2;
    bad.ebp = ch.1;
    assert!(
        !vm.channels.hb_out(&bad, b"log!", &mut vm.tools),
        "past the declared size"
    );
    // The over-long message was dropped: nothing to receive.
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSIZE, 0).ecx, 0x0081_0000);
    // Reading with nothing announced fails (and the device zeroes EBX).
    let mut r = Regs {
        eax: MAGIC,
        ebx: HB_EBX,
        ecx: 4,
        edx: ch.0 | 0x5659,
        esi: ch.1,
        edi: 0,
        ebp: ch.2,
    };
    let mut buf = [0xAAu8; 4];
    vm.hb_in(&mut r, &mut buf);
    assert_eq!((r.ebx, buf), (0, [0; 4]));
}

#[test]
fn tclo_registers() {
    let mut vm = FakeVcpu::new();
    let (r, ch) = open(&mut vm, PROTO_TCLO | FLAG_COOKIE);
    assert_eq!(r.ecx, 0x0001_0000);
    // Poll: SENDSIZE 0 completes at once.
    assert_eq!(msg(&mut vm, ch, subcmd::SENDSIZE, 0).ecx, 0x0081_0000);
    let r = msg(&mut vm, ch, subcmd::RECVSIZE, 0);
    assert_eq!((r.ecx, r.ebx, r.edx >> 16), (0x0083_0000, 5, 1));
    let r = msg(&mut vm, ch, subcmd::RECVPAYLOAD, 1);
    assert_eq!(&r.ebx.to_le_bytes(), b"rese");
    let r = msg(&mut vm, ch, subcmd::RECVPAYLOAD, 1);
    assert_eq!(r.ebx.to_le_bytes(), [b't', 0, 0, 0]);
    // vmt echoes the data id (1) as the RECVSTATUS argument.
    assert_eq!(msg(&mut vm, ch, subcmd::RECVSTATUS, 1).ecx, 0x0001_0000);
    send_lb(&mut vm, ch, b"OK ATR toolbox");
    assert!(vm.tools.has_toolbox_channel());
    let r = msg(&mut vm, ch, subcmd::CLOSE, 0);
    assert_eq!(r.ecx, 0x0001_0000);
    assert!(!vm.tools.has_toolbox_channel());
}
