//! The guest end: GuestRPC channels over a [`Backdoor`], without allocation.
//!
//! It behaves like open-vm-tools' message layer, so that it works against
//! real VMware as well as our host: OPEN with the cookie flag and again
//! without it, the high-bandwidth port only when the host's SENDSIZE /
//! RECVSIZE reply carries the HB bit, a whole-transfer retry when the host
//! reports a checkpoint, RECVSTATUS after every receive.

mod tclo;

pub use tclo::{tclo_poll, TcloSession, MAX_TCLO_REPLY};

use crate::backdoor::{cmd, Regs, FAILURE, MAGIC, PORT_HB, PORT_LB};
use crate::proto::{
    status, status_of, subcmd, FLAG_COOKIE, HB_EBX, MAX_MESSAGE, MESSAGE_TYPE_SENDPAYLOAD,
    MESSAGE_TYPE_SENDSIZE, PROTO_RPCI,
};

/// Executes backdoor calls. Implemented by [`crate::x86::PortIo`] for real
/// port I/O, and by test doubles that call the host side directly.
///
/// `regs` go in as §3 describes for each port and come back as the host left
/// them.
pub trait Backdoor {
    /// `inl (%dx), %eax` on the low-bandwidth port with all of `regs`.
    fn lb(&mut self, regs: &mut Regs);
    /// `rep outsb` of `data` to the high-bandwidth port. ESI (the buffer) and
    /// ECX (the count) are taken from `data`; EBP = cookie 1, EDI = cookie 2.
    fn hb_out(&mut self, regs: &mut Regs, data: &[u8]);
    /// `rep insb` of `buf.len()` bytes from the high-bandwidth port. EDI (the
    /// buffer) and ECX (the count) are taken from `buf`; ESI = cookie 1,
    /// EBP = cookie 2.
    fn hb_in(&mut self, regs: &mut Regs, buf: &mut [u8]);
    /// Whether to send payloads 4 bytes per low-bandwidth call even when the
    /// host offers the high-bandwidth port (receives still use it). Under
    /// KVM a `rep outsb` leaves the guest once per byte, four times as often
    /// as low-bandwidth words, while `rep insb` moves up to a page per exit;
    /// on VMware both are one trap, hence the default.
    fn prefer_lb_send(&self) -> bool {
        false
    }
}

/// Why a channel operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The host refused OPEN (no backdoor, no free channel, unknown protocol).
    OpenFailed,
    /// A send step failed.
    SendFailed,
    /// A receive step failed.
    RecvFailed,
    /// CLOSE failed.
    CloseFailed,
    /// The host answered with register values the protocol does not allow.
    Protocol,
    /// The message is larger than [`MAX_MESSAGE`].
    TooLarge,
    /// The incoming message (of this many bytes) does not fit the buffer; it
    /// has been discarded.
    BufferTooSmall(usize),
    /// A request could not be formatted into the caller's buffer.
    Format,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::OpenFailed => f.write_str("cannot open a GuestRPC channel"),
            Error::SendFailed => f.write_str("GuestRPC send failed"),
            Error::RecvFailed => f.write_str("GuestRPC receive failed"),
            Error::CloseFailed => f.write_str("GuestRPC close failed"),
            Error::Protocol => f.write_str("unexpected GuestRPC reply registers"),
            Error::TooLarge => f.write_str("message larger than 64 KiB"),
            Error::BufferTooSmall(n) => write!(f, "incoming message of {n} bytes does not fit"),
            Error::Format => f.write_str("request does not fit its buffer"),
        }
    }
}

impl From<crate::BufferTooSmall> for Error {
    fn from(_: crate::BufferTooSmall) -> Self {
        Error::Format
    }
}

/// How often a transfer is restarted after a checkpoint before giving up: a
/// checkpoint is rare, so more than a few in a row means something is wrong.
const CPT_RETRIES: usize = 4;

/// An open GuestRPC channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel {
    id: u16,
    cookie1: u32,
    cookie2: u32,
    /// Move payloads 4 bytes per low-bandwidth call even when the host offers
    /// the high-bandwidth port (tests, benchmarks, hosts with a broken HB).
    pub force_lb: bool,
}

impl Channel {
    /// Opens a channel for `proto` ([`PROTO_RPCI`] or
    /// [`crate::proto::PROTO_TCLO`]): first with the cookie flag, then, like
    /// open-vm-tools, without it for hosts that refuse the flag.
    pub fn open(bd: &mut impl Backdoor, proto: u32) -> Result<Channel, Error> {
        for flags in [FLAG_COOKIE, 0] {
            let mut r = Regs {
                eax: MAGIC,
                ebx: proto | flags,
                ecx: msg_ecx(subcmd::OPEN),
                edx: u32::from(PORT_LB),
                ..Regs::default()
            };
            bd.lb(&mut r);
            if status_of(r.ecx) & status::SUCCESS != 0 {
                return Ok(Channel {
                    id: r.channel(),
                    cookie1: r.esi,
                    cookie2: r.edi,
                    force_lb: false,
                });
            }
        }
        Err(Error::OpenFailed)
    }

