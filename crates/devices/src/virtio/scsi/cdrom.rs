//! An MMC CD/DVD-ROM drive holding a read-only disc image: the logical
//! unit behind the virtio-scsi device (SPC-4, MMC-6).
//!
//! The disc is one data track (mode 1, 2048-byte blocks) in one closed
//! session, as an ISO 9660 image is. Its capacity is the image size
//! divided by 2048, rounded down: a tail shorter than a block is not
//! readable. Discs of up to 360000 blocks (an 80-minute CD) present the
//! CD-ROM profile, larger ones the DVD-ROM profile, the way guests expect
//! of real media of those sizes. An image smaller than one block is no
//! disc at all: the drive reports MEDIUM NOT PRESENT.
//!
//! Errors are CHECK CONDITION with fixed-format sense data, delivered in
//! the response (autosense): nothing is left pending for REQUEST SENSE
//! but a unit attention. After power-on (each activation of the device)
//! the first command other than INQUIRY, REPORT LUNS, REQUEST SENSE, GET
//! CONFIGURATION and GET EVENT STATUS NOTIFICATION reports UNIT
//! ATTENTION, POWER ON OCCURRED, as real drives do: Linux (sr and the
//! SCSI midlayer), OpenBSD's cd(4) and SeaBIOS all retry past it.
//!
//! No I/O is done here except reads of the image passed in, so every
//! command can be tested with an image in memory.

use std::io;

use disk::DiskImage;

use super::request::{S_FAILURE, S_OK, S_OVERRUN};

/// Bytes per logical block of a CD or DVD (mode 1 user data).
pub const BLOCK_SIZE: u64 = 2048;
/// Blocks of the largest CD (80 minutes at 75 blocks a second); larger
/// discs are DVDs.
pub const CD_MAX_BLOCKS: u64 = 80 * 60 * 75;

pub const VENDOR: &[u8; 8] = b"VMD     ";
pub const PRODUCT: &[u8; 16] = b"CD-ROM          ";
pub const REVISION: &[u8; 4] = b"1.0 ";

// SCSI status codes (SAM-5).
pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;

// Operation codes (SPC-4, SBC-3, MMC-6).
const TEST_UNIT_READY: u8 = 0x00;
const REQUEST_SENSE: u8 = 0x03;
const FORMAT_UNIT: u8 = 0x04;
const READ_6: u8 = 0x08;
const WRITE_6: u8 = 0x0a;
const INQUIRY: u8 = 0x12;
const MODE_SENSE_6: u8 = 0x1a;
const START_STOP_UNIT: u8 = 0x1b;
const PREVENT_ALLOW: u8 = 0x1e;
const READ_CAPACITY_10: u8 = 0x25;
const READ_10: u8 = 0x28;
const WRITE_10: u8 = 0x2a;
const WRITE_VERIFY_10: u8 = 0x2e;
const SYNCHRONIZE_CACHE_10: u8 = 0x35;
const READ_TOC: u8 = 0x43;
const GET_CONFIGURATION: u8 = 0x46;
const GET_EVENT_STATUS: u8 = 0x4a;
const READ_DISC_INFORMATION: u8 = 0x51;
const READ_TRACK_INFORMATION: u8 = 0x52;
const RESERVE_TRACK: u8 = 0x53;
const SEND_OPC: u8 = 0x54;
const MODE_SENSE_10: u8 = 0x5a;
const CLOSE_TRACK: u8 = 0x5b;
const SEND_CUE_SHEET: u8 = 0x5d;
const READ_16: u8 = 0x88;
const WRITE_16: u8 = 0x8a;
const WRITE_VERIFY_16: u8 = 0x8e;
const SYNCHRONIZE_CACHE_16: u8 = 0x91;
const SERVICE_ACTION_IN_16: u8 = 0x9e;
const REPORT_LUNS: u8 = 0xa0;
const BLANK: u8 = 0xa1;
const READ_12: u8 = 0xa8;
const WRITE_12: u8 = 0xaa;
const WRITE_VERIFY_12: u8 = 0xae;
const SET_CD_SPEED: u8 = 0xbb;
const MECHANISM_STATUS: u8 = 0xbd;
const READ_CD: u8 = 0xbe;

/// READ CAPACITY(16), a service action of SERVICE ACTION IN(16).
const SA_READ_CAPACITY_16: u8 = 0x10;

// Sense keys.
pub const NO_SENSE: u8 = 0x0;
pub const NOT_READY: u8 = 0x2;
pub const MEDIUM_ERROR: u8 = 0x3;
pub const ILLEGAL_REQUEST: u8 = 0x5;
pub const UNIT_ATTENTION: u8 = 0x6;
pub const DATA_PROTECT: u8 = 0x7;

/// Sense data: a sense key with its additional sense code and qualifier,
/// and for INVALID FIELD IN CDB the byte of the CDB at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub field: Option<u16>,
}

impl Sense {
    const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            field: None,
        }
    }

    pub const NONE: Sense = Sense::new(NO_SENSE, 0x00, 0x00);
    pub const INVALID_OPCODE: Sense = Sense::new(ILLEGAL_REQUEST, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(ILLEGAL_REQUEST, 0x21, 0x00);
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x25, 0x00);
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x39, 0x00);
    pub const REMOVAL_PREVENTED: Sense = Sense::new(ILLEGAL_REQUEST, 0x53, 0x02);
    pub const ILLEGAL_MODE_FOR_TRACK: Sense = Sense::new(ILLEGAL_REQUEST, 0x64, 0x00);
    pub const WRITE_PROTECTED: Sense = Sense::new(DATA_PROTECT, 0x27, 0x00);
    pub const MEDIUM_NOT_PRESENT: Sense = Sense::new(NOT_READY, 0x3a, 0x00);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(MEDIUM_ERROR, 0x11, 0x00);
    pub const POWER_ON: Sense = Sense::new(UNIT_ATTENTION, 0x29, 0x01);
    pub const LUN_RESET: Sense = Sense::new(UNIT_ATTENTION, 0x29, 0x03);
    pub const I_T_NEXUS_LOSS: Sense = Sense::new(UNIT_ATTENTION, 0x29, 0x07);

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at byte `byte`.
    pub const fn invalid_field(byte: u16) -> Sense {
        Sense {
            key: ILLEGAL_REQUEST,
            asc: 0x24,
            ascq: 0x00,
            field: Some(byte),
        }
    }

    /// Fixed-format sense data (SPC-4 4.5.3), current error.
    pub fn fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key;
        b[7] = 10; // additional sense length
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(f) = self.field {
            // SKSV, C/D (the field is in the CDB), field pointer.
            b[15] = 0xc0;
            b[16..18].copy_from_slice(&f.to_be_bytes());
        }
        b
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The virtio response code: OK, OVERRUN or FAILURE.
    pub response: u8,
    /// SCSI status (with response OK).
    pub status: u8,
    pub sense: Option<Sense>,
    /// Bytes written at the start of data-in.
    pub transferred: u64,
}

impl Completion {
    pub fn good(transferred: u64) -> Completion {
        Completion {
            response: S_OK,
            status: GOOD,
            sense: None,
            transferred,
        }
    }

    pub fn check(sense: Sense) -> Completion {
        Completion {
            response: S_OK,
            status: CHECK_CONDITION,
            sense: Some(sense),
            transferred: 0,
        }
    }

    /// The CDB asks for more data than the data-in buffer holds (virtio
    /// 1.2 section 5.6.6.1): nothing was transferred.
    pub fn overrun() -> Completion {
        Completion {
            response: S_OVERRUN,
            status: GOOD,
            sense: None,
            transferred: 0,
        }
    }

    pub fn failure() -> Completion {
        Completion {
            response: S_FAILURE,
            status: GOOD,
            sense: None,
            transferred: 0,
        }
    }
}

/// The data-in buffer of a command, as the logical unit sees it.
pub trait DataIn {
    /// Bytes it holds.
    fn capacity(&self) -> u64;
    /// Copies `data` (no longer than `capacity`) to its start.
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
    /// Fills its first `len` bytes (no more than `capacity`) from `disk`
    /// at byte `offset`.
    fn read_disk(&mut self, disk: &mut dyn DiskImage, offset: u64, len: u64) -> io::Result<()>;
}

