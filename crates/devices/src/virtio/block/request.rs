//! A virtio-blk request as a descriptor chain carries it (virtio 1.2
//! section 5.2.6): a 16-byte header the device reads, data, and one status
//! byte the device writes last. Parsing checks the chain's shape and
//! addresses and does no I/O, so that hostile chains are dealt with in one
//! place and can be fuzzed without a disk.

use std::fmt;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::virtio::GuestMemory;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Bytes of the request header: type, reserved, sector.
const HEADER_LEN: u64 = 16;
/// Bytes of a discard / write-zeroes segment.
pub const DISCARD_SEGMENT_LEN: u64 = 16;
/// Bytes of the GET_ID answer.
pub const ID_LEN: usize = 20;

pub use crate::virtio::chain::Segment;
use crate::virtio::chain::{self, ChainError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    pub sector: u64,
    /// The data buffers: device-writable ones for reads and GET_ID,
    /// device-readable ones (after the header) otherwise.
    pub data: Vec<Segment>,
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// A chain the device cannot even answer: there is no status byte to
/// write an error into, so the request completes with nothing written.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// Fewer than 16 readable bytes for the header.
    ShortHeader,
    /// No device-writable byte for the status.
    NoStatus,
    /// A descriptor points outside guest RAM (or wraps around).
    OutsideMemory { addr: u64, len: u32 },
    /// More descriptors than any queue allows.
    TooLong,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::ReadableAfterWritable => {
                f.write_str("device-readable descriptor after a device-writable one")
            }
            ParseError::ShortHeader => f.write_str("request header shorter than 16 bytes"),
            ParseError::NoStatus => f.write_str("no device-writable byte for the status"),
            ParseError::OutsideMemory { addr, len } => {
                write!(f, "descriptor {addr:#x}+{len:#x} outside guest memory")
            }
            ParseError::TooLong => f.write_str("descriptor chain too long"),
        }
    }
}

impl std::error::Error for ParseError {}

impl From<ChainError> for ParseError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::ReadableAfterWritable => ParseError::ReadableAfterWritable,
            ChainError::OutsideMemory { addr, len } => ParseError::OutsideMemory { addr, len },
            ChainError::TooLong => ParseError::TooLong,
        }
    }
}

/// Parses the chain `descs` (as the queue yields it: loops and bad
/// indices already cut it short).
pub fn parse(
    mem: &GuestMemory,
    descs: impl Iterator<Item = Descriptor>,
) -> Result<Request, ParseError> {
    let (readable, mut writable) = chain::split(mem, descs)?;

    let mut header = [0u8; HEADER_LEN as usize];
    let body = take_prefix(mem, &readable, &mut header).ok_or(ParseError::ShortHeader)?;
    let status = pop_last_byte(&mut writable).ok_or(ParseError::NoStatus)?;

    let ty = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let kind = match ty {
        T_IN => Kind::Read,
        T_OUT => Kind::Write,
        T_FLUSH => Kind::Flush,
        T_GET_ID => Kind::GetId,
        T_DISCARD => Kind::Discard,
        T_WRITE_ZEROES => Kind::WriteZeroes,
        other => Kind::Unsupported(other),
    };
    let data = match kind {
        Kind::Read | Kind::GetId => writable,
        Kind::Write | Kind::Discard | Kind::WriteZeroes => body,
        Kind::Flush | Kind::Unsupported(_) => Vec::new(),
    };
    let data_len = data.iter().map(|s| u64::from(s.len)).sum();
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}

/// Copies the first `out.len()` bytes of `segs` into `out`; returns the
/// segments that follow, or `None` if they hold fewer bytes.
fn take_prefix(mem: &GuestMemory, segs: &[Segment], out: &mut [u8]) -> Option<Vec<Segment>> {
    let mut filled = 0usize;
    let mut rest = Vec::new();
    for s in segs {
        let need = out.len() - filled;
        if need == 0 {
            rest.push(*s);
            continue;
        }
        let n = need.min(s.len as usize);
        mem.read_slice(&mut out[filled..filled + n], s.addr).ok()?;
        filled += n;
        if (n as u32) < s.len {
            rest.push(Segment {
                addr: s.addr.unchecked_add(n as u64),
                len: s.len - n as u32,
            });
        }
    }
    (filled == out.len()).then_some(rest)
}

/// Removes the last byte of `segs` and returns its address.
fn pop_last_byte(segs: &mut Vec<Segment>) -> Option<GuestAddress> {
    let last = segs.last_mut()?;
    let addr = last.addr.unchecked_add(u64::from(last.len) - 1);
    last.len -= 1;
    if last.len == 0 {
        segs.pop();
    }
    Some(addr)
}

/// A discard or write-zeroes range (virtio_blk_discard_write_zeroes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardRange {
    pub sector: u64,
    pub num_sectors: u32,
    pub unmap: bool,
    /// Flags other than UNMAP set: the device must answer UNSUPP.
    pub unknown_flags: bool,
}

