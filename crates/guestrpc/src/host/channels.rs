//! The GuestRPC channel table: OPEN..CLOSE on the low-bandwidth port and
//! whole-message transfers on the high-bandwidth port (§3).
//!
//! Per channel there is at most one inbound message being assembled (up to
//! [`MAX_MESSAGE`] bytes, never more than its declared size) and one outbound
//! message (an RPCI reply or a TCLO command) being read by the guest. Any
//! step that does not fit the channel's state is answered with ECX = 0 and
//! changes nothing, so a confused or hostile guest cannot corrupt another
//! channel or make the host buffer more.

use alloc::vec::Vec;

use super::Service;
use crate::backdoor::{cmd, Regs, FAILURE, MAGIC};
use crate::proto::{
    status, status_word, subcmd, FLAG_COOKIE, HB_CMD_MESSAGE, MAX_CHANNELS, MAX_MESSAGE,
    MESSAGE_TYPE_SENDPAYLOAD, MESSAGE_TYPE_SENDSIZE, PROTO_RPCI, PROTO_TCLO,
};

/// Inbound buffer capacity kept between messages. Most requests are short;
/// a channel that once took a 64 KiB message gives the memory back.
const KEEP_CAPACITY: usize = 4096;

/// What a channel was opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Guest → host requests.
    Rpci,
    /// Host → guest commands.
    Tclo,
}

/// Where the outbound message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// Nothing to send.
    Empty,
    /// An RPCI reply is ready; RECVSIZE will announce it.
    Ready,
    /// RECVSIZE announced it; payload reads are allowed until RECVSTATUS.
    Announced,
}

#[derive(Clone, Debug)]
struct Chan {
    proto: Protocol,
    cookie1: u32,
    cookie2: u32,
    /// Opened with [`FLAG_COOKIE`]: only then are cookies checked (§3).
    check_cookies: bool,
    /// SENDSIZE's declared size while a message is being received.
    expect: Option<usize>,
    inbound: Vec<u8>,
    out: Out,
    outbound: Vec<u8>,
    read_pos: usize,
}

impl Chan {
    fn cookies_match(&self, c1: u32, c2: u32) -> bool {
        !self.check_cookies || (self.cookie1 == c1 && self.cookie2 == c2)
    }

    fn drop_outbound(&mut self) {
        self.outbound.clear();
        self.out = Out::Empty;
        self.read_pos = 0;
    }

    /// Installs an outbound message, cut to [`MAX_MESSAGE`] so a service
    /// cannot make the table exceed its memory bound.
    fn set_outbound(&mut self, mut msg: Vec<u8>, out: Out) {
        msg.truncate(MAX_MESSAGE);
        msg.shrink_to(MAX_MESSAGE);
        self.outbound = msg;
        self.out = out;
        self.read_pos = 0;
    }

    fn remaining_in(&self) -> usize {
        self.expect
            .map_or(0, |n| n.saturating_sub(self.inbound.len()))
    }

    fn remaining_out(&self) -> &[u8] {
        self.outbound.get(self.read_pos..).unwrap_or(&[])
    }
}

/// A small deterministic PRNG (SplitMix64) for cookies. Cookies only stop a
/// guest process from stepping on another process's channel by accident or
/// by guessing; they are not a security boundary against the guest kernel,
/// which sees all registers anyway. So no OS randomness is needed, and the
/// caller's seed keeps tests reproducible.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The channel table of one VM.
///
/// `Clone` is the snapshot: channel state must survive a save/restore,
/// because vmt never recovers a TCLO channel the host forgot (§3).
#[derive(Clone, Debug)]
pub struct Channels {
    slots: [Option<Chan>; MAX_CHANNELS],
    rng: SplitMix64,
}

/// A step the channel's state does not allow; the reply is ECX = 0.
struct Refused;

type Step = Result<(), Refused>;

impl Channels {
    /// An empty table; `seed` feeds the cookie generator (the VMM passes
    /// something per-VM, e.g. from the clock or getrandom).
    pub fn new(seed: u64) -> Self {
        Channels {
            slots: core::array::from_fn(|_| None),
            rng: SplitMix64(seed),
        }
    }

