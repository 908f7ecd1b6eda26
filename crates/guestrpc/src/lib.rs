//! The VMware backdoor and its GuestRPC message protocol, both ends, no I/O.
//!
//! One crate serves three users: the host's backdoor device (in `devices`),
//! the Linux guest tools (`vmt`) and the bare-metal test guests. So the
//! protocol logic here never touches a port, a clock or a random source: the
//! host feeds it the registers of each VM exit and the current time, the guest
//! gives it a [`client::Backdoor`] that executes the port instructions.
//! The protocol reference this code follows is `guest-channel.md` in the
//! project's shared design notes; the section numbers (§) in comments refer
//! to it.
//!
//! # Layout
//! - [`backdoor`]: the low-bandwidth port, its register file [`Regs`] and the
//!   host's answers to the non-message commands (§1, §2).
//! - [`proto`]: GuestRPC constants: sub-commands, status bits, limits (§3).
//! - [`tclo`]: the host → guest command strings, shared by both ends (§5).
//! - [`guestinfo`]: `SetGuestInfo` keys and the NicInfo v3 XDR codec (§4).
//! - [`client`]: the guest end (no allocation); [`x86`] its port I/O.
//! - `host` (feature `alloc`): the channel table and the tools service.
//! - `testing` (feature `testing`): a fake vCPU over the real host side, for
//!   guestrpc's and vmt's tests.
//!
//! # Features
//! `alloc` (default) enables the host side and the decoders that return owned
//! values. A guest without an allocator uses `default-features = false` and
//! still gets the client, the encoders (into caller buffers) and the constants.
//! `testing` (tests only) adds the test doubles of `testing`.
//!
//! # Robustness
//! Everything that reads guest-controlled data (the host side, the decoders)
//! is written not to panic on any input and to keep memory bounded per VM:
//! at most [`proto::MAX_CHANNELS`] channels, each holding at most one inbound
//! message of [`proto::MAX_MESSAGE`] bytes and one outbound reply. The fuzz
//! tests (`tests/fuzz.rs`) check both properties; run them longer with
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p guestrpc --test fuzz
//! ```
//!
//! `fuzz_deterministic_100k` always runs a fixed 100 000-step sequence; the
//! proptest case `fuzz_host_never_panics` takes its count from
//! `PROPTEST_CASES` (default 256; about 10 ms a case in a debug build).
//! Keep the debug profile for long runs: `--release` is several times faster
//! but turns off the arithmetic-overflow checks that are half the point.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod backdoor;
pub mod client;
pub mod guestinfo;
#[cfg(feature = "alloc")]
pub mod host;
pub mod proto;
pub mod tclo;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(target_arch = "x86_64")]
pub mod x86;

mod text;
mod writer;
mod xdr;

pub use backdoor::Regs;
pub use writer::{format_into, SliceWriter};

/// A caller-supplied buffer was too small for what had to be written into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferTooSmall;

impl core::fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("buffer too small")
    }
}