/// The ranges of a discard/write-zeroes request; `None` if its data is not
/// a whole number of 16-byte ranges or cannot be read.
pub fn discard_ranges(mem: &GuestMemory, data: &[Segment]) -> Option<Vec<DiscardRange>> {
    let total: u64 = data.iter().map(|s| u64::from(s.len)).sum();
    if total == 0 || !total.is_multiple_of(DISCARD_SEGMENT_LEN) {
        return None;
    }
    let mut bytes = vec![0u8; total as usize];
    take_prefix(mem, data, &mut bytes)?;
    Some(
        bytes
            .chunks_exact(DISCARD_SEGMENT_LEN as usize)
            .map(|c| {
                let flags = u32::from_le_bytes(c[12..16].try_into().unwrap());
                DiscardRange {
                    sector: u64::from_le_bytes(c[0..8].try_into().unwrap()),
                    num_sectors: u32::from_le_bytes(c[8..12].try_into().unwrap()),
                    unmap: flags & 1 != 0,
                    unknown_flags: flags & !1 != 0,
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn d(addr: u64, len: u32, write: bool) -> Descriptor {
        let flags = if write { VRING_DESC_F_WRITE } else { 0 } | VRING_DESC_F_NEXT;
        Descriptor::new(addr, len, flags as u16, 0)
    }

    fn header(m: &GuestMemory, at: u64, ty: u32, sector: u64) {
        m.write_obj(ty, GuestAddress(at)).unwrap();
        m.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        m.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    #[test]
    fn read_request() {
        let m = mem();
        header(&m, 0x1000, T_IN, 7);
        let r = parse(
            &m,
            [
                d(0x1000, 16, false),
                d(0x2000, 1024, true),
                d(0x3000, 1, true),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(r.kind, Kind::Read);
        assert_eq!(r.sector, 7);
        assert_eq!(r.data_len, 1024);
        assert_eq!(r.status, GuestAddress(0x3000));
    }

    #[test]
    fn header_data_and_status_may_share_descriptors() {
        let m = mem();
        header(&m, 0x1000, T_OUT, 3);
        // Header and data in one readable buffer; data and status in one
        // writable buffer for a read.
        let r = parse(
            &m,
            [d(0x1000, 16 + 512, false), d(0x4000, 1, true)].into_iter(),
        )
        .unwrap();
        assert_eq!((r.kind, r.data_len), (Kind::Write, 512));
        assert_eq!(r.data[0].addr, GuestAddress(0x1010));
        header(&m, 0x1000, T_IN, 0);
        let r = parse(&m, [d(0x1000, 16, false), d(0x4000, 513, true)].into_iter()).unwrap();
        assert_eq!(
            r.data,
            vec![Segment {
                addr: GuestAddress(0x4000),
                len: 512
            }]
        );
        assert_eq!(r.status, GuestAddress(0x4200));
    }

    #[test]
    fn hostile_chains() {
        let m = mem();
        header(&m, 0x1000, T_IN, 0);
        assert_eq!(
            parse(&m, [d(0x1000, 8, false), d(0x3000, 1, true)].into_iter()),
            Err(ParseError::ShortHeader)
        );
        assert_eq!(
            parse(&m, [d(0x1000, 16, false)].into_iter()),
            Err(ParseError::NoStatus)
        );
        assert_eq!(
            parse(
                &m,
                [
                    d(0x1000, 16, false),
                    d(0x3000, 1, true),
                    d(0x5000, 4, false)
                ]
                .into_iter()
            ),
            Err(ParseError::ReadableAfterWritable)
        );
        assert_eq!(
            parse(
                &m,
                [d(0x1000, 16, false), d(0xff000, 0x2000, true)].into_iter()
            ),
            Err(ParseError::OutsideMemory {
                addr: 0xff000,
                len: 0x2000
            })
        );
        assert!(matches!(
            parse(
                &m,
                [d(0x1000, 16, false), d(u64::MAX - 1, 8, true)].into_iter()
            ),
            Err(ParseError::OutsideMemory { .. })
        ));
        header(&m, 0x1000, 0xdead, 0);
        let r = parse(&m, [d(0x1000, 16, false), d(0x3000, 1, true)].into_iter()).unwrap();
        assert_eq!(r.kind, Kind::Unsupported(0xdead));
    }

    #[test]
    fn discard_ranges_parse() {
        let m = mem();
        m.write_obj(100u64, GuestAddress(0x2000)).unwrap();
        m.write_obj(8u32, GuestAddress(0x2008)).unwrap();
        m.write_obj(1u32, GuestAddress(0x200c)).unwrap();
        let seg = [Segment {
            addr: GuestAddress(0x2000),
            len: 16,
        }];
        assert_eq!(
            discard_ranges(&m, &seg),
            Some(vec![DiscardRange {
                sector: 100,
                num_sectors: 8,
                unmap: true,
                unknown_flags: false
            }])
        );
        let bad = [Segment {
            addr: GuestAddress(0x2000),
            len: 15,
        }];
        assert_eq!(discard_ranges(&m, &bad), None);
    }
}
