//! virtio-scsi requests as descriptor chains carry them (virtio 1.2
//! section 5.6.6): on a request queue a command header the device reads
//! (LUN, tag, CDB), data-out, then a response header the device writes
//! (sense, residual, status, response) and data-in; on the control queue a
//! task management function or an asynchronous notification query.
//!
//! Parsing checks the chain's shape and addresses and does no I/O beyond
//! reading the headers, so hostile chains are dealt with in one place and
//! can be tested without a disk. Every descriptor must lie in guest RAM
//! (`check_range`, as for the block device); the headers may be split
//! across descriptors or share one with data, as the spec allows.

use std::fmt;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address as _, Bytes};

use crate::virtio::GuestMemory;

// Response codes (section 5.6.6.1 and 5.6.6.2).
pub const S_OK: u8 = 0;
pub const S_OVERRUN: u8 = 1;
pub const S_BAD_TARGET: u8 = 3;
pub const S_FAILURE: u8 = 9;
pub const S_FUNCTION_COMPLETE: u8 = 0;
pub const S_FUNCTION_SUCCEEDED: u8 = 10;
pub const S_FUNCTION_REJECTED: u8 = 11;
pub const S_INCORRECT_LUN: u8 = 12;

// Control queue request types.
pub const T_TMF: u32 = 0;
pub const T_AN_QUERY: u32 = 1;
pub const T_AN_SUBSCRIBE: u32 = 2;

// Task management functions.
pub const TMF_ABORT_TASK: u32 = 0;
pub const TMF_ABORT_TASK_SET: u32 = 1;
pub const TMF_CLEAR_ACA: u32 = 2;
pub const TMF_CLEAR_TASK_SET: u32 = 3;
pub const TMF_I_T_NEXUS_RESET: u32 = 4;
pub const TMF_LOGICAL_UNIT_RESET: u32 = 5;
pub const TMF_QUERY_TASK: u32 = 6;
pub const TMF_QUERY_TASK_SET: u32 = 7;

/// Bytes of `virtio_scsi_cmd_req` before the CDB: lun, id, task_attr,
/// prio, crn.
pub const CMD_HEADER_LEN: u64 = 19;
/// Bytes of `virtio_scsi_cmd_resp` before the sense data: sense_len,
/// residual, status_qualifier, status, response.
pub const RESP_HEADER_LEN: u64 = 12;
/// CDB bytes kept from a request: the longest CDB of any command served
/// here is 16 bytes; the default `cdb_size` is 32.
pub const MAX_CDB: usize = 32;
/// Readable bytes of a TMF request: type, subtype, lun, id.
const TMF_LEN: usize = 24;
/// Readable bytes of an AN request: type, lun, event_requested.
const AN_LEN: usize = 16;
/// Writable bytes of an AN response: event_actual, response.
pub const AN_RESP_LEN: u64 = 5;

pub use crate::virtio::chain::Segment;
use crate::virtio::chain::{self, ChainError};

/// Segments seen as one run of bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buffer {
    pub segs: Vec<Segment>,
    /// Total bytes of `segs`.
    pub len: u64,
}

impl Buffer {
    fn push(&mut self, s: Segment) {
        if s.len > 0 {
            self.len += u64::from(s.len);
            self.segs.push(s);
        }
    }

    /// The first `n` bytes and the rest (the first part is shorter than
    /// `n` if the buffer is).
    pub fn split_at(&self, n: u64) -> (Buffer, Buffer) {
        let mut head = Buffer::default();
        let mut tail = Buffer::default();
        let mut left = n;
        for s in &self.segs {
            if left == 0 {
                tail.push(*s);
            } else if u64::from(s.len) <= left {
                left -= u64::from(s.len);
                head.push(*s);
            } else {
                // 0 < left < s.len, so it fits in u32.
                let k = left as u32;
                head.push(Segment {
                    addr: s.addr,
                    len: k,
                });
                tail.push(Segment {
                    addr: s.addr.unchecked_add(u64::from(k)),
                    len: s.len - k,
                });
                left = 0;
            }
        }
        (head, tail)
    }

