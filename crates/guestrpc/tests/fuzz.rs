//! Fuzzing the host side: arbitrary backdoor exits must never panic, and the
//! memory the host holds for a VM must stay bounded.
//!
//! Purely random registers almost never get past the magic and cookie
//! checks, so most operations are built from a few random choices on top of
//! real protocol values (the magic, a sub-command, a channel id, the cookies
//! the host handed out), and some message bodies come from a dictionary of
//! real requests. A share of operations stays fully random.
//!
//! Longer runs: `PROPTEST_CASES=100000 cargo test -p guestrpc --test fuzz` (debug
//! build: it keeps the overflow checks).

#![cfg(feature = "alloc")]

use guestrpc::backdoor::{cmd, Regs, MAGIC, PORT_HB, PORT_LB};
use guestrpc::host::{self, Channels, Tools, MAX_GUESTINFO_BYTES, MAX_QUEUED_COMMANDS};
use guestrpc::proto::{
    subcmd, FLAG_COOKIE, HB_EBX, MAX_CHANNELS, MAX_MESSAGE, PROTO_RPCI, PROTO_TCLO,
};
use guestrpc::tclo::TcloCommand;
use guestrpc::testing::FakePlatform;
use proptest::prelude::*;

/// The bound the brief sets: every channel full in both directions.
const MEMORY_BOUND: usize = MAX_CHANNELS * 2 * (MAX_MESSAGE + 16);

const DICTIONARY: &[&[u8]] = &[
    b"info-set guestinfo.a 1",
    b"info-set guestinfo.ip 10.0.0.1",
    b"info-get guestinfo.a",
    b"info-get guestinfo.a\0\0\0\0",
    b"SetGuestInfo  1 host",
    b"SetGuestInfo  2 10.1.1.1",
    b"SetGuestInfo  7 999",
    b"SetGuestInfo  10 \0\0\0\x03\0\0\0\x01\0\0\0\x01\0\0\0\x01m\0\0\0\0\0\0\x01",
    b"SetGuestInfo  10 ",
    b"SetGuestInfo",
    b"tools.os.statechange.status 1 1",
    b"tools.os.statechange.status x",
    b"tools.set.version 7",
    b"tools.capability.hgfs_server toolbox 1",
    b"OK ATR toolbox",
    b"OK ",
    b"ERROR Unknown command",
    b"",
];

/// One fuzz operation; the numbers are raw choices resolved by [`Harness`].
#[derive(Clone, Debug)]
enum Op {
    /// Completely arbitrary registers on the LB port.
    RawLb(Regs),
    /// A MESSAGE call with protocol-shaped registers.
    Msg {
        sub: u16,
        chan: u16,
        cookies: u8,
        ebx: u32,
        size_class: u8,
    },
    /// A whole message on one channel (SENDSIZE + payload), LB or HB.
    Whole {
        chan: u16,
        dict: u8,
        tail: Vec<u8>,
        hb: bool,
        wrong_size: i8,
    },
    /// HB out with protocol-shaped registers.
    HbOut {
        chan: u16,
        cookies: u8,
        data: Vec<u8>,
    },
    /// HB in of `len` bytes.
    HbIn {
        chan: u16,
        cookies: u8,
        len: u16,
    },
    /// Arbitrary HB registers.
    RawHb {
        regs: Regs,
        data: Vec<u8>,
        out: bool,
    },
    /// Host side: queue a command, advance time, set guestinfo.
    Queue(u8),
    Tick(u16),
    HostSet(u8, u16),
}

struct Harness {
    channels: Channels,
    tools: Tools,
    platform: FakePlatform,
    now: u64,
    /// Cookies of the channels the host opened, as the guest saw them.
    cookies: [(u32, u32); MAX_CHANNELS],
}

