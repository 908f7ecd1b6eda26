//! The guest's TCLO loop, vmt(4)-style: send the reply to the last command
//! (or nothing), then fetch the next one (§5 "wire rule").

use super::{Backdoor, Channel, Error};
use crate::proto::PROTO_TCLO;
use crate::tclo::{TcloCommand, REPLY_OK, REPLY_RESET, REPLY_UNKNOWN};

/// One TCLO round trip on an open channel: sends `reply` (empty when there
/// is nothing to report: the poll) and receives the next command into `buf`.
/// `Ok(None)` when the host has nothing queued.
pub fn tclo_poll<'b>(
    chan: &mut Channel,
    bd: &mut impl Backdoor,
    reply: &[u8],
    buf: &'b mut [u8],
) -> Result<Option<TcloCommand<&'b str>>, Error> {
    chan.send(bd, reply)?;
    let n = chan.recv(bd, buf)?;
    if n == 0 {
        return Ok(None);
    }
    let msg: &'b [u8] = buf;
    Ok(Some(TcloCommand::parse(msg.get(..n).unwrap_or(&[]))))
}

/// Longest reply a [`TcloSession`] holds between polls; guest replies are
/// short status lines.
pub const MAX_TCLO_REPLY: usize = 256;

/// A TCLO channel with vmt's recovery rules, for a guest's poll loop:
///
/// ```text
/// let mut s = TcloSession::new();
/// loop {
///     match s.poll(&mut bd, &mut buf) {
///         Ok(Some(cmd)) => { /* act, RPCI status, ... */ s.set_reply(TcloSession::default_reply(&cmd)); }
///         Ok(None) => sleep(1 s),
///         Err(_) => sleep(1 s),  // the next poll reopens
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct TcloSession {
    chan: Option<Channel>,
    reply: [u8; MAX_TCLO_REPLY],
    reply_len: usize,
}

impl Default for TcloSession {
    fn default() -> Self {
        Self::new()
    }
}

impl TcloSession {
    /// A session with no channel yet; the first poll opens it.
    pub const fn new() -> Self {
        TcloSession {
            chan: None,
            reply: [0; MAX_TCLO_REPLY],
            reply_len: 0,
        }
    }

    /// Whether a channel is open.
    pub fn is_open(&self) -> bool {
        self.chan.is_some()
    }

    /// Sets the reply the next poll sends (truncated to [`MAX_TCLO_REPLY`]).
    pub fn set_reply(&mut self, reply: &[u8]) {
        let n = reply.len().min(MAX_TCLO_REPLY);
        if let (Some(dst), Some(src)) = (self.reply.get_mut(..n), reply.get(..n)) {
            dst.copy_from_slice(src);
            self.reply_len = n;
        }
    }

    /// One tick. Opens the channel when there is none and, like vmt, sends
    /// `OK ATR toolbox` at once so the host knows this is the main tools
    /// service. Then sends the pending reply and fetches the next command.
    /// On any error the channel is closed, and the next poll reopens it
    /// (vmt reaches the same state through its "reset while in error" rule).
    pub fn poll<'b>(
        &mut self,
        bd: &mut impl Backdoor,
        buf: &'b mut [u8],
    ) -> Result<Option<TcloCommand<&'b str>>, Error> {
        let mut chan = match self.chan.take() {
            Some(c) => c,
            None => {
                self.set_reply(REPLY_RESET);
                Channel::open(bd, PROTO_TCLO)?
            }
        };
        let reply = self.reply.get(..self.reply_len).unwrap_or(&[]);
        match tclo_poll(&mut chan, bd, reply, buf) {
            Ok(cmd) => {
                self.reply_len = 0;
                self.chan = Some(chan);
                Ok(cmd)
            }
            Err(e) => {
                let _ = chan.close(bd);
                Err(e)
            }
        }
    }

    /// Closes the channel (on shutdown).
    pub fn close(&mut self, bd: &mut impl Backdoor) {
        if let Some(chan) = self.chan.take() {
            let _ = chan.close(bd);
        }
    }

    /// vmt's reply to a command once its side effects (RPCIs, signals) are
    /// done: `OK ATR toolbox` to `reset`, `OK ` to the commands vmt knows,
    /// `ERROR Unknown command` to the rest (including `Set_Option`s other
    /// than the ones a guest handles itself).
    pub fn default_reply<S>(cmd: &TcloCommand<S>) -> &'static [u8] {
        match cmd {
            TcloCommand::Reset => REPLY_RESET,
            TcloCommand::SetOption(..) | TcloCommand::Other(_) => REPLY_UNKNOWN,
            _ => REPLY_OK,
        }
    }
}