/// Sends parameter data: as much of `data` as the allocation length
/// allows (SPC-4 4.2.5.6). If even that does not fit the buffer the
/// command overruns.
pub fn reply(data: &[u8], alloc: usize, out: &mut dyn DataIn) -> Completion {
    let n = data.len().min(alloc);
    if n as u64 > out.capacity() {
        return Completion::overrun();
    }
    if n > 0 && out.write(&data[..n]).is_err() {
        return Completion::failure();
    }
    Completion::good(n as u64)
}

/// The length of a CDB from its operation code's group (SPC-4 4.2.5.1),
/// `None` for the variable-length, reserved and vendor groups.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Checks the parts of a CDB every command shares: a known length, all
/// of it present, no NACA bit (ACA is not supported). Returns the CDB
/// cut to its length.
pub fn check_cdb(cdb: &[u8]) -> Result<&[u8], Sense> {
    let Some(&op) = cdb.first() else {
        return Err(Sense::invalid_field(0));
    };
    let Some(len) = cdb_len(op) else {
        return Err(Sense::INVALID_OPCODE);
    };
    let Some(cdb) = cdb.get(..len) else {
        // The driver shrank cdb_size below what the opcode needs.
        return Err(Sense::invalid_field(cdb.len() as u16));
    };
    if cdb[len - 1] & 0x04 != 0 {
        return Err(Sense::invalid_field(len as u16 - 1));
    }
    Ok(cdb)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// `lba` as minutes, seconds, frames (MMC-6 6.26.3.2): 150 frames of
/// pre-gap, clamped to the largest address the format holds.
fn msf(lba: u64) -> [u8; 3] {
    let f = (lba + 150).min(255 * 4500 + 59 * 75 + 74);
    [(f / 4500) as u8, (f / 75 % 60) as u8, (f % 75) as u8]
}

/// A TOC address field: LBA, or 0 followed by M, S, F.
fn toc_addr(lba: u64, use_msf: bool) -> [u8; 4] {
    if use_msf {
        let [m, s, f] = msf(lba);
        [0, m, s, f]
    } else {
        (lba.min(u64::from(u32::MAX)) as u32).to_be_bytes()
    }
}

/// Standard INQUIRY data (SPC-4 6.4.2), 36 bytes: `byte0` gives the
/// peripheral qualifier and device type.
pub fn standard_inquiry(byte0: u8, removable: bool) -> [u8; 36] {
    let mut b = [0u8; 36];
    b[0] = byte0;
    b[1] = if removable { 0x80 } else { 0 };
    b[2] = 0x05; // SPC-3
    b[3] = 0x02; // response data format
    b[4] = 36 - 5; // additional length
    b[7] = 0x02; // CmdQue: commands may be queued
    b[8..16].copy_from_slice(VENDOR);
    b[16..32].copy_from_slice(PRODUCT);
    b[32..36].copy_from_slice(REVISION);
    b
}

/// REPORT LUNS (SPC-4 6.33) for target 0: LUN 0, and the REPORT LUNS
/// well-known logical unit when well-known LUNs are asked for.
pub fn report_luns(cdb: &[u8], out: &mut dyn DataIn) -> Completion {
    let alloc = be32(&cdb[6..10]) as usize;
    if alloc < 16 {
        return Completion::check(Sense::invalid_field(6));
    }
    const LUN0: [u8; 8] = [0; 8];
    const WLUN: [u8; 8] = [0xc1, 0x01, 0, 0, 0, 0, 0, 0];
    let luns: &[[u8; 8]] = match cdb[2] {
        0x00 => &[LUN0],
        0x01 => &[WLUN],
        0x02 => &[LUN0, WLUN],
        _ => return Completion::check(Sense::invalid_field(2)),
    };
    let mut d = Vec::with_capacity(8 + 8 * luns.len());
    d.extend_from_slice(&(8 * luns.len() as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for l in luns {
        d.extend_from_slice(l);
    }
    reply(&d, alloc, out)
}

/// The REQUEST SENSE answer for `sense` (GOOD status, the sense as
/// parameter data).
pub fn request_sense(cdb: &[u8], sense: Sense, out: &mut dyn DataIn) -> Completion {
    // Descriptor format (DESC) is not supported; fixed format is
    // returned either way.
    reply(&sense.fixed(), usize::from(cdb[4]), out)
}

/// The drive's state: what it remembers between commands.
pub struct CdRom {
    /// Readable 2048-byte blocks of the disc.
    blocks: u64,
    /// Unit serial number (VPD page 0x80), printable ASCII.
    serial: Vec<u8>,
    /// A unit attention condition waiting to be reported.
    unit_attention: Option<Sense>,
    /// PREVENT ALLOW MEDIUM REMOVAL: removal prevented.
    prevent: bool,
}

impl CdRom {
    /// A drive holding a disc of `size` bytes, just powered on.
    pub fn new(size: u64, serial: &str) -> CdRom {
        let mut s: Vec<u8> = serial
            .bytes()
            .filter(|b| (0x20..0x7f).contains(b))
            .take(32)
            .collect();
        if s.is_empty() {
            s = b"0".to_vec();
        }
        CdRom {
            blocks: size / BLOCK_SIZE,
            serial: s,
            unit_attention: Some(Sense::POWER_ON),
            prevent: false,
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// A reset of the logical unit (or a loss of the I_T nexus): the
    /// next command reports `why`; the medium is no longer locked.
    pub fn reset(&mut self, why: Sense) {
        self.unit_attention = Some(why);
        self.prevent = false;
    }

    fn medium(&self) -> Result<u64, Sense> {
        if self.blocks == 0 {
            Err(Sense::MEDIUM_NOT_PRESENT)
        } else {
            Ok(self.blocks)
        }
    }

    /// The MMC profile of the disc: DVD-ROM, CD-ROM, or none without one.
    fn profile(&self) -> u16 {
        match self.blocks {
            0 => 0x0000,
            b if b > CD_MAX_BLOCKS => 0x0010,
            _ => 0x0008,
        }
    }

    /// Executes `cdb`, reading the disc from `disk` into `out`.
    pub fn execute(
        &mut self,
        cdb: &[u8],
        disk: &mut dyn DiskImage,
        out: &mut dyn DataIn,
    ) -> Completion {
        let cdb = match check_cdb(cdb) {
            Ok(c) => c,
            Err(s) => return Completion::check(s),
        };
        let op = cdb[0];
        // Commands a unit attention does not hold up (SPC-4 5.14, MMC-6
        // 4.1.6).
        if !matches!(
            op,
            INQUIRY | REPORT_LUNS | REQUEST_SENSE | GET_CONFIGURATION | GET_EVENT_STATUS
        ) {
            if let Some(ua) = self.unit_attention.take() {
                return Completion::check(ua);
            }
        }
        let result = match op {
            TEST_UNIT_READY => self.medium().map(|_| Completion::good(0)),
            REQUEST_SENSE => {
                let sense = self.unit_attention.take().unwrap_or(Sense::NONE);
                Ok(request_sense(cdb, sense, out))
            }
            INQUIRY => self.inquiry(cdb, out),
            REPORT_LUNS => Ok(report_luns(cdb, out)),
            MODE_SENSE_6 | MODE_SENSE_10 => self.mode_sense(cdb, out),
            START_STOP_UNIT => self.start_stop(cdb),
            PREVENT_ALLOW => {
                // Prevent field: bit 0 prevents, bit 1 is persistence.
                self.prevent = cdb[4] & 0x01 != 0;
                Ok(Completion::good(0))
            }
            READ_CAPACITY_10 => self.read_capacity_10(out),
            SERVICE_ACTION_IN_16 => self.service_action_in(cdb, out),
            READ_6 => {
                let lba = u64::from(cdb[1] & 0x1f) << 16 | u64::from(be16(&cdb[2..4]));
                // A transfer length of 0 means 256 blocks.
                let n = match cdb[4] {
                    0 => 256,
                    n => u64::from(n),
                };
                self.read(disk, out, lba, n)
            }
            READ_10 => self.read(
                disk,
                out,
                u64::from(be32(&cdb[2..6])),
                u64::from(be16(&cdb[7..9])),
            ),
            READ_12 => self.read(
                disk,
                out,
                u64::from(be32(&cdb[2..6])),
                u64::from(be32(&cdb[6..10])),
            ),
            READ_16 => self.read(disk, out, be64(&cdb[2..10]), u64::from(be32(&cdb[10..14]))),
            READ_CD => self.read_cd(cdb, disk, out),
            READ_TOC => self.read_toc(cdb, out),
            GET_CONFIGURATION => self.get_configuration(cdb, out),
            GET_EVENT_STATUS => self.event_status(cdb, out),
            READ_DISC_INFORMATION => self.disc_information(cdb, out),
            READ_TRACK_INFORMATION => self.track_information(cdb, out),
            MECHANISM_STATUS => {
                // Not a changer: no slot tables; idle, door closed.
                let d = [0u8; 8];
                Ok(reply(&d, usize::from(be16(&cdb[8..10])), out))
            }
            // Speed is whatever the host's storage gives; there is no
            // cache to write back.
            SET_CD_SPEED | SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 => Ok(Completion::good(0)),
            WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16 | WRITE_VERIFY_10 | WRITE_VERIFY_12
            | WRITE_VERIFY_16 | FORMAT_UNIT | BLANK | CLOSE_TRACK | RESERVE_TRACK | SEND_OPC
            | SEND_CUE_SHEET => self.medium().and(Err(Sense::WRITE_PROTECTED)),
            _ => Err(Sense::INVALID_OPCODE),
        };
        result.unwrap_or_else(Completion::check)
    }

    fn inquiry(&self, cdb: &[u8], out: &mut dyn DataIn) -> Result<Completion, Sense> {
        let evpd = cdb[1] & 0x01 != 0;
        if cdb[1] & 0x02 != 0 {
            return Err(Sense::invalid_field(1)); // CmdDt, obsolete
        }
        let page = cdb[2];
        let alloc = usize::from(be16(&cdb[3..5]));
        if !evpd {
            if page != 0 {
                return Err(Sense::invalid_field(2));
            }
            return Ok(reply(&standard_inquiry(0x05, true), alloc, out));
        }
        let mut d = vec![0x05, page, 0, 0];
        match page {
            // Supported VPD pages.
            0x00 => d.extend_from_slice(&[0x00, 0x80, 0x83]),
            // Unit serial number.
            0x80 => d.extend_from_slice(&self.serial),
            // Device identification: a T10 vendor ID based designator.
            0x83 => {
                let n = (8 + self.serial.len()) as u8;
                d.extend_from_slice(&[0x02, 0x01, 0x00, n]);
                d.extend_from_slice(VENDOR);
                d.extend_from_slice(&self.serial);
            }
            _ => return Err(Sense::invalid_field(2)),
        }
        let len = (d.len() - 4) as u16;
        d[2..4].copy_from_slice(&len.to_be_bytes());
        Ok(reply(&d, alloc, out))
    }

    /// A mode page: current (and default) values, or with `changeable`
    /// the mask of changeable bits, none of which are.
    fn mode_page(&self, page: u8, changeable: bool) -> Vec<u8> {
        let mut p = match page {
            // Read error recovery parameters (MMC-6 7.3).
            0x01 => vec![0x01, 0x0a, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 0],
            // CD/DVD capabilities and mechanical status (MMC-3 6.3.11),
            // the layout Linux's sr and the BSDs read.
            _ => {
                let speed = (48 * 176u16).to_be_bytes(); // 48x, kB/s
                let mut p = vec![0u8; 22];
                p[0] = 0x2a;
                p[1] = 20;
                p[2] = 0x0b; // reads CD-R, CD-RW, DVD-ROM
                p[3] = 0x00; // writes nothing
                p[4] = 0x40; // multi-session
                p[5] = 0x00; // no CD-DA commands
                             // Tray loading mechanism, can lock, lock state; no eject.
                p[6] = 0x20 | 0x01 | if self.prevent { 0x02 } else { 0 };
                p[8..10].copy_from_slice(&speed); // maximum read speed
                p[14..16].copy_from_slice(&speed); // current read speed
                p
            }
        };
        if changeable {
            p[2..].fill(0);
        }
        p
    }

    fn mode_sense(&self, cdb: &[u8], out: &mut dyn DataIn) -> Result<Completion, Sense> {
        let ten = cdb[0] == MODE_SENSE_10;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        let subpage = cdb[3];
        let alloc = if ten {
            usize::from(be16(&cdb[7..9]))
        } else {
            usize::from(cdb[4])
        };
        if pc == 3 {
            return Err(Sense::SAVING_NOT_SUPPORTED);
        }
        let pages: &[u8] = match page {
            0x01 => &[0x01],
            0x2a => &[0x2a],
            0x3f => &[0x01, 0x2a],
            _ => return Err(Sense::invalid_field(2)),
        };
        if subpage != 0 && !(page == 0x3f && subpage == 0xff) {
            return Err(Sense::invalid_field(3));
        }
        // MMC drives return no block descriptors (DBD or not), and the
        // medium type and device-specific parameter are reserved.
        let mut d = if ten { vec![0u8; 8] } else { vec![0u8; 4] };
        for &p in pages {
            d.extend_from_slice(&self.mode_page(p, pc == 1));
        }
        if ten {
            let len = (d.len() - 2) as u16;
            d[0..2].copy_from_slice(&len.to_be_bytes());
        } else {
            d[0] = (d.len() - 1) as u8;
        }
        Ok(reply(&d, alloc, out))
    }

    fn start_stop(&self, cdb: &[u8]) -> Result<Completion, Sense> {
        let power_condition = cdb[4] >> 4;
        let load_eject = cdb[4] & 0x02 != 0;
        let start = cdb[4] & 0x01 != 0;
        if power_condition == 0 && load_eject && !start && self.prevent {
            return Err(Sense::REMOVAL_PREVENTED);
        }
        // Spinning up or down, loading: nothing to do. Ejecting: the
        // image stays where it is (the drive has no tray to open; its
        // capabilities page says it cannot eject).
        Ok(Completion::good(0))
    }

    fn read_capacity_10(&self, out: &mut dyn DataIn) -> Result<Completion, Sense> {
        let blocks = self.medium()?;
        let last = (blocks - 1).min(u64::from(u32::MAX)) as u32;
        let mut d = [0u8; 8];
        d[0..4].copy_from_slice(&last.to_be_bytes());
        d[4..8].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
        Ok(reply(&d, d.len(), out))
    }

    fn service_action_in(&self, cdb: &[u8], out: &mut dyn DataIn) -> Result<Completion, Sense> {
        if cdb[1] & 0x1f != SA_READ_CAPACITY_16 {
            return Err(Sense::invalid_field(1));
        }
        let blocks = self.medium()?;
        let mut d = [0u8; 32];
        d[0..8].copy_from_slice(&(blocks - 1).to_be_bytes());
        d[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
        Ok(reply(&d, be32(&cdb[10..14]) as usize, out))
    }

    /// Reads `count` blocks at `lba` into the data-in buffer.
    fn read(
        &self,
        disk: &mut dyn DiskImage,
        out: &mut dyn DataIn,
        lba: u64,
        count: u64,
    ) -> Result<Completion, Sense> {
        let blocks = self.medium()?;
        if lba.checked_add(count).is_none_or(|end| end > blocks) {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        if count == 0 {
            return Ok(Completion::good(0));
        }
        // count < 2^32, so no overflow.
        let len = count * BLOCK_SIZE;
        if len > out.capacity() {
            return Ok(Completion::overrun());
        }
        match out.read_disk(disk, lba * BLOCK_SIZE, len) {
            Ok(()) => Ok(Completion::good(len)),
            Err(e) => {
                log::warn!("cdrom: read of {count} blocks at {lba}: {e}");
                Err(Sense::UNRECOVERED_READ_ERROR)
            }
        }
    }

    /// READ CD (MMC-6 6.19) for user data only: the disc has no audio,
    /// and headers, sync, EDC/ECC and sub-channels are not kept in an
    /// ISO image.
    fn read_cd(
        &self,
        cdb: &[u8],
        disk: &mut dyn DiskImage,
        out: &mut dyn DataIn,
    ) -> Result<Completion, Sense> {
        let sector_type = (cdb[1] >> 2) & 0x07;
        let lba = u64::from(be32(&cdb[2..6]));
        let count = u64::from(be32(&[0, cdb[6], cdb[7], cdb[8]]));
        match sector_type {
            0 | 2 => {}                                             // any, or mode 1
            1 | 3..=5 => return Err(Sense::ILLEGAL_MODE_FOR_TRACK), // CD-DA, mode 2
            _ => return Err(Sense::invalid_field(1)),
        }
        if cdb[10] & 0x07 != 0 {
            return Err(Sense::invalid_field(10)); // sub-channel data
        }
        match cdb[9] {
            0x00 => {
                // No data asked for: only the range is checked.
                let blocks = self.medium()?;
                if lba.checked_add(count).is_none_or(|end| end > blocks) {
                    return Err(Sense::LBA_OUT_OF_RANGE);
                }
                Ok(Completion::good(0))
            }
            0x10 => self.read(disk, out, lba, count),
            _ => Err(Sense::invalid_field(9)),
        }
    }

    fn read_toc(&self, cdb: &[u8], out: &mut dyn DataIn) -> Result<Completion, Sense> {
        let blocks = self.medium()?;
        let use_msf = cdb[1] & 0x02 != 0;
        // The format is in byte 2; drivers written for SFF-8020 (Linux's
        // sr_cd_check among them) put it in the top bits of byte 9.
        let format = match cdb[2] & 0x0f {
            0 => cdb[9] >> 6,
            f => f,
        };
        let track = cdb[6];
        let alloc = usize::from(be16(&cdb[7..9]));
        let mut d = vec![0u8; 4];
        match format {
            // TOC: track 1 (data, ADR 1) and the lead-out.
            0 => {
                d[2] = 1;
                d[3] = 1;
                let mut entry = |number: u8, lba: u64| {
                    d.extend_from_slice(&[0, 0x14, number, 0]);
                    d.extend_from_slice(&toc_addr(lba, use_msf));
                };
                match track {
                    0 | 1 => {
                        entry(1, 0);
                        entry(0xaa, blocks);
                    }
                    0xaa => entry(0xaa, blocks),
                    _ => return Err(Sense::invalid_field(6)),
                }
            }
            // Session information: one session, starting at track 1.
            1 => {
                d[2] = 1;
                d[3] = 1;
                d.extend_from_slice(&[0, 0x14, 1, 0]);
                d.extend_from_slice(&toc_addr(0, use_msf));
            }
            // Full TOC: points A0 (first track), A1 (last track), A2
            // (lead-out) and track 1, always in MSF.
            2 => {
                d[2] = 1;
                d[3] = 1;
                let [m, s, f] = msf(blocks);
                for (point, p) in [
                    (0xa0, [1, 0x00, 0]), // first track, disc type CD-ROM
                    (0xa1, [1, 0, 0]),
                    (0xa2, [m, s, f]),
                    (0x01, [0, 2, 0]),
                ] {
                    d.extend_from_slice(&[1, 0x14, 0, point, 0, 0, 0, 0]);
                    d.extend_from_slice(&p);
                }
            }
            // PMA, ATIP, CD-TEXT: a pressed disc has none.
            _ => return Err(Sense::invalid_field(2)),
        }
        let len = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
        Ok(reply(&d, alloc, out))
    }

    /// The features of GET CONFIGURATION (MMC-6 5.3): code, version,
    /// persistent, current, data.
    fn features(&self) -> Vec<(u16, u8, bool, bool, Vec<u8>)> {
        let profile = self.profile();
        let dvd = profile == 0x0010;
        let cd = profile == 0x0008;
        let medium = profile != 0;
        let blocking: u16 = if dvd { 16 } else { 1 };
        let mut random = (BLOCK_SIZE as u32).to_be_bytes().to_vec();
        random.extend_from_slice(&blocking.to_be_bytes());
        random.extend_from_slice(&[0, 0]);
        vec![
            (
                0x0000, // profile list: DVD-ROM, CD-ROM
                0,
                true,
                true,
                vec![0x00, 0x10, dvd as u8, 0, 0x00, 0x08, cd as u8, 0],
            ),
            (0x0001, 1, true, true, vec![0, 0, 0, 1, 0, 0, 0, 0]), // core: SCSI
            (0x0002, 1, true, true, vec![0, 0, 0, 0]),             // morphing: polled
            (0x0003, 0, true, true, vec![0x21, 0, 0, 0]),          // removable: tray, lock
            (0x0010, 0, false, medium, random),                    // random readable
            (0x001d, 0, false, cd, vec![]),                        // multi-read
            (0x001e, 2, false, cd, vec![0, 0, 0, 0]),              // CD read
            (0x001f, 0, false, dvd, vec![]),                       // DVD read
            (0x0100, 0, true, true, vec![]),                       // power management
        ]
    }

    fn get_configuration(&self, cdb: &[u8], out: &mut dyn DataIn) -> Result<Completion, Sense> {
        let rt = cdb[1] & 0x03;
        let start = be16(&cdb[2..4]);
        let alloc = usize::from(be16(&cdb[7..9]));
        let mut d = vec![0u8; 8];
        d[6..8].copy_from_slice(&self.profile().to_be_bytes());
        for (code, version, persistent, current, data) in self.features() {
            let wanted = match rt {
                0 => code >= start,
                1 => code >= start && current,
                2 => code == start,
                _ => return Err(Sense::invalid_field(1)),
            };
            if wanted {
                d.extend_from_slice(&code.to_be_bytes());
                d.push(version << 2 | u8::from(persistent) << 1 | u8::from(current));
                d.push(data.len() as u8);
                d.extend_from_slice(&data);
            }
        }
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        Ok(reply(&d, alloc, out))
    }

    /// GET EVENT STATUS NOTIFICATION (MMC-6 6.7), polled, media class
    /// only: the disc is present and never changes.
    fn event_status(&self, cdb: &[u8], out: &mut dyn DataIn) -> Result<Completion, Sense> {
        if cdb[1] & 0x01 == 0 {
            return Err(Sense::invalid_field(1)); // asynchronous operation
        }
        const MEDIA: u8 = 1 << 4;
        let alloc = usize::from(be16(&cdb[7..9]));
        let d = if cdb[4] & MEDIA != 0 {
            let present = u8::from(self.blocks > 0) << 1;
            vec![0, 6, 0x04, MEDIA, 0x00, present, 0, 0]
        } else {
            // No Event Available for the classes asked for.
            vec![0, 2, 0x80, MEDIA]
        };
        Ok(reply(&d, alloc, out))
    }

    fn disc_information(&self, cdb: &[u8], out: &mut dyn DataIn) -> Result<Completion, Sense> {
        self.medium()?;
        if cdb[1] & 0x07 != 0 {
            return Err(Sense::invalid_field(1)); // track or POW resources
        }
        let mut d = [0u8; 34];
        d[0..2].copy_from_slice(&32u16.to_be_bytes());
        d[2] = 0x0e; // last session complete, disc finalized
        d[3] = 1; // first track on disc
        d[4] = 1; // sessions
        d[5] = 1; // first track in last session
        d[6] = 1; // last track in last session
        d[7] = 0x20; // unrestricted use
        d[8] = 0x00; // CD-ROM disc type
        d[16..24].fill(0xff); // no next session, no lead-out to record
        Ok(reply(&d, usize::from(be16(&cdb[7..9])), out))
    }

    fn track_information(&self, cdb: &[u8], out: &mut dyn DataIn) -> Result<Completion, Sense> {
        let blocks = self.medium()?;
        let number = be32(&cdb[2..6]);
        match cdb[1] & 0x03 {
            0 if u64::from(number) >= blocks => return Err(Sense::LBA_OUT_OF_RANGE),
            0 => {}
            1 | 2 if number == 1 => {} // track 1, or session 1
            1 | 2 => return Err(Sense::invalid_field(2)),
            _ => return Err(Sense::invalid_field(1)),
        }
        let mut d = [0u8; 48];
        d[0..2].copy_from_slice(&46u16.to_be_bytes());
        d[2] = 1; // track
        d[3] = 1; // session
        d[5] = 0x04; // track mode: data, recorded uninterrupted
        d[6] = 0x01; // data mode 1
                     // Track start 0, no next writable address, no free blocks.
        let size = blocks.min(u64::from(u32::MAX)) as u32;
        d[24..28].copy_from_slice(&size.to_be_bytes());
        Ok(reply(&d, usize::from(be16(&cdb[7..9])), out))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{IoSlice, IoSliceMut};

    /// An image in memory; reads past its end, or of `bad_block`, fail.
    pub(crate) struct MemDisk {
        pub data: Vec<u8>,
        pub bad_block: Option<u64>,
    }

    impl MemDisk {
        /// `size` bytes, each block filled with its number's low byte.
        pub(crate) fn new(size: usize) -> MemDisk {
            let data = (0..size).map(|i| (i / 2048) as u8).collect();
            MemDisk {
                data,
                bad_block: None,
            }
        }
    }

    impl DiskImage for MemDisk {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<()> {
            let mut off = offset as usize;
            for b in bufs.iter_mut() {
                if let Some(bad) = self.bad_block {
                    let block = bad as usize * 2048;
                    if off < block + 2048 && block < off + b.len() {
                        return Err(io::Error::other("bad block"));
                    }
                }
                let src = self
                    .data
                    .get(off..off + b.len())
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                b.copy_from_slice(src);
                off += b.len();
            }
            Ok(())
        }
        fn write_at(&mut self, _: &[IoSlice<'_>], _: u64) -> io::Result<()> {
            panic!("the CD-ROM must never write its image");
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn supports_discard(&self) -> bool {
            false
        }
        fn discard(&mut self, _: u64, _: u64) -> io::Result<()> {
            panic!("discard")
        }
        fn write_zeroes(&mut self, _: u64, _: u64, _: bool) -> io::Result<()> {
            panic!("write_zeroes")
        }
    }

    /// A data-in buffer in memory.
    pub(crate) struct VecIn {
        pub buf: Vec<u8>,
    }

    impl VecIn {
        pub(crate) fn new(len: usize) -> VecIn {
            VecIn {
                buf: vec![0xee; len],
            }
        }
    }

    impl DataIn for VecIn {
        fn capacity(&self) -> u64 {
            self.buf.len() as u64
        }
        fn write(&mut self, data: &[u8]) -> io::Result<()> {
            self.buf[..data.len()].copy_from_slice(data);
            Ok(())
        }
        fn read_disk(&mut self, disk: &mut dyn DiskImage, offset: u64, len: u64) -> io::Result<()> {
            // Two pieces, to exercise vectored reads.
            let (a, b) = self.buf[..len as usize].split_at_mut(len as usize / 2);
            disk.read_at(&mut [IoSliceMut::new(a), IoSliceMut::new(b)], offset)
        }
    }

    const MB: usize = 1 << 20;

    /// A drive past its power-on unit attention, with a `size`-byte disc.
    fn drive(size: usize) -> (CdRom, MemDisk) {
        let mut cd = CdRom::new(size as u64, "SERIAL0001");
        let mut disk = MemDisk::new(size);
        let c = cd.execute(&[0; 6], &mut disk, &mut VecIn::new(0));
        assert_eq!(c.sense, Some(Sense::POWER_ON));
        (cd, disk)
    }

    /// Runs `cdb` with a `len`-byte data-in buffer.
    fn run(cd: &mut CdRom, disk: &mut MemDisk, cdb: &[u8], len: usize) -> (Completion, Vec<u8>) {
        let mut out = VecIn::new(len);
        let c = cd.execute(cdb, disk, &mut out);
        let n = c.transferred as usize;
        out.buf.truncate(n);
        (c, out.buf)
    }

    fn good(cd: &mut CdRom, disk: &mut MemDisk, cdb: &[u8], len: usize) -> Vec<u8> {
        let (c, d) = run(cd, disk, cdb, len);
        assert_eq!(
            (c.response, c.status, c.sense),
            (S_OK, GOOD, None),
            "{cdb:x?}"
        );
        d
    }

    fn sense(cd: &mut CdRom, disk: &mut MemDisk, cdb: &[u8], len: usize) -> Sense {
        let (c, _) = run(cd, disk, cdb, len);
        assert_eq!((c.response, c.status), (S_OK, CHECK_CONDITION), "{cdb:x?}");
        assert_eq!(c.transferred, 0);
        c.sense.unwrap()
    }

    #[test]
    fn power_on_unit_attention() {
        let mut cd = CdRom::new(4 * MB as u64, "S");
        let mut disk = MemDisk::new(4 * MB);
        // INQUIRY, GET CONFIGURATION and GET EVENT STATUS pass it by.
        good(&mut cd, &mut disk, &[0x12, 0, 0, 0, 36, 0], 36);
        good(&mut cd, &mut disk, &[0x46, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8);
        good(&mut cd, &mut disk, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 8);
        // REQUEST SENSE reports and clears it.
        let d = good(&mut cd, &mut disk, &[0x03, 0, 0, 0, 18, 0], 18);
        assert_eq!((d[0], d[2], d[12], d[13]), (0x70, 6, 0x29, 0x01));
        good(&mut cd, &mut disk, &[0; 6], 0);
        // Otherwise the first command reports it, once.
        let mut cd = CdRom::new(4 * MB as u64, "S");
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8),
            Sense::POWER_ON
        );
        good(&mut cd, &mut disk, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        let d = good(&mut cd, &mut disk, &[0x03, 0, 0, 0, 252, 0], 252);
        assert_eq!(d.len(), 18);
        assert_eq!(d[2], NO_SENSE);
        // A logical unit reset raises another one.
        cd.reset(Sense::LUN_RESET);
        assert_eq!(sense(&mut cd, &mut disk, &[0; 6], 0), Sense::LUN_RESET);
    }

    #[test]
    fn inquiry() {
        let (mut cd, mut disk) = drive(MB);
        let d = good(&mut cd, &mut disk, &[0x12, 0, 0, 0, 0xff, 0], 0xff);
        assert_eq!(d.len(), 36);
        assert_eq!(d[0], 0x05, "CD/DVD device, connected");
        assert_eq!(d[1], 0x80, "removable");
        assert_eq!(usize::from(d[4]) + 5, 36);
        assert_eq!(&d[8..16], b"VMD     ");
        assert_eq!(&d[16..32], b"CD-ROM          ");
        // Allocation length cuts the data, and the residual shows it.
        let d = good(&mut cd, &mut disk, &[0x12, 0, 0, 0, 5, 0], 5);
        assert_eq!(d.len(), 5);
        // VPD pages.
        let d = good(&mut cd, &mut disk, &[0x12, 1, 0x00, 0, 0xff, 0], 0xff);
        assert_eq!(d, vec![0x05, 0x00, 0, 3, 0x00, 0x80, 0x83]);
        let d = good(&mut cd, &mut disk, &[0x12, 1, 0x80, 0, 0xff, 0], 0xff);
        assert_eq!(&d[4..], b"SERIAL0001");
        assert_eq!(usize::from(be16(&d[2..4])), d.len() - 4);
        let d = good(&mut cd, &mut disk, &[0x12, 1, 0x83, 0, 0xff, 0], 0xff);
        assert_eq!(&d[4..8], &[0x02, 0x01, 0x00, 18]);
        assert_eq!(&d[8..16], b"VMD     ");
        assert_eq!(&d[16..], b"SERIAL0001");
        assert_eq!(usize::from(be16(&d[2..4])), d.len() - 4);
        // Unknown page, page without EVPD, CmdDt.
        for cdb in [[0x12, 1, 0xb0, 0, 0xff, 0], [0x12, 0, 0x80, 0, 0xff, 0]] {
            assert_eq!(
                sense(&mut cd, &mut disk, &cdb, 0xff),
                Sense::invalid_field(2)
            );
        }
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x12, 2, 0, 0, 0xff, 0], 0xff),
            Sense::invalid_field(1)
        );
        // A huge allocation length with a buffer that holds the answer.
        let d = good(&mut cd, &mut disk, &[0x12, 0, 0, 0xff, 0xff, 0], 100);
        assert_eq!(d.len(), 36);
        // A buffer too small for what would be sent: overrun.
        let (c, _) = run(&mut cd, &mut disk, &[0x12, 0, 0, 0, 36, 0], 20);
        assert_eq!((c.response, c.transferred), (S_OVERRUN, 0));
    }

    #[test]
    fn read_capacity_rounds_down() {
        // 1 MiB + 1000 bytes: 512 whole blocks.
        let (mut cd, mut disk) = drive(MB + 1000);
        let d = good(&mut cd, &mut disk, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        assert_eq!(be32(&d[0..4]), 511);
        assert_eq!(be32(&d[4..8]), 2048);
        let d = good(
            &mut cd,
            &mut disk,
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            32,
        );
        assert_eq!(be64(&d[0..8]), 511);
        assert_eq!(be32(&d[8..12]), 2048);
        assert_eq!(
            sense(
                &mut cd,
                &mut disk,
                &[0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
                32
            ),
            Sense::invalid_field(1)
        );
        // READ CAPACITY needs room for its 8 bytes.
        let (c, _) = run(&mut cd, &mut disk, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 4);
        assert_eq!(c.response, S_OVERRUN);
        // The last whole block reads; the partial one after it does not.
        good(
            &mut cd,
            &mut disk,
            &[0x28, 0, 0, 0, 1, 0xff, 0, 0, 1, 0],
            2048,
        );
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x28, 0, 0, 0, 2, 0, 0, 0, 1, 0], 2048),
            Sense::LBA_OUT_OF_RANGE
        );
    }

    #[test]
    fn reads() {
        let (mut cd, mut disk) = drive(MB);
        let expect = |lba: usize, n: usize| -> Vec<u8> { disk_bytes(lba, n) };
        fn disk_bytes(lba: usize, n: usize) -> Vec<u8> {
            (lba * 2048..(lba + n) * 2048)
                .map(|i| (i / 2048) as u8)
                .collect()
        }
        // READ(6), (10), (12), (16) of blocks 3..5.
        let cdbs: [&[u8]; 4] = [
            &[0x08, 0, 0, 3, 2, 0],
            &[0x28, 0, 0, 0, 0, 3, 0, 0, 2, 0],
            &[0xa8, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0],
            &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0],
        ];
        for cdb in cdbs {
            assert_eq!(
                good(&mut cd, &mut disk, cdb, 4096),
                expect(3, 2),
                "{cdb:x?}"
            );
        }
        // A bigger buffer than needed: the rest is residual.
        let (c, d) = run(&mut cd, &mut disk, cdbs[1], 8192);
        assert_eq!((c.transferred, d), (4096, expect(3, 2)));
        // Zero blocks: nothing moves.
        assert!(good(&mut cd, &mut disk, &[0x28, 0, 0, 0, 0, 3, 0, 0, 0, 0], 0).is_empty());
        // READ(6) with length 0 means 256 blocks.
        assert_eq!(
            good(&mut cd, &mut disk, &[0x08, 0, 0, 0, 0, 0], 256 * 2048),
            expect(0, 256)
        );
        // Out of range: past the end, straddling it, overflowing u64.
        for cdb in [
            &[0x28, 0, 0, 0, 2, 0, 0, 0, 1, 0][..],
            &[0x28, 0, 0, 0, 1, 0xff, 0, 0, 2, 0],
            &[
                0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2, 0, 0,
            ],
            &[0xa8, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
        ] {
            assert_eq!(
                sense(&mut cd, &mut disk, cdb, 4096),
                Sense::LBA_OUT_OF_RANGE
            );
        }
        // A data-in buffer smaller than the transfer: overrun, no data.
        let (c, _) = run(&mut cd, &mut disk, cdbs[1], 4095);
        assert_eq!((c.response, c.transferred), (S_OVERRUN, 0));
        // The image fails to read: MEDIUM ERROR.
        disk.bad_block = Some(4);
        assert_eq!(
            sense(&mut cd, &mut disk, cdbs[1], 4096),
            Sense::UNRECOVERED_READ_ERROR
        );
        disk.bad_block = None;
        // READ CD, user data only; other sector types are refused.
        assert_eq!(
            good(
                &mut cd,
                &mut disk,
                &[0xbe, 0, 0, 0, 0, 3, 0, 0, 2, 0x10, 0, 0],
                4096
            ),
            expect(3, 2)
        );
        assert_eq!(
            sense(
                &mut cd,
                &mut disk,
                &[0xbe, 1 << 2, 0, 0, 0, 3, 0, 0, 2, 0x10, 0, 0],
                4096
            ),
            Sense::ILLEGAL_MODE_FOR_TRACK
        );
        assert_eq!(
            sense(
                &mut cd,
                &mut disk,
                &[0xbe, 0, 0, 0, 0, 3, 0, 0, 2, 0xf8, 0, 0],
                4096
            ),
            Sense::invalid_field(9)
        );
        good(
            &mut cd,
            &mut disk,
            &[0xbe, 0, 0, 0, 0, 3, 0, 0, 2, 0x00, 0, 0],
            0,
        );
        assert_eq!(
            sense(
                &mut cd,
                &mut disk,
                &[0xbe, 0, 0, 0, 2, 0, 0, 0, 2, 0x00, 0, 0],
                0
            ),
            Sense::LBA_OUT_OF_RANGE
        );
    }

    #[test]
    fn writes_are_refused() {
        let (mut cd, mut disk) = drive(MB);
        for cdb in [
            &[0x0a, 0, 0, 0, 1, 0][..],
            &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
            &[0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
            &[0x2e, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[0x04, 0, 0, 0, 0, 0],
            &[0xa1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(sense(&mut cd, &mut disk, cdb, 0), Sense::WRITE_PROTECTED);
        }
    }

    #[test]
    fn unknown_and_malformed_cdbs() {
        let (mut cd, mut disk) = drive(MB);
        // Unknown opcodes of each group, a vendor opcode, MODE SELECT.
        for cdb in [
            &[0x01, 0, 0, 0, 0, 0][..],
            &[0x15, 0x10, 0, 0, 12, 0],
            &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 12, 0],
            &[0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xa3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xff, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(
                sense(&mut cd, &mut disk, cdb, 0),
                Sense::INVALID_OPCODE,
                "{cdb:x?}"
            );
        }
        // CDBs shorter than the opcode needs.
        assert_eq!(sense(&mut cd, &mut disk, &[], 0), Sense::invalid_field(0));
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x28, 0, 0, 0, 0], 2048),
            Sense::invalid_field(5)
        );
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x88; 15], 2048),
            Sense::invalid_field(15)
        );
        // NACA set in the control byte.
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x00, 0, 0, 0, 0, 0x04], 0),
            Sense::invalid_field(5)
        );
        // Trailing bytes beyond the CDB's length (cdb_size 32) are ignored.
        let mut long = [0u8; 32];
        long[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
        long[31] = 0xff;
        good(&mut cd, &mut disk, &long, 2048);
        // The sense of INVALID FIELD IN CDB points at the byte.
        let s = Sense::invalid_field(9).fixed();
        assert_eq!((s[15], s[16], s[17]), (0xc0, 0, 9));
    }

    #[test]
    fn mode_sense() {
        let (mut cd, mut disk) = drive(MB);
        // MODE SENSE(6) and (10) of page 0x2a, parsed as Linux's
        // scsi_mode_sense and sr's get_capabilities do.
        for ten in [false, true] {
            let (cdb, hdr): (&[u8], usize) = if ten {
                (&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 128, 0], 8)
            } else {
                (&[0x1a, 0, 0x2a, 0, 128, 0], 4)
            };
            let d = good(&mut cd, &mut disk, cdb, 128);
            let (length, bdl) = if ten {
                (usize::from(be16(&d[0..2])) + 2, usize::from(be16(&d[6..8])))
            } else {
                (usize::from(d[0]) + 1, usize::from(d[3]))
            };
            assert_eq!(length, d.len());
            assert_eq!(bdl, 0);
            let n = hdr + bdl;
            assert_eq!(d[n] & 0x3f, 0x2a);
            assert_eq!(usize::from(d[n + 1]) + 2, d.len() - n);
            assert_ne!(d[n + 2] & 0x08, 0, "reads DVDs");
            assert_eq!(d[n + 3], 0, "writes nothing");
            assert_eq!(d[n + 6] >> 5, 1, "tray");
            assert_eq!(d[n + 6] & 0x08, 0, "cannot eject");
            assert_eq!(be16(&d[n + 8..n + 10]) / 176, 48);
        }
        // All pages; changeable values; saved values.
        let d = good(&mut cd, &mut disk, &[0x1a, 0, 0x3f, 0, 255, 0], 255);
        assert_eq!(d[4], 0x01);
        assert_eq!(d[4 + 12], 0x2a);
        let d = good(&mut cd, &mut disk, &[0x1a, 0, 0x40 | 0x2a, 0, 255, 0], 255);
        assert!(d[6..].iter().all(|&b| b == 0));
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x1a, 0, 0xc0 | 0x2a, 0, 255, 0], 255),
            Sense::SAVING_NOT_SUPPORTED
        );
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x1a, 0, 0x05, 0, 255, 0], 255),
            Sense::invalid_field(2)
        );
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x1a, 0, 0x2a, 1, 255, 0], 255),
            Sense::invalid_field(3)
        );
        // The lock state shows in the page.
        good(&mut cd, &mut disk, &[0x1e, 0, 0, 0, 1, 0], 0);
        let d = good(&mut cd, &mut disk, &[0x1a, 0, 0x2a, 0, 255, 0], 255);
        assert_eq!(d[4 + 6] & 0x03, 0x03);
    }

    #[test]
    fn start_stop_and_prevent() {
        let (mut cd, mut disk) = drive(MB);
        good(&mut cd, &mut disk, &[0x1b, 0, 0, 0, 0x01, 0], 0); // start
        good(&mut cd, &mut disk, &[0x1b, 0, 0, 0, 0x02, 0], 0); // eject
        good(&mut cd, &mut disk, &[0x1e, 0, 0, 0, 0x01, 0], 0); // prevent
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x1b, 0, 0, 0, 0x02, 0], 0),
            Sense::REMOVAL_PREVENTED
        );
        good(&mut cd, &mut disk, &[0x1b, 0, 0, 0, 0x03, 0], 0); // load
        good(&mut cd, &mut disk, &[0x1e, 0, 0, 0, 0x00, 0], 0); // allow
        good(&mut cd, &mut disk, &[0x1b, 0, 0, 0, 0x02, 0], 0);
        // The medium is still there.
        good(&mut cd, &mut disk, &[0; 6], 0);
        // A reset releases the lock.
        good(&mut cd, &mut disk, &[0x1e, 0, 0, 0, 0x01, 0], 0);
        cd.reset(Sense::LUN_RESET);
        sense(&mut cd, &mut disk, &[0; 6], 0);
        good(&mut cd, &mut disk, &[0x1b, 0, 0, 0, 0x02, 0], 0);
        good(
            &mut cd,
            &mut disk,
            &[0xbb, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
            0,
        );
        good(&mut cd, &mut disk, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0);
        let d = good(
            &mut cd,
            &mut disk,
            &[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
            8,
        );
        assert_eq!(d, vec![0; 8]);
    }

    #[test]
    fn toc() {
        // 333333 blocks: lead-out at 74:06:33 (plus the 2 s pre-gap).
        let blocks = 333_333usize;
        let mut cd = CdRom::new((blocks * 2048) as u64, "S");
        cd.unit_attention = None;
        let mut disk = MemDisk::new(0);
        let d = good(
            &mut cd,
            &mut disk,
            &[0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0],
            100,
        );
        assert_eq!(
            d,
            vec![0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xaa, 0, 0, 0x05, 0x16, 0x15]
        );
        let d = good(
            &mut cd,
            &mut disk,
            &[0x43, 2, 0, 0, 0, 0, 0, 0, 100, 0],
            100,
        );
        let f = blocks + 150;
        let (m, s, fr) = (f / 4500, f / 75 % 60, f % 75);
        assert_eq!(&d[4..12], &[0, 0x14, 1, 0, 0, 0, 2, 0]);
        assert_eq!(
            &d[12..20],
            &[0, 0x14, 0xaa, 0, 0, m as u8, s as u8, fr as u8]
        );
        // Only the lead-out; a track that does not exist.
        let d = good(
            &mut cd,
            &mut disk,
            &[0x43, 0, 0, 0, 0, 0, 0xaa, 0, 100, 0],
            100,
        );
        assert_eq!((be16(&d[0..2]), d[6]), (10, 0xaa));
        assert_eq!(
            sense(
                &mut cd,
                &mut disk,
                &[0x43, 0, 0, 0, 0, 0, 2, 0, 100, 0],
                100
            ),
            Sense::invalid_field(6)
        );
        // Session info, in byte 2 or (SFF-8020) in byte 9.
        for cdb in [
            [0x43, 0, 1, 0, 0, 0, 0, 0, 12, 0],
            [0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0x40],
        ] {
            let d = good(&mut cd, &mut disk, &cdb, 12);
            assert_eq!(d, vec![0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]);
        }
        // Full TOC.
        let d = good(
            &mut cd,
            &mut disk,
            &[0x43, 2, 2, 0, 0, 0, 0, 0, 100, 0],
            100,
        );
        assert_eq!(be16(&d[0..2]), 2 + 4 * 11);
        assert_eq!(&d[4..15], &[1, 0x14, 0, 0xa0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            &d[26..37],
            &[1, 0x14, 0, 0xa2, 0, 0, 0, 0, m as u8, s as u8, fr as u8]
        );
        // PMA, ATIP: no.
        assert_eq!(
            sense(
                &mut cd,
                &mut disk,
                &[0x43, 0, 3, 0, 0, 0, 0, 0, 100, 0],
                100
            ),
            Sense::invalid_field(2)
        );
        // A DVD too big for MSF: the address saturates.
        assert_eq!(msf(10_000_000), [255, 59, 74]);
    }

    #[test]
    fn configuration_profiles() {
        let cfg = [0x46, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0];
        // A CD-sized image is a CD-ROM, a bigger one a DVD-ROM.
        for (blocks, profile) in [(1000u64, 0x0008u16), (CD_MAX_BLOCKS + 1, 0x0010)] {
            let mut cd = CdRom::new(blocks * 2048, "S");
            let mut disk = MemDisk::new(0);
            let d = good(&mut cd, &mut disk, &cfg, 0xffff);
            assert_eq!(be32(&d[0..4]) as usize, d.len() - 4);
            assert_eq!(be16(&d[6..8]), profile);
            // Walk the features: ascending codes, lengths add up.
            let mut at = 8;
            let mut last = None;
            let mut current_profiles = vec![];
            while at < d.len() {
                let code = be16(&d[at..at + 2]);
                assert!(last < Some(code));
                last = Some(code);
                let len = usize::from(d[at + 3]);
                if code == 0 {
                    for p in d[at + 4..at + 4 + len].chunks(4) {
                        if p[2] & 1 != 0 {
                            current_profiles.push(be16(&p[0..2]));
                        }
                    }
                }
                at += 4 + len;
            }
            assert_eq!(at, d.len());
            assert_eq!(current_profiles, vec![profile]);
            // Linux's cdrom_mmc3_profile: 32 bytes, current profile at 6.
            let d = good(&mut cd, &mut disk, &[0x46, 0, 0, 0, 0, 0, 0, 0, 32, 0], 32);
            assert_eq!(d.len(), 32);
            assert_eq!(be16(&d[6..8]), profile);
            // One feature (RT 2): DVD Read is current only on a DVD.
            let d = good(
                &mut cd,
                &mut disk,
                &[0x46, 2, 0, 0x1f, 0, 0, 0, 0, 255, 0],
                255,
            );
            assert_eq!(d.len(), 12);
            assert_eq!(d[10] & 1, u8::from(profile == 0x0010));
            // Linux's cdrom_is_mrw: no MRW feature.
            let d = good(
                &mut cd,
                &mut disk,
                &[0x46, 2, 0, 0x28, 0, 0, 0, 0, 16, 0],
                16,
            );
            assert_eq!(d.len(), 8);
        }
        // Current features only, from 0x10.
        let mut cd = CdRom::new(1000 * 2048, "S");
        let mut disk = MemDisk::new(0);
        let d = good(
            &mut cd,
            &mut disk,
            &[0x46, 1, 0, 0x10, 0, 0, 0, 0, 255, 0],
            255,
        );
        let codes: Vec<u16> = {
            let mut v = vec![];
            let mut at = 8;
            while at < d.len() {
                v.push(be16(&d[at..]));
                at += 4 + usize::from(d[at + 3]);
            }
            v
        };
        assert_eq!(codes, vec![0x10, 0x1d, 0x1e, 0x100]);
        assert_eq!(
            sense(
                &mut cd,
                &mut disk,
                &[0x46, 3, 0, 0, 0, 0, 0, 0, 255, 0],
                255
            ),
            Sense::invalid_field(1)
        );
    }

    #[test]
    fn event_status() {
        let (mut cd, mut disk) = drive(MB);
        // What Linux's sr_get_events sends.
        let d = good(&mut cd, &mut disk, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 8);
        assert_eq!(d, vec![0, 6, 0x04, 0x10, 0x00, 0x02, 0, 0]);
        // Other classes only: no event available.
        let d = good(&mut cd, &mut disk, &[0x4a, 1, 0, 0, 0x02, 0, 0, 0, 8, 0], 8);
        assert_eq!(d, vec![0, 2, 0x80, 0x10]);
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8, 0], 8),
            Sense::invalid_field(1)
        );
    }

    #[test]
    fn disc_and_track_information() {
        let (mut cd, mut disk) = drive(MB);
        let d = good(&mut cd, &mut disk, &[0x51, 0, 0, 0, 0, 0, 0, 0, 2, 0], 2);
        assert_eq!(be16(&d) + 2, 34);
        let d = good(&mut cd, &mut disk, &[0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0], 34);
        assert_eq!(
            (d[2] & 3, d[6], d[11]),
            (2, 1, 0),
            "finalized; last track 1"
        );
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x51, 1, 0, 0, 0, 0, 0, 0, 34, 0], 34),
            Sense::invalid_field(1)
        );
        let d = good(&mut cd, &mut disk, &[0x52, 1, 0, 0, 0, 1, 0, 0, 48, 0], 48);
        assert_eq!(usize::from(be16(&d)) + 2, 48);
        assert_eq!(d[6] & 0x40, 0, "not blank");
        assert_eq!(be32(&d[8..12]) + be32(&d[24..28]), 512);
        good(
            &mut cd,
            &mut disk,
            &[0x52, 0, 0, 0, 1, 0xff, 0, 0, 48, 0],
            48,
        );
        assert_eq!(
            sense(&mut cd, &mut disk, &[0x52, 0, 0, 0, 2, 0, 0, 0, 48, 0], 48),
            Sense::LBA_OUT_OF_RANGE
        );
        for track in [0u8, 2, 0xff] {
            assert_eq!(
                sense(
                    &mut cd,
                    &mut disk,
                    &[0x52, 1, 0, 0, 0, track, 0, 0, 48, 0],
                    48
                ),
                Sense::invalid_field(2)
            );
        }
    }

    #[test]
    fn no_disc() {
        // An image smaller than one block holds no disc.
        let mut cd = CdRom::new(1000, "S");
        let mut disk = MemDisk::new(1000);
        cd.unit_attention = None;
        for cdb in [
            &[0x00, 0, 0, 0, 0, 0][..],
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0],
            &[0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0],
            &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        ] {
            assert_eq!(
                sense(&mut cd, &mut disk, cdb, 2048),
                Sense::MEDIUM_NOT_PRESENT
            );
        }
        let d = good(&mut cd, &mut disk, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 8);
        assert_eq!(d[5], 0, "no media present");
        let d = good(&mut cd, &mut disk, &[0x46, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8);
        assert_eq!(be16(&d[6..8]), 0);
    }

    /// The commands Linux sends when it finds and mounts the CD (the SCSI
    /// midlayer's scan, sr_probe, the Uniform CD-ROM driver's open, and
    /// isofs), answered the way those drivers parse them.
    #[test]
    fn linux_probe_and_mount() {
        // A 50 MiB "ISO" with a recognisable volume descriptor at 16.
        let size = 50 * MB;
        let mut cd = CdRom::new(size as u64, "vmd-cd0");
        let mut disk = MemDisk::new(size);
        disk.data[16 * 2048..16 * 2048 + 6].copy_from_slice(b"\x01CD001");
        let disk = &mut disk;

        // scsi_probe_lun: INQUIRY 36, then the full length.
        let d = good(&mut cd, disk, &[0x12, 0, 0, 0, 36, 0], 36);
        assert_eq!(d[0] & 0x1f, 5, "TYPE_ROM");
        assert_eq!(d[0] >> 5, 0, "connected");
        let full = usize::from(d[4]) + 5;
        assert!(full <= 36 || full <= 255);
        good(&mut cd, disk, &[0x12, 0, 0, 0, full as u8, 0], full);
        // scsi_attach_vpd: supported pages, then the ones listed.
        let d = good(&mut cd, disk, &[0x12, 1, 0, 0, 255, 0], 255);
        for &page in &d[4..] {
            good(&mut cd, disk, &[0x12, 1, page, 0, 255, 0], 255);
        }
        // sr get_capabilities: TUR eats the unit attention (retried by
        // scsi_test_unit_ready), then MODE SENSE page 0x2a.
        assert_eq!(
            sense(&mut cd, disk, &[0; 6], 0),
            Sense::POWER_ON,
            "first TUR"
        );
        good(&mut cd, disk, &[0; 6], 0);
        good(&mut cd, disk, &[0x1a, 0, 0x2a, 0, 128, 0], 128);
        // sr_revalidate_disk: TUR, sr_cd_check (READ TOC, session format
        // in the control byte, 12 bytes), get_sectorsize.
        good(&mut cd, disk, &[0; 6], 0);
        let d = good(&mut cd, disk, &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0x40], 12);
        assert!(usize::from(be16(&d[0..2])) >= 0x0a);
        assert!(d[6] <= 1, "no multisession offset");
        let d = good(&mut cd, disk, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        let capacity = u64::from(be32(&d[0..4])) + 1;
        assert_eq!(be32(&d[4..8]), 2048);
        assert_eq!(capacity, (size / 2048) as u64);
        // cdrom_get_last_written: disc info (2 bytes, then all), track
        // info of the last track (8 bytes, then up to 36).
        let d = good(&mut cd, disk, &[0x51, 0, 0, 0, 0, 0, 0, 0, 2, 0], 2);
        let len = (usize::from(be16(&d)) + 2).min(34);
        let d = good(
            &mut cd,
            disk,
            &[0x51, 0, 0, 0, 0, 0, 0, 0, len as u8, 0],
            len,
        );
        let last_track = u32::from(d[11]) << 8 | u32::from(d[6]);
        let mut ti = [0x52, 1, 0, 0, 0, 0, 0, 0, 8, 0];
        ti[2..6].copy_from_slice(&last_track.to_be_bytes());
        let d = good(&mut cd, disk, &ti, 8);
        let len = (usize::from(be16(&d)) + 2).min(36);
        ti[8] = len as u8;
        let d = good(&mut cd, disk, &ti, len);
        assert_eq!(d[6] & 0x40, 0, "not blank");
        assert_eq!(d[7] & 0x02, 0, "no last recorded address");
        let last_written = u64::from(be32(&d[8..12])) + u64::from(be32(&d[24..28]));
        assert_eq!(last_written, capacity, "sr keeps max(capacity, last)");
        // The partition scan reads the first blocks.
        good(&mut cd, disk, &[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0], 4096);
        // open: sr_drive_status (TUR), cdrom_count_tracks (TOC header,
        // each track in MSF), cdrom_mmc3_profile, door lock.
        good(&mut cd, disk, &[0; 6], 0);
        let d = good(&mut cd, disk, &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0], 12);
        let (first, last) = (d[2], d[3]);
        assert_eq!((first, last), (1, 1));
        for t in first..=last {
            let d = good(&mut cd, disk, &[0x43, 2, 0, 0, 0, 0, t, 0, 12, 0], 12);
            assert_ne!(d[5] & 0x04, 0, "data track");
            assert_eq!(&d[8..12], &[0, 0, 2, 0], "starts at 00:02:00");
        }
        let d = good(&mut cd, disk, &[0x46, 0, 0, 0, 0, 0, 0, 0, 32, 0], 32);
        assert_eq!(be16(&d[6..8]), 0x0008);
        good(&mut cd, disk, &[0x1e, 0, 0, 0, 1, 0], 0);
        // isofs reads the primary volume descriptor.
        let d = good(&mut cd, disk, &[0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0], 2048);
        assert_eq!(&d[..6], b"\x01CD001");
        // Release: unlock. Media polling: GET EVENT STATUS.
        good(&mut cd, disk, &[0x1e, 0, 0, 0, 0, 0], 0);
        let d = good(&mut cd, disk, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 8);
        assert!(be16(&d[0..2]) >= 4 && d[2] & 0x80 == 0 && d[2] & 7 == 4);
        assert_eq!(d[4] & 0x0f, 0, "no media event");
        assert_ne!(d[5] & 0x02, 0, "media present");
    }
}
