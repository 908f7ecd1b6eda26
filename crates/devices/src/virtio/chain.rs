//! A descriptor chain split into what the device reads and what it
//! writes, every range checked to lie in guest RAM: the first step of
//! every device's request parsing, free of I/O.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemory as _, Permissions};

use crate::virtio::GuestMemory;

/// The most descriptors a chain may have: a queue holds at most 32768,
/// and an indirect table as many.
pub const MAX_DESCRIPTORS: usize = 32768;

/// A piece of guest memory a request reads or writes, checked to lie in
/// guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain has no valid shape.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainError {
    /// A device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// A descriptor points outside guest RAM (or wraps around).
    OutsideMemory { addr: u64, len: u32 },
    /// More descriptors than any queue allows.
    TooLong,
}

/// The chain `descs` (as the queue yields it: loops and bad indices
/// already cut it short) as (readable, writable) segments, empty
/// descriptors left out.
pub fn split(
    mem: &GuestMemory,
    descs: impl Iterator<Item = Descriptor>,
) -> Result<(Vec<Segment>, Vec<Segment>), ChainError> {
    let mut readable: Vec<Segment> = Vec::new();
    let mut writable: Vec<Segment> = Vec::new();
    for (n, d) in descs.enumerate() {
        if n >= MAX_DESCRIPTORS {
            return Err(ChainError::TooLong);
        }
        if d.len() == 0 {
            continue;
        }
        let seg = Segment {
            addr: GuestAddress(d.addr().0),
            len: d.len(),
        };
        // The whole range must be RAM: `check_range` also refuses a range
        // that wraps or straddles a hole.
        let perm = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(seg.addr, seg.len as usize, perm) {
            return Err(ChainError::OutsideMemory {
                addr: seg.addr.0,
                len: seg.len,
            });
        }
        if d.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            return Err(ChainError::ReadableAfterWritable);
        }
    }
    Ok((readable, writable))
}
