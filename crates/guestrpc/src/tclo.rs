//! TCLO: the host's commands to the guest tools and their replies (§5),
//! shared by both ends so their wire strings cannot drift apart.
//!
//! The host queues a [`TcloCommand<String>`](TcloCommand) and sends its
//! [`Display`](core::fmt::Display) form; the guest parses the bytes it
//! received into a [`TcloCommand<&str>`](TcloCommand) without allocating.

use core::fmt;

use crate::text::{split_word, until_nul, utf8_prefix};

/// The guest's reply to `reset` (and what vmt sends unsolicited right after it
/// reopens its channel). Only a channel that answered exactly this gets power
/// operations; vmtoolsd's user service answers `OK ATR toolbox-dnd`.
pub const REPLY_RESET: &[u8] = b"OK ATR toolbox";
/// The plain success reply.
pub const REPLY_OK: &[u8] = b"OK ";
/// The reply to a command the guest does not know.
pub const REPLY_UNKNOWN: &[u8] = b"ERROR Unknown command";
/// vmt's reply to `Set_Option broadcastIP 1` when it has no address.
pub const REPLY_NO_IP: &[u8] = b"ERROR Unable to find guest IP address";

/// A host → guest command.
///
/// `S` is the string type of the variants that carry text: `String` on the
/// host, which owns its queue, `&str` on the guest, which parses in place.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TcloCommand<S> {
    /// `reset`: sent first on every new channel; expects [`REPLY_RESET`].
    Reset,
    /// `ping`: a liveness check; expects `OK `.
    Ping,
    /// `Capabilities_Register`: the guest announces its capabilities by RPCI,
    /// then replies `OK `.
    CapabilitiesRegister,
    /// `OS_Halt`: shut down and power off.
    OsHalt,
    /// `OS_Reboot`: reboot.
    OsReboot,
    /// `OS_PowerOn`: run power-on scripts.
    OsPowerOn,
    /// `OS_Suspend`: prepare for suspend.
    OsSuspend,
    /// `OS_Resume`: the VM resumed.
    OsResume,
    /// `Set_Option <name> <value>`, e.g. `Set_Option broadcastIP 1`.
    SetOption(S, S),
    /// Any other command, verbatim (the host can send e.g. `vmbackup.start 1`
    /// through it; the guest sees unknown commands here).
    Other(S),
}

impl<S: AsRef<str>> fmt::Display for TcloCommand<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcloCommand::SetOption(name, value) => {
                write!(f, "Set_Option {} {}", name.as_ref(), value.as_ref())
            }
            TcloCommand::Other(s) => f.write_str(s.as_ref()),
            fixed => f.write_str(fixed.fixed_wire().unwrap_or("")),
        }
    }
}

impl<S: AsRef<str>> TcloCommand<S> {
    /// The command's name: the first word of its wire form (`OS_Halt`,
    /// `Set_Option`, ...).
    pub fn name(&self) -> &str {
        match self {
            TcloCommand::SetOption(..) => "Set_Option",
            TcloCommand::Other(s) => s.as_ref().split(' ').next().unwrap_or(""),
            fixed => fixed.fixed_wire().unwrap_or(""),
        }
    }
}

impl<S> TcloCommand<S> {
    /// The wire string of the variants that carry no text.
    fn fixed_wire(&self) -> Option<&'static str> {
        Some(match self {
            TcloCommand::Reset => "reset",
            TcloCommand::Ping => "ping",
            TcloCommand::CapabilitiesRegister => "Capabilities_Register",
            TcloCommand::OsHalt => "OS_Halt",
            TcloCommand::OsReboot => "OS_Reboot",
            TcloCommand::OsPowerOn => "OS_PowerOn",
            TcloCommand::OsSuspend => "OS_Suspend",
            TcloCommand::OsResume => "OS_Resume",
            TcloCommand::SetOption(..) | TcloCommand::Other(_) => return None,
        })
    }

    /// The power state this command asks for; the guest reports it back with
    /// `tools.os.statechange.status <ok> <state>`.
    pub fn power_state(&self) -> Option<PowerState> {
        Some(match self {
            TcloCommand::OsHalt => PowerState::Halt,
            TcloCommand::OsReboot => PowerState::Reboot,
            TcloCommand::OsPowerOn => PowerState::PowerOn,
            TcloCommand::OsResume => PowerState::Resume,
            TcloCommand::OsSuspend => PowerState::Suspend,
            _ => return None,
        })
    }
}

impl<'a> TcloCommand<&'a str> {
    /// Parses a command as received: text up to the first NUL (OB, NB and
    /// open-vm-tools all tolerate a trailing one), matched exactly like vmt's
    /// table. Bytes that are not UTF-8 end the text.
    pub fn parse(bytes: &'a [u8]) -> Self {
        let text = until_nul(bytes);
        let fixed = [
            TcloCommand::Reset,
            TcloCommand::Ping,
            TcloCommand::CapabilitiesRegister,
            TcloCommand::OsHalt,
            TcloCommand::OsReboot,
            TcloCommand::OsPowerOn,
            TcloCommand::OsSuspend,
            TcloCommand::OsResume,
        ];
        for cmd in fixed {
            if cmd.fixed_wire().map(str::as_bytes) == Some(text) {
                return cmd;
            }
        }
        if let Some(rest) = text.strip_prefix(b"Set_Option ") {
            if let (name, Some(value)) = split_word(rest) {
                if !name.is_empty() {
                    return TcloCommand::SetOption(utf8_prefix(name), utf8_prefix(value));
                }
            }
        }
        TcloCommand::Other(utf8_prefix(text))
    }