impl Harness {
    fn new(seed: u64) -> Self {
        Harness {
            channels: Channels::new(seed),
            tools: Tools::new(3000),
            platform: FakePlatform {
                time_us: Some(1),
                ..FakePlatform::default()
            },
            now: 0,
            cookies: [(0, 0); MAX_CHANNELS],
        }
    }

    fn cookie_pair(&self, chan: u16, mode: u8) -> (u32, u32) {
        let known = self
            .cookies
            .get(usize::from(chan))
            .copied()
            .unwrap_or((0, 0));
        match mode % 4 {
            0 | 1 => known,
            2 => (known.0 ^ 1, known.1),
            _ => (u32::from(mode), u32::from(mode).rotate_left(7)),
        }
    }

    fn lb(&mut self, regs: &mut Regs) {
        self.tools.set_now(self.now);
        let before = *regs;
        host::handle_lb(regs, &self.platform, &mut self.channels, &mut self.tools);
        if before.eax == MAGIC
            && before.command() == cmd::MESSAGE
            && before.subcommand() == subcmd::OPEN
            && regs.ecx != 0
        {
            if let Some(c) = self.cookies.get_mut(usize::from(regs.channel())) {
                *c = (regs.esi, regs.edi);
            }
        }
    }

    fn msg_regs(&self, sub: u16, chan: u16, cookies: u8, ebx: u32) -> Regs {
        let (esi, edi) = self.cookie_pair(chan, cookies);
        Regs {
            eax: MAGIC,
            ebx,
            ecx: u32::from(sub) << 16 | u32::from(cmd::MESSAGE),
            edx: u32::from(chan) << 16 | u32::from(PORT_LB),
            esi,
            edi,
            ebp: 0,
        }
    }

