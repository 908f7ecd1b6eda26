//! GuestRPC: the message protocol carried by backdoor command 30
//! (guest-channel.md §3).
//!
//! A channel is opened for one of two protocols: RPCI (the guest sends a
//! request, the host replies) or TCLO (the host's commands, polled by the
//! guest). Each message is a size step followed by 4-byte payload steps on the
//! low-bandwidth port, or one string instruction on the high-bandwidth port.

/// Sub-commands, in `ECX[31:16]` of a MESSAGE call.
pub mod subcmd {
    /// Open a channel; EBX = protocol, optionally | [`super::FLAG_COOKIE`].
    pub const OPEN: u16 = 0;
    /// Announce the size of the message the guest sends (EBX).
    pub const SENDSIZE: u16 = 1;
    /// Four more bytes of the guest's message (EBX, little-endian).
    pub const SENDPAYLOAD: u16 = 2;
    /// Ask for the size of the message waiting for the guest.
    pub const RECVSIZE: u16 = 3;
    /// Fetch four more bytes of the waiting message.
    pub const RECVPAYLOAD: u16 = 4;
    /// End a receive: EBX = 1 (got it) or 0 (failed); either way it is gone.
    pub const RECVSTATUS: u16 = 5;
    /// Close the channel.
    pub const CLOSE: u16 = 6;
}

/// Status bits, in `ECX[31:16]` of replies (and `EBX[31:16]` of HB transfers).
pub mod status {
    /// The step succeeded.
    pub const SUCCESS: u16 = 0x01;
    /// A message is waiting for the guest.
    pub const DORECV: u16 = 0x02;
    /// The channel is closed.
    pub const CLOSED: u16 = 0x04;
    /// The message was withdrawn before the guest fetched it.
    pub const UNSENT: u16 = 0x08;
    /// A checkpoint happened; open-vm-tools restarts the whole transfer.
    pub const CPT: u16 = 0x10;
    /// The device is powering off.
    pub const POWEROFF: u16 = 0x20;
    /// The channel timed out.
    pub const TIMEOUT: u16 = 0x40;
    /// The high-bandwidth port 0x5659 may be used for this message.
    pub const HB: u16 = 0x80;
}

/// Protocol number of RPCI ("RPCI" little-endian): guest → host requests.
pub const PROTO_RPCI: u32 = 0x4943_5052;
/// Protocol number of TCLO ("TCLO" little-endian): host → guest commands.
pub const PROTO_TCLO: u32 = 0x4F4C_4354;
/// OPEN flag: the host checks the cookies on every later call.
pub const FLAG_COOKIE: u32 = 0x8000_0000;

/// `EDX[31:16]` of a RECVSIZE reply with a message. open-vm-tools fails on any
/// other value; vmt echoes it back as the RECVSTATUS argument.
pub const MESSAGE_TYPE_SENDSIZE: u16 = 1;
/// `EDX[31:16]` of a RECVPAYLOAD reply (open-vm-tools checks it).
pub const MESSAGE_TYPE_SENDPAYLOAD: u16 = 2;

/// Command number in `EBX[15:0]` of a high-bandwidth transfer.
pub const HB_CMD_MESSAGE: u16 = 0;
/// EBX of a high-bandwidth transfer, in and (on success) out: SUCCESS in the
/// high half, [`HB_CMD_MESSAGE`] in the low half. OpenBSD and NetBSD compare
/// it for equality.
pub const HB_EBX: u32 = (status::SUCCESS as u32) << 16 | HB_CMD_MESSAGE as u32;

/// Channels open at once per VM.
///
/// VMware allows 128. Sixteen covers what real guests keep open (vmtoolsd:
/// one TCLO and one RPCI channel per service, two services; vmt: one TCLO)
/// plus a dozen concurrent one-shot RPCI callers (`vmware-rpctool`, vmt's
/// per-request channels), while bounding the worst case a hostile guest can
/// make the host hold to 16 × (64 KiB in + 64 KiB out) = 2 MiB.
pub const MAX_CHANNELS: usize = 16;
/// The largest message in either direction (VMware's `GUESTMSG_MAX_IN_SIZE`).
/// A larger SENDSIZE is refused.
pub const MAX_MESSAGE: usize = 65536;

/// ECX (or HB EBX) with `bits` in the status half and the low half clear.
///
/// Replies always clear `ECX[15:0]`: OpenBSD's and NetBSD's open/close fail
/// when the low half is not zero.
pub const fn status_word(bits: u16) -> u32 {
    (bits as u32) << 16
}

/// The status half of a reply word.
pub const fn status_of(word: u32) -> u16 {
    (word >> 16) as u16
}

/// Prefix of a successful RPCI reply.
pub const RPCI_OK: &[u8] = b"1 ";
/// Prefix of a failed RPCI reply.
pub const RPCI_ERR: &[u8] = b"0 ";
/// The reply to an RPCI request the host does not know (§4).
pub const RPCI_UNKNOWN_COMMAND: &[u8] = b"0 Unknown command";

/// Splits an RPCI reply into its payload: `Ok` after `"1 "`, `Err` with the
/// text after `"0 "`, and `Err` with the whole reply for any other prefix
/// (which open-vm-tools reports as "Invalid format").
pub fn split_rpci_reply(reply: &[u8]) -> Result<&[u8], &[u8]> {
    let reply = crate::text::until_nul(reply);
    if let Some(rest) = reply.strip_prefix(RPCI_OK) {
        Ok(rest)
    } else if reply == b"1" {
        Ok(&[])
    } else if let Some(rest) = reply.strip_prefix(RPCI_ERR) {
        Err(rest)
    } else {
        Err(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_words() {
        assert_eq!(status_word(status::SUCCESS | status::HB), 0x0081_0000);
        assert_eq!(
            status_word(status::SUCCESS | status::DORECV | status::HB),
            0x0083_0000
        );
        assert_eq!(HB_EBX, 0x0001_0000);
        assert_eq!(&PROTO_RPCI.to_le_bytes(), b"RPCI");
        assert_eq!(&PROTO_TCLO.to_le_bytes(), b"TCLO");
    }

    #[test]
    fn rpci_replies() {
        assert_eq!(split_rpci_reply(b"1 bar\0"), Ok(&b"bar"[..]));
        assert_eq!(split_rpci_reply(b"1"), Ok(&b""[..]));
        assert_eq!(
            split_rpci_reply(b"0 No value found"),
            Err(&b"No value found"[..])
        );
        assert_eq!(split_rpci_reply(b"what"), Err(&b"what"[..]));
    }
}