    /// An owned copy, for storing past the receive buffer's lifetime.
    #[cfg(feature = "alloc")]
    pub fn to_owned_command(&self) -> TcloCommand<alloc::string::String> {
        use alloc::string::ToString;
        match self {
            TcloCommand::Reset => TcloCommand::Reset,
            TcloCommand::Ping => TcloCommand::Ping,
            TcloCommand::CapabilitiesRegister => TcloCommand::CapabilitiesRegister,
            TcloCommand::OsHalt => TcloCommand::OsHalt,
            TcloCommand::OsReboot => TcloCommand::OsReboot,
            TcloCommand::OsPowerOn => TcloCommand::OsPowerOn,
            TcloCommand::OsSuspend => TcloCommand::OsSuspend,
            TcloCommand::OsResume => TcloCommand::OsResume,
            TcloCommand::SetOption(n, v) => TcloCommand::SetOption(n.to_string(), v.to_string()),
            TcloCommand::Other(s) => TcloCommand::Other(s.to_string()),
        }
    }
}

/// Power states of `tools.os.statechange.status` (§4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PowerState {
    /// Halted (OS_Halt).
    Halt = 1,
    /// Rebooting (OS_Reboot).
    Reboot = 2,
    /// Powered on (OS_PowerOn).
    PowerOn = 3,
    /// Resumed (OS_Resume).
    Resume = 4,
    /// Suspending (OS_Suspend).
    Suspend = 5,
}

impl PowerState {
    /// The state for its wire number.
    pub fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            1 => PowerState::Halt,
            2 => PowerState::Reboot,
            3 => PowerState::PowerOn,
            4 => PowerState::Resume,
            5 => PowerState::Suspend,
            _ => return None,
        })
    }
}

/// How the host reads a guest's reply: only the `OK` / `ERROR` prefix counts
/// (§5); vmt and vmtoolsd word the rest differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// Starts with `OK`.
    Ok,
    /// Anything else (normally `ERROR ...`).
    Error,
}

/// Classifies a reply (text up to the first NUL).
pub fn classify_reply(reply: &[u8]) -> ReplyKind {
    if until_nul(reply).starts_with(b"OK") {
        ReplyKind::Ok
    } else {
        ReplyKind::Error
    }
}

/// Whether `reply` is exactly [`REPLY_RESET`] (a trailing NUL allowed): the
/// mark of the main tools service, the one that handles power operations.
pub fn is_toolbox_reset_reply(reply: &[u8]) -> bool {
    until_nul(reply) == REPLY_RESET
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_round_trip() {
        let cases: [(TcloCommand<&str>, &str); 11] = [
            (TcloCommand::Reset, "reset"),
            (TcloCommand::Ping, "ping"),
            (TcloCommand::CapabilitiesRegister, "Capabilities_Register"),
            (TcloCommand::OsHalt, "OS_Halt"),
            (TcloCommand::OsReboot, "OS_Reboot"),
            (TcloCommand::OsPowerOn, "OS_PowerOn"),
            (TcloCommand::OsSuspend, "OS_Suspend"),
            (TcloCommand::OsResume, "OS_Resume"),
            (
                TcloCommand::SetOption("broadcastIP", "1"),
                "Set_Option broadcastIP 1",
            ),
            (TcloCommand::SetOption("x", "a b"), "Set_Option x a b"),
            (TcloCommand::Other("vmbackup.start 1"), "vmbackup.start 1"),
        ];
        let mut buf = [0u8; 64];
        for (cmd, wire) in cases {
            let out = crate::format_into(&mut buf, format_args!("{cmd}")).unwrap();
            assert_eq!(out, wire.as_bytes());
            assert_eq!(TcloCommand::parse(wire.as_bytes()), cmd);
        }
    }

    #[test]
    fn parse_tolerates_nul_and_rejects_near_misses() {
        assert_eq!(TcloCommand::parse(b"OS_Halt\0"), TcloCommand::OsHalt);
        assert_eq!(
            TcloCommand::parse(b"os_halt"),
            TcloCommand::Other("os_halt")
        );
        assert_eq!(
            TcloCommand::parse(b"Set_Option x"),
            TcloCommand::Other("Set_Option x")
        );
        assert_eq!(TcloCommand::parse(b"ab\xff"), TcloCommand::Other("ab"));
    }

    #[test]
    fn replies() {
        assert_eq!(classify_reply(b"OK "), ReplyKind::Ok);
        assert_eq!(classify_reply(b"ERROR Unknown command"), ReplyKind::Error);
        assert!(is_toolbox_reset_reply(b"OK ATR toolbox\0"));
        assert!(!is_toolbox_reset_reply(b"OK ATR toolbox-dnd"));
    }
}