    /// Reads the first `out.len()` bytes (or all there are) into `out`;
    /// returns how many.
    pub fn read(&self, mem: &GuestMemory, out: &mut [u8]) -> usize {
        let mut done = 0usize;
        for s in &self.segs {
            if done == out.len() {
                break;
            }
            let n = (out.len() - done).min(s.len as usize);
            if mem.read_slice(&mut out[done..done + n], s.addr).is_err() {
                break;
            }
            done += n;
        }
        done
    }

    /// Writes `data` (or as much as fits) at the start; returns how many
    /// bytes were written.
    pub fn write(&self, mem: &GuestMemory, data: &[u8]) -> usize {
        let mut done = 0usize;
        for s in &self.segs {
            if done == data.len() {
                break;
            }
            let n = (data.len() - done).min(s.len as usize);
            if mem.write_slice(&data[done..done + n], s.addr).is_err() {
                break;
            }
            done += n;
        }
        done
    }
}

/// A chain split into its device-readable and device-writable parts.
fn split_chain(
    mem: &GuestMemory,
    descs: impl Iterator<Item = Descriptor>,
) -> Result<(Buffer, Buffer), ParseError> {
    let (r, w) = chain::split(mem, descs)?;
    let mut readable = Buffer::default();
    let mut writable = Buffer::default();
    r.into_iter().for_each(|seg| readable.push(seg));
    w.into_iter().for_each(|seg| writable.push(seg));
    Ok((readable, writable))
}

/// A SCSI command from a request queue.
#[derive(Debug, PartialEq, Eq)]
pub struct CmdRequest {
    pub lun: [u8; 8],
    /// The command identifier (`id`, the tag).
    pub tag: u64,
    pub task_attr: u8,
    /// The CDB: `cdb_size` bytes, at most [`MAX_CDB`] of them.
    pub cdb: Vec<u8>,
    /// Data-out (device-readable, after the header).
    pub data_out: Buffer,
    /// The `virtio_scsi_cmd_resp` area: at least [`RESP_HEADER_LEN`]
    /// bytes, at most `RESP_HEADER_LEN + sense_size`.
    pub response: Buffer,
    /// Data-in (device-writable, after `sense_size` bytes of sense).
    pub data_in: Buffer,
}

/// What is wrong with a chain.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// A device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// A descriptor points outside guest RAM (or wraps around).
    OutsideMemory { addr: u64, len: u32 },
    /// More descriptors than any queue allows.
    TooLong,
    /// Too few writable bytes for the response: nothing can be answered.
    NoResponse,
    /// Too few readable bytes for the request header; answered with
    /// VIRTIO_SCSI_S_FAILURE in `response`.
    ShortHeader { response: Buffer },
    /// Both data-out and data-in, without VIRTIO_SCSI_F_INOUT (section
    /// 5.6.6.1: answered with VIRTIO_SCSI_S_FAILURE).
    Bidirectional { response: Buffer },
}

