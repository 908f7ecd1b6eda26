//! [`Tools`]: the host's side of the guest tools, as a [`Service`].
//!
//! It answers RPCI requests ([`rpci`]), keeps the guestinfo store
//! ([`store`]), runs the TCLO command queue with per-command status
//! ([`tclo`]) and collects what the guest reports into a [`GuestState`]
//! ([`state`]). It is pure: time comes from [`Tools::set_now`] and
//! [`Tools::tick`], never from a clock.

mod rpci;
mod state;
mod store;
mod tclo;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

pub use state::{GuestState, StateChange, Uptime};
pub use store::{StoreFull, MAX_GUESTINFO_BYTES, MAX_GUESTINFO_KEYS};
pub use tclo::{CommandStatus, QueueFull, DEFAULT_TCLO_TIMEOUT_MS, MAX_QUEUED_COMMANDS};

use super::Service;
use crate::proto::MAX_CHANNELS;
use crate::tclo::TcloCommand;

/// The host's guest-tools logic for one VM.
///
/// `Clone` is its snapshot, like `Channels`.
#[derive(Clone, Debug)]
pub struct Tools {
    now_ms: u64,
    timeout_ms: u64,
    store: store::Store,
    state: GuestState,
    queue: VecDeque<(u64, TcloCommand<String>)>,
    statuses: BTreeMap<u64, CommandStatus>,
    next_id: u64,
    chans: [Option<tclo::TcloChan>; MAX_CHANNELS],
    reports: u64,
}

impl Default for Tools {
    fn default() -> Self {
        Self::new(DEFAULT_TCLO_TIMEOUT_MS)
    }
}

impl Tools {
    /// A fresh service. A TCLO command delivered to the guest and not
    /// answered within `timeout_ms` becomes [`CommandStatus::TimedOut`] at
    /// the next [`Tools::tick`].
    pub fn new(timeout_ms: u64) -> Self {
        Tools {
            now_ms: 0,
            timeout_ms,
            store: store::Store::default(),
            state: GuestState::default(),
            queue: VecDeque::new(),
            statuses: BTreeMap::new(),
            next_id: 1,
            chans: core::array::from_fn(|_| None),
            reports: 0,
        }
    }

    /// Sets the current host time (ms, any monotonic origin) used to stamp
    /// what the next exits report. The device calls it before dispatching
    /// each backdoor exit; it is a plain store.
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// What the guest's tools have reported.
    pub fn guest_state(&self) -> &GuestState {
        &self.state
    }

    /// Counts what the guest has told the host: every RPCI request, TCLO
    /// reply and TCLO channel opened or closed moves it. It moves whenever
    /// [`Tools::guest_state`] may have changed, the poll time aside (a
    /// TCLO poll with nothing to say leaves it), so a watcher can sleep
    /// until it moves instead of polling the state.
    pub fn reports(&self) -> u64 {
        self.reports
    }

    /// The guestinfo value of `key` (`"foo"` or `"guestinfo.foo"`).
    pub fn get_guestinfo(&self, key: &str) -> Option<&[u8]> {
        self.store.get(strip_guestinfo(key.as_bytes()))
    }

    /// Sets a guestinfo value for the guest to read with `info-get`
    /// (`key` as `"foo"` or `"guestinfo.foo"`).
    pub fn set_guestinfo(&mut self, key: &str, value: &[u8]) -> Result<(), StoreFull> {
        self.store.set(strip_guestinfo(key.as_bytes()), value)
    }

    /// Removes a guestinfo value, returning it.
    pub fn remove_guestinfo(&mut self, key: &str) -> Option<Vec<u8>> {
        self.store.remove(strip_guestinfo(key.as_bytes()))
    }

    /// All guestinfo entries (keys without the prefix), in key order.
    pub fn guestinfo(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.store.iter()
    }

    /// Bytes held by the guestinfo store (at most [`MAX_GUESTINFO_BYTES`]).
    pub fn guestinfo_bytes(&self) -> usize {
        self.store.bytes()
    }
}

/// `guestinfo.foo` → `foo`; other keys unchanged.
fn strip_guestinfo(key: &[u8]) -> &[u8] {
    key.strip_prefix(b"guestinfo.").unwrap_or(key)
}

impl Service for Tools {
    fn rpci(&mut self, request: &[u8]) -> Vec<u8> {
        self.reports += 1;
        self.handle_rpci(request)
    }

    fn tclo_opened(&mut self, chan: u16) {
        self.reports += 1;
        self.on_tclo_opened(chan);
    }

    fn tclo_sent(&mut self, chan: u16, data: &[u8]) {
        // An empty message is a poll: only the poll time changes.
        if data.first().is_some_and(|&b| b != 0) {
            self.reports += 1;
        }
        self.on_tclo_sent(chan, data);
    }

    fn tclo_next(&mut self, chan: u16) -> Option<Vec<u8>> {
        self.on_tclo_next(chan)
    }

    fn tclo_delivered(&mut self, chan: u16, ok: bool) {
        self.on_tclo_delivered(chan, ok);
    }

    fn tclo_closed(&mut self, chan: u16) {
        self.reports += 1;
        self.on_tclo_closed(chan);
    }
}