    /// The channel id the host assigned.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Registers for a low-bandwidth MESSAGE step on this channel.
    fn lb_regs(&self, sub: u16, ebx: u32) -> Regs {
        Regs {
            eax: MAGIC,
            ebx,
            ecx: msg_ecx(sub),
            edx: u32::from(self.id) << 16 | u32::from(PORT_LB),
            esi: self.cookie1,
            edi: self.cookie2,
            ebp: 0,
        }
    }

    /// Registers for a high-bandwidth transfer of `len` bytes; the caller
    /// places the cookies, which sit in different registers per direction.
    fn hb_regs(&self, len: usize) -> Regs {
        Regs {
            eax: MAGIC,
            ebx: HB_EBX,
            ecx: len as u32,
            edx: u32::from(self.id) << 16 | u32::from(PORT_HB),
            ..Regs::default()
        }
    }

    /// Sends one message (empty is legal: a TCLO poll).
    pub fn send(&mut self, bd: &mut impl Backdoor, msg: &[u8]) -> Result<(), Error> {
        if msg.len() > MAX_MESSAGE {
            return Err(Error::TooLarge);
        }
        'retry: for _ in 0..CPT_RETRIES {
            let mut r = self.lb_regs(subcmd::SENDSIZE, msg.len() as u32);
            bd.lb(&mut r);
            let st = status_of(r.ecx);
            if st & status::SUCCESS == 0 {
                return Err(Error::SendFailed);
            }
            if msg.is_empty() {
                return Ok(());
            }
            if st & status::HB != 0 && !self.force_lb && !bd.prefer_lb_send() {
                let mut r = self.hb_regs(msg.len());
                r.ebp = self.cookie1;
                r.edi = self.cookie2;
                bd.hb_out(&mut r, msg);
                match outcome(r.ebx) {
                    Step::Ok => return Ok(()),
                    Step::Retry => continue 'retry,
                    Step::Fail => return Err(Error::SendFailed),
                }
            }
            for chunk in msg.chunks(4) {
                let mut word = [0u8; 4];
                word.get_mut(..chunk.len())
                    .ok_or(Error::SendFailed)?
                    .copy_from_slice(chunk);
                let mut r = self.lb_regs(subcmd::SENDPAYLOAD, u32::from_le_bytes(word));
                bd.lb(&mut r);
                match outcome(r.ecx) {
                    Step::Ok => {}
                    Step::Retry => continue 'retry,
                    Step::Fail => return Err(Error::SendFailed),
                }
            }
            return Ok(());
        }
        Err(Error::SendFailed)
    }

    /// Receives the waiting message into `buf`; `Ok(0)` when there is none.
    /// A message larger than `buf` is discarded (RECVSTATUS 0) and reported
    /// as [`Error::BufferTooSmall`] with its size.
    pub fn recv(&mut self, bd: &mut impl Backdoor, buf: &mut [u8]) -> Result<usize, Error> {
        'retry: for _ in 0..CPT_RETRIES {
            let mut r = self.lb_regs(subcmd::RECVSIZE, 0);
            bd.lb(&mut r);
            let st = status_of(r.ecx);
            if st & status::SUCCESS == 0 {
                return Err(Error::RecvFailed);
            }
            if st & status::DORECV == 0 {
                return Ok(0);
            }
            if r.channel() != MESSAGE_TYPE_SENDSIZE {
                return Err(Error::Protocol);
            }
            let len = r.ebx as usize;
            let Some(dst) = buf.get_mut(..len) else {
                // Ending the receive with a failure status drops the message,
                // so the channel is usable again.
                let mut r = self.lb_regs(subcmd::RECVSTATUS, 0);
                bd.lb(&mut r);
                return Err(Error::BufferTooSmall(len));
            };
            if len > 0 && st & status::HB != 0 && !self.force_lb {
                let mut r = self.hb_regs(len);
                r.esi = self.cookie1;
                r.ebp = self.cookie2;
                bd.hb_in(&mut r, dst);
                match outcome(r.ebx) {
                    Step::Ok => {}
                    Step::Retry => continue 'retry,
                    Step::Fail => return Err(Error::RecvFailed),
                }
            } else {
                for chunk in dst.chunks_mut(4) {
                    let mut r = self.lb_regs(subcmd::RECVPAYLOAD, u32::from(status::SUCCESS));
                    bd.lb(&mut r);
                    match outcome(r.ecx) {
                        Step::Ok => {}
                        Step::Retry => continue 'retry,
                        Step::Fail => return Err(Error::RecvFailed),
                    }
                    if r.channel() != MESSAGE_TYPE_SENDPAYLOAD {
                        return Err(Error::Protocol);
                    }
                    let word = r.ebx.to_le_bytes();
                    chunk.copy_from_slice(word.get(..chunk.len()).ok_or(Error::RecvFailed)?);
                }
            }
            let mut r = self.lb_regs(subcmd::RECVSTATUS, u32::from(status::SUCCESS));
            bd.lb(&mut r);
            match outcome(r.ecx) {
                Step::Ok => return Ok(len),
                Step::Retry => continue 'retry,
                Step::Fail => return Err(Error::RecvFailed),
            }
        }
        Err(Error::RecvFailed)
    }

    /// Sends `request` and receives the reply into `reply`: one RPCI call.
    pub fn call<'b>(
        &mut self,
        bd: &mut impl Backdoor,
        request: &[u8],
        reply: &'b mut [u8],
    ) -> Result<&'b [u8], Error> {
        self.send(bd, request)?;
        let n = self.recv(bd, reply)?;
        reply.get(..n).ok_or(Error::RecvFailed)
    }

    /// Closes the channel. vmt's check: success needs SUCCESS and a clear
    /// `ECX[15:0]`.
    pub fn close(self, bd: &mut impl Backdoor) -> Result<(), Error> {
        let mut r = self.lb_regs(subcmd::CLOSE, 0);
        bd.lb(&mut r);
        if status_of(r.ecx) & status::SUCCESS == 0 || r.ecx & 0xFFFF != 0 {
            return Err(Error::CloseFailed);
        }
        Ok(())
    }
}