impl ParseError {
    /// Where a VIRTIO_SCSI_S_FAILURE response can go, if anywhere.
    pub fn response(&self) -> Option<&Buffer> {
        match self {
            ParseError::ShortHeader { response } | ParseError::Bidirectional { response } => {
                Some(response)
            }
            _ => None,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::ReadableAfterWritable => {
                f.write_str("device-readable descriptor after a device-writable one")
            }
            ParseError::OutsideMemory { addr, len } => {
                write!(f, "descriptor {addr:#x}+{len:#x} outside guest memory")
            }
            ParseError::TooLong => f.write_str("descriptor chain too long"),
            ParseError::NoResponse => f.write_str("no room for the response header"),
            ParseError::ShortHeader { .. } => f.write_str("request header too short"),
            ParseError::Bidirectional { .. } => {
                f.write_str("both data-out and data-in without VIRTIO_SCSI_F_INOUT")
            }
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

/// Parses a request queue chain, with the configuration's current
/// `cdb_size` and `sense_size` (the driver may change both).
pub fn parse_cmd(
    mem: &GuestMemory,
    descs: impl Iterator<Item = Descriptor>,
    cdb_size: u32,
    sense_size: u32,
) -> Result<CmdRequest, ParseError> {
    let (readable, writable) = split_chain(mem, descs)?;
    if writable.len < RESP_HEADER_LEN {
        return Err(ParseError::NoResponse);
    }
    let (response, data_in) = writable.split_at(RESP_HEADER_LEN + u64::from(sense_size));
    let header_len = CMD_HEADER_LEN + u64::from(cdb_size);
    if readable.len < header_len {
        return Err(ParseError::ShortHeader { response });
    }
    let (header, data_out) = readable.split_at(header_len);
    if data_out.len > 0 && data_in.len > 0 {
        return Err(ParseError::Bidirectional { response });
    }
    let keep = CMD_HEADER_LEN as usize + (cdb_size as usize).min(MAX_CDB);
    let mut h = vec![0u8; keep];
    if header.read(mem, &mut h) != keep {
        // Checked to be RAM; only a concurrent unplug could get here.
        return Err(ParseError::ShortHeader { response });
    }
    Ok(CmdRequest {
        lun: h[0..8].try_into().unwrap(),
        tag: u64::from_le_bytes(h[8..16].try_into().unwrap()),
        task_attr: h[16],
        cdb: h[CMD_HEADER_LEN as usize..].to_vec(),
        data_out,
        response,
        data_in,
    })
}

/// The fixed part of `virtio_scsi_cmd_resp` followed by `sense`.
pub fn encode_response(response: u8, status: u8, residual: u32, sense: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(RESP_HEADER_LEN as usize + sense.len());
    b.extend_from_slice(&(sense.len() as u32).to_le_bytes());
    b.extend_from_slice(&residual.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // status_qualifier
    b.push(status);
    b.push(response);
    b.extend_from_slice(sense);
    b
}

/// A control queue request.
#[derive(Debug, PartialEq, Eq)]
pub enum CtrlRequest {
    /// A task management function; the response is one byte.
    Tmf {
        subtype: u32,
        lun: [u8; 8],
        tag: u64,
        response: Buffer,
    },
    /// AN query or subscribe; the response is event_actual and response.
    An {
        kind: u32,
        lun: [u8; 8],
        event_requested: u32,
        response: Buffer,
    },
    /// A type this device does not know. `response` is the last
    /// writable byte, where the generic `virtio_scsi_ctrl` layout puts
    /// the response (empty if there is none).
    Unknown { kind: u32, response: Buffer },
}

/// Parses a control queue chain.
pub fn parse_ctrl(
    mem: &GuestMemory,
    descs: impl Iterator<Item = Descriptor>,
) -> Result<CtrlRequest, ParseError> {
    let (readable, writable) = split_chain(mem, descs)?;
    let mut h = [0u8; TMF_LEN];
    let got = readable.read(mem, &mut h);
    if got < 4 {
        return Err(ParseError::ShortHeader {
            response: Buffer::default(),
        });
    }
    let kind = u32::from_le_bytes(h[0..4].try_into().unwrap());
    match kind {
        T_TMF => {
            if got < TMF_LEN {
                return Err(ParseError::ShortHeader {
                    response: Buffer::default(),
                });
            }
            if writable.len < 1 {
                return Err(ParseError::NoResponse);
            }
            Ok(CtrlRequest::Tmf {
                subtype: u32::from_le_bytes(h[4..8].try_into().unwrap()),
                lun: h[8..16].try_into().unwrap(),
                tag: u64::from_le_bytes(h[16..24].try_into().unwrap()),
                response: writable.split_at(1).0,
            })
        }
        T_AN_QUERY | T_AN_SUBSCRIBE => {
            if got < AN_LEN {
                return Err(ParseError::ShortHeader {
                    response: Buffer::default(),
                });
            }
            if writable.len < AN_RESP_LEN {
                return Err(ParseError::NoResponse);
            }
            Ok(CtrlRequest::An {
                kind,
                lun: h[4..12].try_into().unwrap(),
                event_requested: u32::from_le_bytes(h[12..16].try_into().unwrap()),
                response: writable.split_at(AN_RESP_LEN).0,
            })
        }
        _ => {
            let response = if writable.len > 0 {
                writable.split_at(writable.len - 1).1
            } else {
                Buffer::default()
            };
            Ok(CtrlRequest::Unknown { kind, response })
        }
    }
}

/// What the 8-byte LUN field of a request addresses (section 5.6.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LunAddress {
    /// A logical unit on `target`.
    Lun { target: u8, lun: Lun },
    /// The REPORT LUNS well-known logical unit, addressed as the spec
    /// puts it: 0xC1, 0x01 and six zero bytes.
    ReportLuns,
    /// No format the device knows: no target can be named.
    Invalid,
}

/// The logical unit part of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lun {
    /// A single level LUN, peripheral or flat space addressing.
    Number(u16),
    /// The REPORT LUNS well-known logical unit (W-LUN 0xC101).
    ReportLuns,
    /// Some other LUN format (multi-level, other well-known LUNs, a
    /// non-zero bus identifier): no such logical unit here.
    Unsupported,
}

/// Decodes a LUN field.
pub fn parse_lun(lun: &[u8; 8]) -> LunAddress {
    if lun[..2] == [0xc1, 0x01] && lun[2..].iter().all(|&b| b == 0) {
        return LunAddress::ReportLuns;
    }
    if lun[0] != 1 {
        return LunAddress::Invalid;
    }
    let target = lun[1];
    let unit = if lun[4..].iter().any(|&b| b != 0) {
        Lun::Unsupported
    } else {
        match (lun[2] >> 6, lun[2] & 0x3f, lun[3]) {
            // Peripheral device addressing, bus 0.
            (0, 0, l) => Lun::Number(u16::from(l)),
            // Flat space addressing (what Linux and BSDs send, even for
            // LUN 0).
            (1, hi, lo) => Lun::Number(u16::from(hi) << 8 | u16::from(lo)),
            // Well-known LUN: REPORT LUNS is 0xC101.
            (3, 0x01, 0x01) => Lun::ReportLuns,
            _ => Lun::Unsupported,
        }
    };
    LunAddress::Lun { target, lun: unit }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestAddress;

    const MEM: u64 = 1 << 20;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn d(addr: u64, len: u32, write: bool) -> Descriptor {
        let flags = if write { VRING_DESC_F_WRITE } else { 0 } | VRING_DESC_F_NEXT;
        Descriptor::new(addr, len, flags as u16, 0)
    }

    /// A Linux-style command header at `at`: LUN 0 of target `t`, flat
    /// space addressing, tag 0x1234, the CDB padded to 32 bytes.
    fn header(m: &GuestMemory, at: u64, t: u8, cdb: &[u8]) {
        let mut h = vec![1, t, 0x40, 0, 0, 0, 0, 0];
        h.extend_from_slice(&0x1234u64.to_le_bytes());
        h.extend_from_slice(&[0, 0, 0]);
        let mut c = cdb.to_vec();
        c.resize(32, 0);
        h.extend_from_slice(&c);
        m.write_slice(&h, GuestAddress(at)).unwrap();
    }

    #[test]
    fn linux_read_request() {
        let m = mem();
        header(&m, 0x1000, 0, &[0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0]);
        let r = parse_cmd(
            &m,
            [
                d(0x1000, 51, false),
                d(0x2000, 108, true),
                d(0x3000, 2048, true),
            ]
            .into_iter(),
            32,
            96,
        )
        .unwrap();
        assert_eq!(r.lun, [1, 0, 0x40, 0, 0, 0, 0, 0]);
        assert_eq!(r.tag, 0x1234);
        assert_eq!(r.cdb.len(), 32);
        assert_eq!(&r.cdb[..10], &[0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0]);
        assert_eq!(r.data_out.len, 0);
        assert_eq!(r.response.len, 108);
        assert_eq!(r.data_in.len, 2048);
        assert_eq!(r.data_in.segs[0].addr, GuestAddress(0x3000));
    }

    #[test]
    fn headers_may_share_descriptors_with_data() {
        let m = mem();
        header(&m, 0x1000, 0, &[0x12, 0, 0, 0, 36, 0]);
        // Response and data-in in one descriptor, split at 12 + 96.
        let r = parse_cmd(
            &m,
            [d(0x1000, 51, false), d(0x4000, 108 + 36, true)].into_iter(),
            32,
            96,
        )
        .unwrap();
        assert_eq!(r.response.len, 108);
        assert_eq!(
            r.data_in.segs,
            vec![Segment {
                addr: GuestAddress(0x4000 + 108),
                len: 36
            }]
        );
        // Header split over two descriptors, data-out after it in the
        // second one.
        header(&m, 0x1000, 0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let r = parse_cmd(
            &m,
            [
                d(0x1000, 20, false),
                d(0x1000 + 20, 31 + 2048, false),
                d(0x4000, 108, true),
            ]
            .into_iter(),
            32,
            96,
        )
        .unwrap();
        assert_eq!(r.cdb[0], 0x2a);
        assert_eq!(r.data_out.len, 2048);
        assert_eq!(r.data_out.segs[0].addr, GuestAddress(0x1000 + 51));
    }

    #[test]
    fn driver_chosen_sizes() {
        let m = mem();
        header(&m, 0x1000, 0, &[0x00; 16]);
        // A driver that set cdb_size 16 and sense_size 32.
        let r = parse_cmd(
            &m,
            [d(0x1000, 35, false), d(0x4000, 44 + 8, true)].into_iter(),
            16,
            32,
        )
        .unwrap();
        assert_eq!(r.cdb.len(), 16);
        assert_eq!((r.response.len, r.data_in.len), (44, 8));
        // A huge cdb_size keeps only MAX_CDB bytes, but needs them all.
        assert!(matches!(
            parse_cmd(
                &m,
                [d(0x1000, 51, false), d(0x4000, 108, true)].into_iter(),
                u32::MAX,
                96
            ),
            Err(ParseError::ShortHeader { .. })
        ));
        let r = parse_cmd(
            &m,
            [d(0x1000, 19 + 4096, false), d(0x4000, 108, true)].into_iter(),
            4096,
            96,
        )
        .unwrap();
        assert_eq!(r.cdb.len(), MAX_CDB);
        // A huge sense_size leaves no data-in.
        let r = parse_cmd(
            &m,
            [d(0x1000, 51, false), d(0x4000, 4096, true)].into_iter(),
            32,
            u32::MAX,
        )
        .unwrap();
        assert_eq!((r.response.len, r.data_in.len), (4096, 0));
        // cdb_size 0: an empty CDB.
        let r = parse_cmd(
            &m,
            [d(0x1000, 19, false), d(0x4000, 12, true)].into_iter(),
            0,
            0,
        )
        .unwrap();
        assert!(r.cdb.is_empty());
    }

    #[test]
    fn hostile_chains() {
        let m = mem();
        header(&m, 0x1000, 0, &[0x00]);
        // No response buffer at all, or too short for its fixed part.
        assert_eq!(
            parse_cmd(&m, [d(0x1000, 51, false)].into_iter(), 32, 96),
            Err(ParseError::NoResponse)
        );
        assert_eq!(
            parse_cmd(
                &m,
                [d(0x1000, 51, false), d(0x4000, 11, true)].into_iter(),
                32,
                96
            ),
            Err(ParseError::NoResponse)
        );
        // A response header shorter than the sense area: still answerable.
        let r = parse_cmd(
            &m,
            [d(0x1000, 51, false), d(0x4000, 20, true)].into_iter(),
            32,
            96,
        )
        .unwrap();
        assert_eq!((r.response.len, r.data_in.len), (20, 0));
        // Short header: answered with FAILURE in the response.
        let e = parse_cmd(
            &m,
            [d(0x1000, 30, false), d(0x4000, 108, true)].into_iter(),
            32,
            96,
        )
        .unwrap_err();
        assert_eq!(e.response().map(|b| b.len), Some(108));
        // Data-out and data-in together.
        let e = parse_cmd(
            &m,
            [d(0x1000, 51 + 512, false), d(0x4000, 108 + 512, true)].into_iter(),
            32,
            96,
        )
        .unwrap_err();
        assert!(matches!(e, ParseError::Bidirectional { .. }));
        assert_eq!(
            parse_cmd(
                &m,
                [
                    d(0x1000, 51, false),
                    d(0x4000, 108, true),
                    d(0x5000, 4, false)
                ]
                .into_iter(),
                32,
                96
            ),
            Err(ParseError::ReadableAfterWritable)
        );
        assert_eq!(
            parse_cmd(
                &m,
                [d(0x1000, 51, false), d(MEM - 0x1000, 0x2000, true)].into_iter(),
                32,
                96
            ),
            Err(ParseError::OutsideMemory {
                addr: MEM - 0x1000,
                len: 0x2000
            })
        );
        assert!(matches!(
            parse_cmd(
                &m,
                [d(u64::MAX - 8, 51, false), d(0x4000, 108, true)].into_iter(),
                32,
                96
            ),
            Err(ParseError::OutsideMemory { .. })
        ));
    }

    #[test]
    fn control_requests() {
        let m = mem();
        let mut tmf = Vec::new();
        tmf.extend_from_slice(&T_TMF.to_le_bytes());
        tmf.extend_from_slice(&TMF_LOGICAL_UNIT_RESET.to_le_bytes());
        tmf.extend_from_slice(&[1, 0, 0x40, 0, 0, 0, 0, 0]);
        tmf.extend_from_slice(&7u64.to_le_bytes());
        m.write_slice(&tmf, GuestAddress(0x1000)).unwrap();
        let r = parse_ctrl(&m, [d(0x1000, 24, false), d(0x2000, 1, true)].into_iter()).unwrap();
        assert_eq!(
            r,
            CtrlRequest::Tmf {
                subtype: TMF_LOGICAL_UNIT_RESET,
                lun: [1, 0, 0x40, 0, 0, 0, 0, 0],
                tag: 7,
                response: Buffer {
                    segs: vec![Segment {
                        addr: GuestAddress(0x2000),
                        len: 1
                    }],
                    len: 1
                }
            }
        );
        assert_eq!(
            parse_ctrl(&m, [d(0x1000, 24, false)].into_iter()),
            Err(ParseError::NoResponse)
        );
        assert!(matches!(
            parse_ctrl(&m, [d(0x1000, 20, false), d(0x2000, 1, true)].into_iter()),
            Err(ParseError::ShortHeader { .. })
        ));

        let mut an = Vec::new();
        an.extend_from_slice(&T_AN_QUERY.to_le_bytes());
        an.extend_from_slice(&[1, 0, 0x40, 0, 0, 0, 0, 0]);
        an.extend_from_slice(&16u32.to_le_bytes());
        m.write_slice(&an, GuestAddress(0x1000)).unwrap();
        let r = parse_ctrl(&m, [d(0x1000, 16, false), d(0x2000, 5, true)].into_iter()).unwrap();
        assert!(matches!(
            r,
            CtrlRequest::An {
                kind: T_AN_QUERY,
                event_requested: 16,
                ..
            }
        ));
        assert_eq!(
            parse_ctrl(&m, [d(0x1000, 16, false), d(0x2000, 4, true)].into_iter()),
            Err(ParseError::NoResponse)
        );

        m.write_obj(99u32, GuestAddress(0x1000)).unwrap();
        let r = parse_ctrl(&m, [d(0x1000, 4, false), d(0x2000, 8, true)].into_iter()).unwrap();
        assert_eq!(
            r,
            CtrlRequest::Unknown {
                kind: 99,
                response: Buffer {
                    segs: vec![Segment {
                        addr: GuestAddress(0x2007),
                        len: 1
                    }],
                    len: 1
                }
            }
        );
        assert!(matches!(
            parse_ctrl(&m, [d(0x1000, 3, false)].into_iter()),
            Err(ParseError::ShortHeader { .. })
        ));
    }

    #[test]
    fn lun_addresses() {
        use LunAddress::*;
        // Linux, OpenBSD and SeaBIOS: flat space addressing.
        assert_eq!(
            parse_lun(&[1, 0, 0x40, 0, 0, 0, 0, 0]),
            Lun {
                target: 0,
                lun: super::Lun::Number(0)
            }
        );
        assert_eq!(
            parse_lun(&[1, 3, 0x41, 0x02, 0, 0, 0, 0]),
            Lun {
                target: 3,
                lun: super::Lun::Number(0x102)
            }
        );
        // Peripheral device addressing.
        assert_eq!(
            parse_lun(&[1, 0, 0, 5, 0, 0, 0, 0]),
            Lun {
                target: 0,
                lun: super::Lun::Number(5)
            }
        );
        // A bus number, a second level, other address methods.
        for l in [
            [1, 0, 0x01, 0, 0, 0, 0, 0],
            [1, 0, 0x40, 0, 0x40, 1, 0, 0],
            [1, 0, 0x80, 0, 0, 0, 0, 0],
            [1, 0, 0xc1, 0x02, 0, 0, 0, 0],
        ] {
            assert_eq!(
                parse_lun(&l),
                Lun {
                    target: 0,
                    lun: super::Lun::Unsupported
                },
                "{l:x?}"
            );
        }
        assert_eq!(
            parse_lun(&[1, 0, 0xc1, 0x01, 0, 0, 0, 0]),
            Lun {
                target: 0,
                lun: super::Lun::ReportLuns
            }
        );
        assert_eq!(parse_lun(&[0xc1, 0x01, 0, 0, 0, 0, 0, 0]), ReportLuns);
        assert_eq!(parse_lun(&[0xc1, 0x01, 0, 0, 0, 0, 0, 1]), Invalid);
        assert_eq!(parse_lun(&[0, 0, 0, 0, 0, 0, 0, 0]), Invalid);
        assert_eq!(parse_lun(&[2, 0, 0x40, 0, 0, 0, 0, 0]), Invalid);
    }

    #[test]
    fn buffer_split_read_write() {
        let m = mem();
        let mut b = Buffer::default();
        b.push(Segment {
            addr: GuestAddress(0x1000),
            len: 4,
        });
        b.push(Segment {
            addr: GuestAddress(0x2000),
            len: 4,
        });
        assert_eq!(b.write(&m, &[1, 2, 3, 4, 5, 6, 7, 8, 9]), 8);
        let (h, t) = b.split_at(6);
        assert_eq!((h.len, t.len), (6, 2));
        assert_eq!(t.segs[0].addr, GuestAddress(0x2002));
        let mut out = [0u8; 10];
        assert_eq!(t.read(&m, &mut out), 2);
        assert_eq!(&out[..2], &[7, 8]);
        let (h, t) = b.split_at(100);
        assert_eq!((h.len, t.len), (8, 0));
        let (h, t) = b.split_at(0);
        assert_eq!((h.len, t.len), (0, 8));
    }

    /// Random chains (a small xorshift generator, no extra crates;
    /// `SCSI_FUZZ_ITERATIONS` sets how many): parsing never panics, and
    /// every segment it hands out lies in guest memory.
    #[test]
    fn random_chains() {
        let iterations = std::env::var("SCSI_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000u64);
        let m = mem();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let inside = |b: &Buffer| {
            b.segs.iter().all(|s| {
                s.len > 0
                    && s.addr
                        .0
                        .checked_add(u64::from(s.len))
                        .is_some_and(|e| e <= MEM)
            })
        };
        for _ in 0..iterations {
            let n = (next() % 6) as usize;
            let descs: Vec<Descriptor> = (0..n)
                .map(|_| {
                    let r = next();
                    let addr = match r % 4 {
                        0 => next() % MEM,
                        1 => next(),
                        _ => (next() % 16) * 0x1000,
                    };
                    let len = match (r >> 8) % 4 {
                        0 => (next() % 200) as u32,
                        1 => next() as u32,
                        _ => (next() % 5000) as u32,
                    };
                    d(addr, len, (r >> 16) % 2 == 0)
                })
                .collect();
            let cdb_size = [0, 6, 16, 32, 1000, u32::MAX][(next() % 6) as usize];
            let sense_size = [0, 18, 96, 4000, u32::MAX][(next() % 5) as usize];
            match parse_cmd(&m, descs.clone().into_iter(), cdb_size, sense_size) {
                Ok(r) => {
                    assert!(r.cdb.len() <= MAX_CDB);
                    assert!(inside(&r.data_out) && inside(&r.data_in) && inside(&r.response));
                    assert!(r.response.len >= RESP_HEADER_LEN);
                    assert!(r.data_out.len == 0 || r.data_in.len == 0);
                }
                Err(e) => {
                    if let Some(b) = e.response() {
                        assert!(inside(b));
                    }
                }
            }
            match parse_ctrl(&m, descs.into_iter()) {
                Ok(CtrlRequest::Tmf { response, .. }) => {
                    assert!(inside(&response) && response.len == 1)
                }
                Ok(CtrlRequest::An { response, .. }) => {
                    assert!(inside(&response) && response.len == AN_RESP_LEN)
                }
                Ok(CtrlRequest::Unknown { response, .. }) => {
                    assert!(inside(&response) && response.len <= 1)
                }
                Err(_) => {}
            }
        }
    }
}