    fn hb_regs(&self, chan: u16, cookies: u8, len: usize, out: bool) -> Regs {
        let (c1, c2) = self.cookie_pair(chan, cookies);
        let mut r = Regs {
            eax: MAGIC,
            ebx: HB_EBX,
            ecx: len as u32,
            edx: u32::from(chan) << 16 | u32::from(PORT_HB),
            ..Regs::default()
        };
        if out {
            r.ebp = c1;
            r.edi = c2;
        } else {
            r.esi = c1;
            r.ebp = c2;
        }
        r
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::RawLb(mut r) => self.lb(&mut r),
            Op::Msg {
                sub,
                chan,
                cookies,
                ebx,
                size_class,
            } => {
                let ebx = match (sub % 8, size_class % 4) {
                    (subcmd::OPEN, 0) => PROTO_RPCI | FLAG_COOKIE,
                    (subcmd::OPEN, 1) => PROTO_TCLO | FLAG_COOKIE,
                    (subcmd::OPEN, 2) => PROTO_TCLO,
                    (subcmd::SENDSIZE, 0) => ebx % 64,
                    (subcmd::SENDSIZE, 1) => MAX_MESSAGE as u32 - (ebx % 8),
                    (subcmd::SENDSIZE, 2) => MAX_MESSAGE as u32 + (ebx % 8),
                    _ => ebx,
                };
                let mut r = self.msg_regs(sub % 8, chan % 18, cookies, ebx);
                self.lb(&mut r);
            }
            Op::Whole {
                chan,
                dict,
                tail,
                hb,
                wrong_size,
            } => {
                let chan = chan % 17;
                let mut body = DICTIONARY[usize::from(dict) % DICTIONARY.len()].to_vec();
                body.extend_from_slice(&tail);
                let declared = (body.len() as i64 + i64::from(wrong_size.signum())).max(0) as u32;
                let mut r = self.msg_regs(subcmd::SENDSIZE, chan, 0, declared);
                self.lb(&mut r);
                if hb {
                    let regs = self.hb_regs(chan, 0, body.len(), true);
                    for b in &body {
                        self.tools.set_now(self.now);
                        self.channels.hb_out(&regs, &[*b], &mut self.tools);
                    }
                } else {
                    for c in body.chunks(4) {
                        let mut w = [0u8; 4];
                        w[..c.len()].copy_from_slice(c);
                        let mut r =
                            self.msg_regs(subcmd::SENDPAYLOAD, chan, 0, u32::from_le_bytes(w));
                        self.lb(&mut r);
                    }
                }
                let mut r = self.msg_regs(subcmd::RECVSIZE, chan, 0, 0);
                self.lb(&mut r);
                let len = (r.ebx as usize).min(MAX_MESSAGE + 8);
                if hb {
                    let regs = self.hb_regs(chan, 0, len, false);
                    let mut buf = vec![0u8; len];
                    for c in buf.chunks_mut(1024) {
                        self.channels.hb_in(&regs, c);
                    }
                } else {
                    for _ in 0..len.div_ceil(4).min(64) {
                        let mut r = self.msg_regs(subcmd::RECVPAYLOAD, chan, 0, 1);
                        self.lb(&mut r);
                    }
                }
                let mut r = self.msg_regs(subcmd::RECVSTATUS, chan, 0, u32::from(hb));
                self.lb(&mut r);
            }
            Op::HbOut {
                chan,
                cookies,
                data,
            } => {
                let regs = self.hb_regs(chan % 17, cookies, data.len(), true);
                self.tools.set_now(self.now);
                self.channels.hb_out(&regs, &data, &mut self.tools);
            }
            Op::HbIn { chan, cookies, len } => {
                let regs = self.hb_regs(chan % 17, cookies, usize::from(len), false);
                let mut buf = vec![0u8; usize::from(len)];
                self.channels.hb_in(&regs, &mut buf);
            }
            Op::RawHb { regs, data, out } => {
                if out {
                    self.channels.hb_out(&regs, &data, &mut self.tools);
                } else {
                    let mut buf = data;
                    self.channels.hb_in(&regs, &mut buf);
                }
            }
            Op::Queue(n) => {
                let cmd = match n % 6 {
                    0 => TcloCommand::OsHalt,
                    1 => TcloCommand::Ping,
                    2 => TcloCommand::Reset,
                    3 => TcloCommand::SetOption("broadcastIP".into(), "1".into()),
                    4 => TcloCommand::Other("x".repeat(usize::from(n) * 300)),
                    _ => TcloCommand::OsReboot,
                };
                let _ = self.tools.queue(cmd);
            }
            Op::Tick(dt) => {
                self.now = self.now.wrapping_add(u64::from(dt));
                self.tools.tick(self.now);
            }
            Op::HostSet(k, len) => {
                let _ = self
                    .tools
                    .set_guestinfo(&format!("h{k}"), &vec![b'v'; usize::from(len)]);
            }
        }
        self.check();
    }

    fn check(&self) {
        let held = self.channels.buffered_bytes();
        assert!(held <= MEMORY_BOUND, "channels hold {held} bytes");
        assert!(self.channels.open_count() <= MAX_CHANNELS);
        assert!(self.tools.guestinfo_bytes() <= MAX_GUESTINFO_BYTES);
        assert!(self.tools.queued() <= MAX_QUEUED_COMMANDS + MAX_CHANNELS);
    }
}