/// ECX of a MESSAGE call.
fn msg_ecx(sub: u16) -> u32 {
    u32::from(sub) << 16 | u32::from(cmd::MESSAGE)
}

enum Step {
    Ok,
    Retry,
    Fail,
}

/// Reads the status of a low-bandwidth step (ECX) or of a high-bandwidth
/// transfer (EBX): a failure with CPT set restarts the transfer.
fn outcome(word: u32) -> Step {
    let st = status_of(word);
    if st & status::SUCCESS != 0 {
        Step::Ok
    } else if st & status::CPT != 0 {
        Step::Retry
    } else {
        Step::Fail
    }
}

/// One RPCI request on a fresh channel (open, send, receive, close), like
/// `vmware-rpctool`. Returns the whole reply (`"1 ..."` or `"0 ..."`; see
/// [`crate::proto::split_rpci_reply`]).
pub fn rpci<'b>(
    bd: &mut impl Backdoor,
    request: &[u8],
    reply: &'b mut [u8],
) -> Result<&'b [u8], Error> {
    let mut chan = Channel::open(bd, PROTO_RPCI)?;
    let result = chan.call(bd, request, reply);
    // The reply is what matters; a failed close only leaks a host slot that
    // the host reclaims with the VM.
    let _ = chan.close(bd);
    result
}

/// The backdoor presence check of `vmware-checkvm` and vmt: GETVERSION with
/// EBX = ~magic and `ECX[31:16]` = 0xFFFF. `Some((version, vmx_type))` when a
/// host answered (EBX = magic); open-vm-tools also requires version 6.
pub fn checkvm(bd: &mut impl Backdoor) -> Option<(u32, u32)> {
    let mut r = Regs {
        eax: MAGIC,
        ebx: !MAGIC,
        ecx: 0xFFFF_0000 | u32::from(cmd::GETVERSION),
        edx: u32::from(PORT_LB),
        ..Regs::default()
    };
    bd.lb(&mut r);
    (r.ebx == MAGIC && r.eax != FAILURE).then_some((r.eax, r.ecx))
}

/// vmt's probe: [`checkvm`] plus GETMHZ answered with something other than
/// the magic (which is what an absent backdoor leaves in EAX).
pub fn probe(bd: &mut impl Backdoor) -> bool {
    if checkvm(bd).is_none() {
        return false;
    }
    let mut r = Regs {
        eax: MAGIC,
        ebx: !MAGIC,
        ecx: 0xFFFF_0000 | u32::from(cmd::GETMHZ),
        edx: u32::from(PORT_LB),
        ..Regs::default()
    };
    bd.lb(&mut r);
    r.eax != MAGIC
}

/// Host time from GETTIMEFULL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostTime {
    /// Seconds since the Unix epoch, UTC.
    pub secs: u64,
    /// Microseconds within the second.
    pub usecs: u32,
    /// The host's bound on how far this may lag, in µs.
    pub max_lag_us: u32,
}

/// Reads the host clock (GETTIMEFULL). `None` when the host reports failure
/// (EAX changed from the magic) or returns a µs field out of range.
pub fn get_time_full(bd: &mut impl Backdoor) -> Option<HostTime> {
    let mut r = Regs {
        eax: MAGIC,
        ebx: 0,
        ecx: u32::from(cmd::GETTIMEFULL),
        edx: u32::from(PORT_LB),
        ..Regs::default()
    };
    bd.lb(&mut r);
    if r.eax != MAGIC || r.ebx >= 1_000_000 {
        return None;
    }
    Some(HostTime {
        secs: u64::from(r.esi) << 32 | u64::from(r.edx),
        usecs: r.ebx,
        max_lag_us: r.ecx,
    })
}