    /// Closes every channel, as a VM reset does: the rebooted guest's tools
    /// open new ones, and the old ones would only fill the table. `svc`
    /// hears of each TCLO channel closed.
    pub fn reset(&mut self, svc: &mut impl Service) {
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if let Some(c) = slot.take() {
                if c.proto == Protocol::Tclo {
                    svc.tclo_closed(id as u16);
                }
            }
        }
    }

    /// Channels currently open.
    pub fn open_count(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// The protocol of channel `id`, if open.
    pub fn protocol(&self, id: u16) -> Option<Protocol> {
        self.slot(id).map(|c| c.proto)
    }

    /// Bytes of buffer memory the table holds: at most
    /// `MAX_CHANNELS * 2 * MAX_MESSAGE` plus allocator rounding.
    pub fn buffered_bytes(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|c| c.inbound.capacity() + c.outbound.capacity())
            .sum()
    }

    fn slot(&self, id: u16) -> Option<&Chan> {
        self.slots.get(usize::from(id))?.as_ref()
    }

    /// The open channel `id` if the cookies fit it.
    fn lookup(&mut self, id: u16, c1: u32, c2: u32) -> Result<&mut Chan, Refused> {
        match self.slots.get_mut(usize::from(id)) {
            Some(Some(c)) if c.cookies_match(c1, c2) => Ok(c),
            _ => Err(Refused),
        }
    }

    /// Handles a low-bandwidth MESSAGE call (command 30) in place.
    ///
    /// Success replies carry SUCCESS (plus HB/DORECV where §3 says) in
    /// `ECX[31:16]` and always zero in `ECX[15:0]`; a refused step gets ECX = 0
    /// and no other change. EAX is left as the magic.
    pub fn message(&mut self, regs: &mut Regs, svc: &mut impl Service) {
        if regs.eax != MAGIC || regs.command() != cmd::MESSAGE {
            regs.eax = FAILURE;
            return;
        }
        let result = match regs.subcommand() {
            subcmd::OPEN => self.open(regs, svc),
            subcmd::SENDSIZE => self.send_size(regs, svc),
            subcmd::SENDPAYLOAD => self.send_payload(regs, svc),
            subcmd::RECVSIZE => self.recv_size(regs, svc),
            subcmd::RECVPAYLOAD => self.recv_payload(regs),
            subcmd::RECVSTATUS => self.recv_status(regs, svc),
            subcmd::CLOSE => self.close(regs, svc),
            _ => Err(Refused),
        };
        if result.is_err() {
            regs.ecx = 0;
        }
    }

    fn open(&mut self, regs: &mut Regs, svc: &mut impl Service) -> Step {
        let proto = match regs.ebx & !FLAG_COOKIE {
            PROTO_RPCI => Protocol::Rpci,
            PROTO_TCLO => Protocol::Tclo,
            _ => return Err(Refused),
        };
        let free = self.slots.iter().position(Option::is_none).ok_or(Refused)?;
        let id = u16::try_from(free).map_err(|_| Refused)?;
        let r = self.rng.next();
        let (mut cookie1, cookie2) = (r as u32, (r >> 32) as u32);
        if cookie1 == 0 && cookie2 == 0 {
            // BSD vmt reads channel 0 with zero cookies as "closed" (§3).
            cookie1 = 1;
        }
        let slot = self.slots.get_mut(free).ok_or(Refused)?;
        *slot = Some(Chan {
            proto,
            cookie1,
            cookie2,
            check_cookies: regs.ebx & FLAG_COOKIE != 0,
            expect: None,
            inbound: Vec::new(),
            out: Out::Empty,
            outbound: Vec::new(),
            read_pos: 0,
        });
        regs.ecx = status_word(status::SUCCESS);
        regs.edx = u32::from(id) << 16;
        regs.esi = cookie1;
        regs.edi = cookie2;
        if proto == Protocol::Tclo {
            svc.tclo_opened(id);
        }
        Ok(())
    }

    fn send_size(&mut self, regs: &mut Regs, svc: &mut impl Service) -> Step {
        let id = regs.channel();
        let chan = self.lookup(id, regs.esi, regs.edi)?;
        let size = regs.ebx as usize;
        if size > MAX_MESSAGE {
            return Err(Refused);
        }
        // A new message supersedes anything half-done on this channel: a
        // guest that restarts (after an error or a checkpoint) starts here.
        chan.drop_outbound();
        chan.inbound.clear();
        chan.inbound.shrink_to(KEEP_CAPACITY.max(size));
        chan.inbound.reserve_exact(size);
        chan.expect = Some(size);
        regs.ecx = status_word(status::SUCCESS | status::HB);
        if size == 0 {
            Self::complete(id, chan, svc);
        }
        Ok(())
    }

    fn send_payload(&mut self, regs: &mut Regs, svc: &mut impl Service) -> Step {
        let id = regs.channel();
        let chan = self.lookup(id, regs.esi, regs.edi)?;
        let take = chan.remaining_in().min(4);
        if take == 0 {
            // No SENDSIZE in progress: payload past the declared size is
            // refused, never stored.
            return Err(Refused);
        }
        let word = regs.ebx.to_le_bytes();
        chan.inbound
            .extend_from_slice(word.get(..take).ok_or(Refused)?);
        regs.ecx = status_word(status::SUCCESS);
        if chan.remaining_in() == 0 {
            Self::complete(id, chan, svc);
        }
        Ok(())
    }

    /// The inbound message is whole: hand it to the service.
    fn complete(id: u16, chan: &mut Chan, svc: &mut impl Service) {
        chan.expect = None;
        match chan.proto {
            Protocol::Rpci => {
                let reply = svc.rpci(&chan.inbound);
                chan.set_outbound(reply, Out::Ready);
            }
            Protocol::Tclo => svc.tclo_sent(id, &chan.inbound),
        }
        chan.inbound.clear();
        chan.inbound.shrink_to(KEEP_CAPACITY);
    }

    fn recv_size(&mut self, regs: &mut Regs, svc: &mut impl Service) -> Step {
        let id = regs.channel();
        let chan = self.lookup(id, regs.esi, regs.edi)?;
        if chan.expect.is_some() {
            // Receiving in the middle of a send: the guest lost track.
            return Err(Refused);
        }
        if chan.out == Out::Empty && chan.proto == Protocol::Tclo {
            if let Some(cmd) = svc.tclo_next(id) {
                chan.set_outbound(cmd, Out::Announced);
            }
        }
        if chan.out == Out::Empty {
            regs.ecx = status_word(status::SUCCESS | status::HB);
            regs.ebx = 0;
        } else {
            // Asking again restarts the read from the beginning.
            chan.out = Out::Announced;
            chan.read_pos = 0;
            regs.ecx = status_word(status::SUCCESS | status::DORECV | status::HB);
            regs.ebx = chan.outbound.len() as u32;
            regs.edx = u32::from(MESSAGE_TYPE_SENDSIZE) << 16;
        }
        Ok(())
    }

    fn recv_payload(&mut self, regs: &mut Regs) -> Step {
        let chan = self.lookup(regs.channel(), regs.esi, regs.edi)?;
        if chan.out != Out::Announced {
            return Err(Refused);
        }
        let rest = chan.remaining_out();
        let take = rest.len().min(4);
        if take == 0 {
            return Err(Refused);
        }
        let mut word = [0u8; 4];
        word.get_mut(..take)
            .zip(rest.get(..take))
            .map(|(d, s)| d.copy_from_slice(s))
            .ok_or(Refused)?;
        chan.read_pos = chan.read_pos.saturating_add(take);
        regs.ebx = u32::from_le_bytes(word);
        regs.edx = u32::from(MESSAGE_TYPE_SENDPAYLOAD) << 16;
        regs.ecx = status_word(status::SUCCESS);
        Ok(())
    }

    fn recv_status(&mut self, regs: &mut Regs, svc: &mut impl Service) -> Step {
        let id = regs.channel();
        let chan = self.lookup(id, regs.esi, regs.edi)?;
        if chan.out != Out::Announced {
            return Err(Refused);
        }
        // Consumed whatever the guest says, even if only part was read.
        chan.drop_outbound();
        if chan.proto == Protocol::Tclo {
            svc.tclo_delivered(id, regs.ebx & u32::from(status::SUCCESS) != 0);
        }
        regs.ecx = status_word(status::SUCCESS);
        Ok(())
    }

    fn close(&mut self, regs: &mut Regs, svc: &mut impl Service) -> Step {
        let id = regs.channel();
        let proto = self.lookup(id, regs.esi, regs.edi)?.proto;
        if let Some(slot) = self.slots.get_mut(usize::from(id)) {
            *slot = None;
        }
        if proto == Protocol::Tclo {
            svc.tclo_closed(id);
        }
        regs.ecx = status_word(status::SUCCESS);
        Ok(())
    }

    /// Checks the registers of a high-bandwidth exit and finds the channel.
    fn hb_lookup(&mut self, regs: &Regs, c1: u32, c2: u32) -> Result<&mut Chan, Refused> {
        if regs.eax != MAGIC || regs.ebx as u16 != HB_CMD_MESSAGE {
            return Err(Refused);
        }
        self.lookup(regs.channel(), c1, c2)
    }

    /// Guest → host bytes of a `rep outsb` to port 0x5659, appended to the
    /// message that SENDSIZE announced. `regs` are those of the exit (under
    /// KVM one exit per byte): `EDX[31:16]` = channel, EBP = cookie 1,
    /// EDI = cookie 2. The message goes to `svc` when the declared size is
    /// reached. Returns false (the device then sets EBX = 0) when the
    /// transfer is refused; bytes beyond the declared size drop the whole
    /// message.
    pub fn hb_out(&mut self, regs: &Regs, data: &[u8], svc: &mut impl Service) -> bool {
        let id = regs.channel();
        let Ok(chan) = self.hb_lookup(regs, regs.ebp, regs.edi) else {
            return false;
        };
        let remaining = chan.remaining_in();
        if chan.expect.is_none() || data.len() > remaining {
            chan.expect = None;
            chan.inbound.clear();
            return false;
        }
        chan.inbound.extend_from_slice(data);
        if chan.remaining_in() == 0 {
            Self::complete(id, chan, svc);
        }
        true
    }

    /// Host → guest bytes for a `rep insb` from port 0x5659, from the
    /// announced message's read offset. `regs` are those of the exit (under
    /// KVM the values before this chunk): `EDX[31:16]` = channel, ESI =
    /// cookie 1, EBP = cookie 2. Fills all of `buf`; returns false (and fills
    /// zeros) when the channel is not receiving or the message is shorter.
    pub fn hb_in(&mut self, regs: &Regs, buf: &mut [u8]) -> bool {
        buf.fill(0);
        let Ok(chan) = self.hb_lookup(regs, regs.esi, regs.ebp) else {
            return false;
        };
        if chan.out != Out::Announced {
            return false;
        }
        let rest = chan.remaining_out();
        let take = rest.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..take), rest.get(..take)) {
            dst.copy_from_slice(src);
        }
        chan.read_pos = chan.read_pos.saturating_add(take);
        take == buf.len()
    }
}