fn regs_strategy() -> impl Strategy<Value = Regs> {
    (any::<[u32; 7]>(), any::<bool>(), 0u16..8, 0u16..20).prop_map(|(w, shaped, sub, chan)| {
        let mut r = Regs {
            eax: w[0],
            ebx: w[1],
            ecx: w[2],
            edx: w[3],
            esi: w[4],
            edi: w[5],
            ebp: w[6],
        };
        if shaped {
            // Real magic and command, random everything else.
            r.eax = MAGIC;
            r.ecx = u32::from(sub) << 16 | u32::from(cmd::MESSAGE);
            r.edx = u32::from(chan) << 16 | (r.edx & 0xFFFF);
        }
        r
    })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => regs_strategy().prop_map(Op::RawLb),
        6 => (any::<u16>(), any::<u16>(), any::<u8>(), any::<u32>(), any::<u8>())
            .prop_map(|(sub, chan, cookies, ebx, size_class)| Op::Msg { sub, chan, cookies, ebx, size_class }),
        4 => (any::<u16>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64), any::<bool>(), -1i8..=1)
            .prop_map(|(chan, dict, tail, hb, wrong_size)| Op::Whole { chan, dict, tail, hb, wrong_size }),
        2 => (any::<u16>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..2048))
            .prop_map(|(chan, cookies, data)| Op::HbOut { chan, cookies, data }),
        2 => (any::<u16>(), any::<u8>(), 0u16..2048).prop_map(|(chan, cookies, len)| Op::HbIn { chan, cookies, len }),
        1 => (regs_strategy(), proptest::collection::vec(any::<u8>(), 0..256), any::<bool>())
            .prop_map(|(regs, data, out)| Op::RawHb { regs, data, out }),
        1 => any::<u8>().prop_map(Op::Queue),
        1 => any::<u16>().prop_map(Op::Tick),
        1 => (any::<u8>(), any::<u16>()).prop_map(|(k, l)| Op::HostSet(k, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_host_never_panics(seed in any::<u64>(), ops in proptest::collection::vec(op_strategy(), 1..200)) {
        let mut h = Harness::new(seed);
        for op in ops {
            h.step(op);
        }
    }
}

/// SplitMix64, for a reproducible sequence without proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A fixed 100 000-step sequence: the same coverage as the proptest cases
/// every run, and a long single history (channels filling, timeouts firing).
#[test]
fn fuzz_deterministic_100k() {
    let mut rng = Rng(0x0dd_ba11);
    let mut h = Harness::new(rng.next());
    let mut max_held = 0;
    for _ in 0..100_000 {
        let op = match rng.below(20) {
            0 | 1 => {
                let mut r = Regs {
                    eax: rng.u32(),
                    ebx: rng.u32(),
                    ecx: rng.u32(),
                    edx: rng.u32(),
                    esi: rng.u32(),
                    edi: rng.u32(),
                    ebp: rng.u32(),
                };
                if rng.below(2) == 0 {
                    r.eax = MAGIC;
                    r.ecx = (r.ecx & 0x7_0000) | u32::from(cmd::MESSAGE);
                    r.edx &= 0x000F_FFFF;
                }
                Op::RawLb(r)
            }
            2..=9 => Op::Msg {
                sub: rng.below(8) as u16,
                chan: rng.below(18) as u16,
                cookies: rng.next() as u8,
                ebx: rng.u32(),
                size_class: rng.next() as u8,
            },
            10..=13 => Op::Whole {
                chan: rng.below(17) as u16,
                dict: rng.next() as u8,
                tail: rng.bytes(32),
                hb: rng.below(2) == 0,
                wrong_size: rng.below(3) as i8 - 1,
            },
            14 => Op::HbOut {
                chan: rng.below(17) as u16,
                cookies: rng.next() as u8,
                data: rng.bytes(300),
            },
            15 => Op::HbIn {
                chan: rng.below(17) as u16,
                cookies: rng.next() as u8,
                len: rng.below(300) as u16,
            },
            16 => Op::RawHb {
                regs: Regs {
                    eax: MAGIC,
                    edx: rng.u32(),
                    ..Regs::default()
                },
                data: rng.bytes(16),
                out: rng.below(2) == 0,
            },
            17 => Op::Queue(rng.next() as u8),
            18 => Op::Tick(rng.below(5000) as u16),
            _ => Op::HostSet(rng.next() as u8, rng.below(20_000) as u16),
        };
        h.step(op);
        max_held = max_held.max(h.channels.buffered_bytes());
    }
    // The sequence must actually have exercised big buffers and channels.
    assert!(max_held > MAX_MESSAGE, "max buffered {max_held}");
    assert!(h.tools.guest_state().tools_present);
}
