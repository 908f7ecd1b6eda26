//! The TCLO side of [`Tools`]: a per-VM command queue, per-channel
//! delivery state, and the status of every queued command (§5).
//!
//! Rules:
//! - Every newly opened channel first gets `reset`; a channel that answers
//!   `OK ATR toolbox` (exactly: vmtoolsd's user service answers
//!   `OK ATR toolbox-dnd`) is the main tools service and then gets
//!   `Capabilities_Register` once.
//! - Queued commands go only to such a channel, in queue order, one per
//!   RECVSIZE: power operations must reach the service that handles them,
//!   and the others are pointless elsewhere.
//! - A non-empty SEND is the reply to the command delivered last on that
//!   channel; an empty one means "no reply" and leaves the command waiting
//!   (vmtoolsd may reply a poll later, once its script started). Replies
//!   with nothing awaited (vmt's `OK ATR toolbox` right after reopening) are
//!   accepted and only inform the channel's role.
//! - A delivered command unanswered for longer than the timeout becomes
//!   [`CommandStatus::TimedOut`] at [`Tools::tick`]; the caller (vmd)
//!   decides what to do then (e.g. a hard power-off).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::Tools;
use crate::tclo::{classify_reply, is_toolbox_reset_reply, ReplyKind, TcloCommand};
use crate::text::until_nul;

/// Default reply timeout: how long the guest may take to answer a command
/// it has fetched. vmtoolsd answers `OS_Halt` once it has started the
/// power script, which takes seconds on a slow or busy guest (measured:
/// more than 3 s in Linux on an emulating host); tools that never fetch a
/// command are caught sooner by the host (vmm's power requests give them
/// 3 s).
pub const DEFAULT_TCLO_TIMEOUT_MS: u64 = 10_000;
/// Most commands waiting for delivery.
pub const MAX_QUEUED_COMMANDS: usize = 32;
/// Most command statuses remembered; the oldest finished ones are forgotten
/// first, so [`Tools::command_status`] of a very old id may be `None`.
const MAX_TRACKED: usize = 128;
/// Longest reply text kept in a status.
const MAX_REPLY_TEXT: usize = 1024;

/// Where a queued command is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandStatus {
    /// Queued, not yet delivered (no toolbox channel has polled since).
    Pending,
    /// Delivered at this host time; no reply yet.
    Sent {
        /// `now_ms` when the guest fetched it.
        at_ms: u64,
    },
    /// The guest replied `OK...`; the reply text.
    Acked(String),
    /// The guest replied with anything else (normally `ERROR ...`).
    Failed(String),
    /// Delivered, but not answered in time.
    TimedOut,
}

impl CommandStatus {
    /// Whether the command is finished (replied or timed out).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            CommandStatus::Acked(_) | CommandStatus::Failed(_) | CommandStatus::TimedOut
        )
    }
}

/// The command queue is full ([`MAX_QUEUED_COMMANDS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

impl core::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TCLO command queue full")
    }
}

/// What a channel is waiting for a reply to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum InFlight {
    Reset,
    Capabilities,
    User(u64, TcloCommand<String>),
}

/// Per open TCLO channel.
#[derive(Clone, Debug, Default)]
pub(super) struct TcloChan {
    /// Answered `OK ATR toolbox`: the main service.
    toolbox: bool,
    need_reset: bool,
    need_caps: bool,
    caps_sent: bool,
    awaiting: Option<InFlight>,
}

