//! The host end (feature `alloc`): what the VM process's backdoor device runs
//! on every exit to ports 0x5658/0x5659.
//!
//! [`Channels`] is the GuestRPC channel table and framing state machine; it
//! hands complete messages to a [`Service`] and never interprets them.
//! [`Tools`] is the service a VM uses: RPCI requests, the guestinfo store,
//! the TCLO command queue and the guest state the VM exposes.
//!
//! Wiring in the device, per exit:
//! ```text
//! tools.set_now(now_ms);
//! match port {
//!     PORT_LB => guestrpc::host::handle_lb(&mut regs, &platform, &mut channels, &mut tools),
//!     PORT_HB if out => ok = channels.hb_out(&regs, &data, &mut tools),
//!     PORT_HB => ok = channels.hb_in(&regs, &mut data),
//! }
//! // on !ok: set EBX = 0 so the guest sees the HB transfer fail.
//! ```

mod channels;
mod tools;

use alloc::vec::Vec;

pub use channels::{Channels, Protocol};
pub use tools::{
    CommandStatus, GuestState, QueueFull, StateChange, StoreFull, Tools, Uptime,
    DEFAULT_TCLO_TIMEOUT_MS, MAX_GUESTINFO_BYTES, MAX_GUESTINFO_KEYS, MAX_QUEUED_COMMANDS,
};

use crate::backdoor::{self, LbAction, Platform, Regs};

/// What consumes complete GuestRPC messages. [`Channels`] calls it
/// synchronously from the exit that completes a step.
pub trait Service {
    /// A complete RPCI request; returns the full reply (`"1 ..."` or
    /// `"0 ..."`). Replies longer than [`crate::proto::MAX_MESSAGE`] are cut.
    fn rpci(&mut self, request: &[u8]) -> Vec<u8>;
    /// A TCLO channel was opened.
    fn tclo_opened(&mut self, chan: u16);
    /// The guest's SEND on a TCLO channel: the reply to the last command, or
    /// empty (a poll, or "no reply").
    fn tclo_sent(&mut self, chan: u16, data: &[u8]);
    /// The next host command for this channel, asked for by RECVSIZE.
    fn tclo_next(&mut self, chan: u16) -> Option<Vec<u8>>;
    /// RECVSTATUS ended the delivery of the command from
    /// [`Service::tclo_next`]: `ok` is the guest's own verdict (false: it did
    /// not get the command, which is then gone from the channel).
    fn tclo_delivered(&mut self, chan: u16, ok: bool) {
        let _ = (chan, ok);
    }
    /// A TCLO channel was closed by the guest.
    fn tclo_closed(&mut self, chan: u16);
}

/// One low-bandwidth backdoor call, complete: the plain commands from
/// [`backdoor::handle_lb`], MESSAGE through the channel table.
pub fn handle_lb(
    regs: &mut Regs,
    platform: &impl Platform,
    channels: &mut Channels,
    svc: &mut impl Service,
) {
    if backdoor::handle_lb(regs, platform) == LbAction::Message {
        channels.message(regs, svc);
    }
}