impl Tools {
    /// Queues a command for the guest; returns its id for
    /// [`Tools::command_status`].
    pub fn queue(&mut self, cmd: TcloCommand<String>) -> Result<u64, QueueFull> {
        if self.queue.len() >= MAX_QUEUED_COMMANDS {
            return Err(QueueFull);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.queue.push_back((id, cmd));
        self.statuses.insert(id, CommandStatus::Pending);
        self.prune_statuses();
        Ok(id)
    }

    /// The status of a queued command; `None` for an unknown (or long
    /// forgotten) id.
    pub fn command_status(&self, id: u64) -> Option<CommandStatus> {
        self.statuses.get(&id).cloned()
    }

    /// Commands waiting for delivery.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether an open channel answered `OK ATR toolbox`, i.e. whether power
    /// operations can be delivered now.
    pub fn has_toolbox_channel(&self) -> bool {
        self.chans.iter().flatten().any(|c| c.toolbox)
    }

    /// Marks commands delivered more than the timeout before `now_ms`
    /// without a reply as [`CommandStatus::TimedOut`]. A reply arriving later
    /// is then treated as unsolicited.
    pub fn tick(&mut self, now_ms: u64) {
        let timeout = self.timeout_ms;
        let mut expired = false;
        for st in self.statuses.values_mut() {
            if let CommandStatus::Sent { at_ms } = *st {
                if now_ms.saturating_sub(at_ms) > timeout {
                    *st = CommandStatus::TimedOut;
                    expired = true;
                }
            }
        }
        if expired {
            for chan in self.chans.iter_mut().flatten() {
                if let Some(InFlight::User(id, _)) = chan.awaiting {
                    if self.statuses.get(&id) == Some(&CommandStatus::TimedOut) {
                        chan.awaiting = None;
                    }
                }
            }
        }
    }

    /// Forgets the oldest statuses beyond [`MAX_TRACKED`]: finished ones
    /// first, then (only if the caller never ticks) the oldest delivered.
    fn prune_statuses(&mut self) {
        while self.statuses.len() > MAX_TRACKED {
            let victim = self
                .statuses
                .iter()
                .find(|(_, s)| s.is_final())
                .or_else(|| {
                    self.statuses
                        .iter()
                        .find(|(_, s)| **s != CommandStatus::Pending)
                })
                .map(|(id, _)| *id);
            match victim {
                Some(id) => {
                    self.statuses.remove(&id);
                }
                None => break,
            }
        }
    }

    fn chan_mut(&mut self, chan: u16) -> Option<&mut TcloChan> {
        self.chans.get_mut(usize::from(chan))?.as_mut()
    }

    pub(super) fn on_tclo_opened(&mut self, chan: u16) {
        if let Some(slot) = self.chans.get_mut(usize::from(chan)) {
            *slot = Some(TcloChan {
                need_reset: true,
                ..TcloChan::default()
            });
        }
    }

    pub(super) fn on_tclo_closed(&mut self, chan: u16) {
        // A command in flight on it stays Sent and times out: the guest may
        // or may not have acted on it, and only vmd can judge that.
        if let Some(slot) = self.chans.get_mut(usize::from(chan)) {
            *slot = None;
        }
    }

    pub(super) fn on_tclo_sent(&mut self, chan: u16, data: &[u8]) {
        self.state.last_poll_ms = Some(self.now_ms);
        let reply = until_nul(data);
        if reply.is_empty() {
            return;
        }
        self.state.tools_present = true;
        let Some(ch) = self
            .chans
            .get_mut(usize::from(chan))
            .and_then(Option::as_mut)
        else {
            return;
        };
        if is_toolbox_reset_reply(reply) {
            ch.toolbox = true;
            if !ch.caps_sent {
                ch.need_caps = true;
            }
        }
        if let Some(InFlight::User(id, _)) = ch.awaiting.take() {
            if let Some(st @ CommandStatus::Sent { .. }) = self.statuses.get_mut(&id) {
                let text = reply_text(reply);
                *st = match classify_reply(reply) {
                    ReplyKind::Ok => CommandStatus::Acked(text),
                    ReplyKind::Error => CommandStatus::Failed(text),
                };
            }
        }
    }

    pub(super) fn on_tclo_next(&mut self, chan: u16) -> Option<Vec<u8>> {
        let now = self.now_ms;
        let ch = self.chans.get_mut(usize::from(chan))?.as_mut()?;
        let (inflight, wire) = if ch.need_reset {
            ch.need_reset = false;
            (InFlight::Reset, TcloCommand::<&str>::Reset.to_string())
        } else if ch.need_caps {
            ch.need_caps = false;
            ch.caps_sent = true;
            (
                InFlight::Capabilities,
                TcloCommand::<&str>::CapabilitiesRegister.to_string(),
            )
        } else if ch.toolbox {
            let (id, cmd) = self.queue.pop_front()?;
            self.statuses.insert(id, CommandStatus::Sent { at_ms: now });
            let wire = cmd.to_string();
            (InFlight::User(id, cmd), wire)
        } else {
            return None;
        };
        ch.awaiting = Some(inflight);
        Some(wire.into_bytes())
    }

    pub(super) fn on_tclo_delivered(&mut self, chan: u16, ok: bool) {
        if ok {
            return;
        }
        // The guest says it did not get the command: deliver it again.
        let Some(ch) = self.chan_mut(chan) else {
            return;
        };
        match ch.awaiting.take() {
            Some(InFlight::Reset) => ch.need_reset = true,
            Some(InFlight::Capabilities) => ch.need_caps = true,
            Some(InFlight::User(id, cmd))
                if self.statuses.get(&id).is_some_and(|s| !s.is_final()) =>
            {
                self.statuses.insert(id, CommandStatus::Pending);
                self.queue.push_front((id, cmd));
            }
            Some(InFlight::User(..)) | None => {}
        }
    }
}

/// A reply as stored in a status: text before the first NUL, bounded.
fn reply_text(reply: &[u8]) -> String {
    let cut = reply.get(..MAX_REPLY_TEXT).unwrap_or(reply);
    String::from_utf8_lossy(cut).into_owned()
}
