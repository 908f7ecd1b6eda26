//! The SCSI domain behind the virtio-scsi device: target 0, whose LUN 0 is
//! the CD-ROM drive. Commands are routed by the request's LUN field:
//!
//! - another target (or a LUN field in no known format): the request is
//!   not processed, response VIRTIO_SCSI_S_BAD_TARGET (virtio 1.2 section
//!   5.6.6.1), which ends a guest's scan of that target;
//! - target 0, LUN 0: the CD-ROM ([`CdRom`]);
//! - the REPORT LUNS well-known logical unit, as the spec addresses it
//!   (0xC1 0x01) or as W-LUN 0xC101 of target 0: INQUIRY, REPORT LUNS,
//!   REQUEST SENSE and TEST UNIT READY (SPC-4 8.2);
//! - any other LUN of target 0: answered by the target as SPC-4 asks
//!   for a logical unit that is not there (peripheral qualifier 011b to
//!   INQUIRY, LOGICAL UNIT NOT SUPPORTED to anything else), which every
//!   initiator's LUN scan understands.
//!
//! Task management functions complete at once: every command has
//! completed by the time the control queue is looked at.

use disk::DiskImage;

use super::cdrom::{
    check_cdb, reply, report_luns, request_sense, standard_inquiry, CdRom, Completion, DataIn,
    Sense,
};
use super::request::{
    parse_lun, Lun, LunAddress, S_BAD_TARGET, S_FUNCTION_COMPLETE, S_FUNCTION_REJECTED,
    S_INCORRECT_LUN, S_OK, TMF_ABORT_TASK, TMF_ABORT_TASK_SET, TMF_CLEAR_ACA, TMF_CLEAR_TASK_SET,
    TMF_I_T_NEXUS_RESET, TMF_LOGICAL_UNIT_RESET, TMF_QUERY_TASK, TMF_QUERY_TASK_SET,
};

const TEST_UNIT_READY: u8 = 0x00;
const REQUEST_SENSE: u8 = 0x03;
const INQUIRY: u8 = 0x12;
const REPORT_LUNS: u8 = 0xa0;

/// Peripheral device type of a well-known logical unit.
const WELL_KNOWN_LU: u8 = 0x1e;
/// Peripheral qualifier 011b, device type 1Fh: no logical unit here.
const NO_LU: u8 = 0x7f;

/// Which logical unit a LUN field names.
enum Unit {
    BadTarget,
    Cd,
    ReportLuns,
    Absent,
}

fn unit(lun: &[u8; 8]) -> Unit {
    match parse_lun(lun) {
        LunAddress::Invalid => Unit::BadTarget,
        LunAddress::ReportLuns => Unit::ReportLuns,
        LunAddress::Lun { target, .. } if target != 0 => Unit::BadTarget,
        LunAddress::Lun { lun, .. } => match lun {
            Lun::Number(0) => Unit::Cd,
            Lun::ReportLuns => Unit::ReportLuns,
            Lun::Number(_) | Lun::Unsupported => Unit::Absent,
        },
    }
}

/// The target and its CD-ROM drive, with the disc image.
pub struct Target {
    cd: CdRom,
    disk: Box<dyn DiskImage>,
}

impl Target {
    /// A target just powered on, holding `disk`.
    pub fn new(disk: Box<dyn DiskImage>, serial: &str) -> Target {
        Target {
            cd: CdRom::new(disk.size(), serial),
            disk,
        }
    }

    /// Gives the image back.
    pub fn into_disk(self) -> Box<dyn DiskImage> {
        self.disk
    }

    /// Executes a command for the logical unit `lun` names.
    pub fn command(&mut self, lun: &[u8; 8], cdb: &[u8], out: &mut dyn DataIn) -> Completion {
        match unit(lun) {
            Unit::BadTarget => Completion {
                response: S_BAD_TARGET,
                ..Completion::failure()
            },
            Unit::Cd => self.cd.execute(cdb, self.disk.as_mut(), out),
            Unit::ReportLuns => well_known(cdb, out),
            Unit::Absent => absent(cdb, out),
        }
    }

    /// A task management function; returns the response code.
    pub fn tmf(&mut self, subtype: u32, lun: &[u8; 8], _tag: u64) -> u8 {
        let unit = unit(lun);
        if matches!(unit, Unit::BadTarget) {
            return S_BAD_TARGET;
        }
        match subtype {
            // The single level LUN is ignored for the whole I_T nexus.
            TMF_I_T_NEXUS_RESET => {
                self.cd.reset(Sense::I_T_NEXUS_LOSS);
                S_FUNCTION_COMPLETE
            }
            _ if matches!(unit, Unit::Absent) => S_INCORRECT_LUN,
            // No command is ever in progress when these are seen: nothing
            // to abort, no task to find.
            TMF_ABORT_TASK | TMF_ABORT_TASK_SET | TMF_CLEAR_TASK_SET | TMF_QUERY_TASK
            | TMF_QUERY_TASK_SET => S_FUNCTION_COMPLETE,
            TMF_LOGICAL_UNIT_RESET => {
                if matches!(unit, Unit::Cd) {
                    self.cd.reset(Sense::LUN_RESET);
                }
                S_FUNCTION_COMPLETE
            }
            // ACA is not supported (NormACA is 0).
            TMF_CLEAR_ACA => S_FUNCTION_REJECTED,
            _ => S_FUNCTION_REJECTED,
        }
    }

    /// An asynchronous notification query or subscription: returns
    /// (event_actual, response). No events are supported.
    pub fn an(&mut self, lun: &[u8; 8], _event_requested: u32) -> (u32, u8) {
        match unit(lun) {
            Unit::BadTarget => (0, S_BAD_TARGET),
            _ => (0, S_OK),
        }
    }
}

/// The REPORT LUNS well-known logical unit.
fn well_known(cdb: &[u8], out: &mut dyn DataIn) -> Completion {
    let cdb = match check_cdb(cdb) {
        Ok(c) => c,
        Err(s) => return Completion::check(s),
    };
    match cdb[0] {
        INQUIRY if cdb[1] & 0x03 != 0 || cdb[2] != 0 => {
            Completion::check(Sense::invalid_field(if cdb[2] != 0 { 2 } else { 1 }))
        }
        INQUIRY => reply(
            &standard_inquiry(WELL_KNOWN_LU, false),
            usize::from(u16::from_be_bytes([cdb[3], cdb[4]])),
            out,
        ),
        REPORT_LUNS => report_luns(cdb, out),
        REQUEST_SENSE => request_sense(cdb, Sense::NONE, out),
        TEST_UNIT_READY => Completion::good(0),
        _ => Completion::check(Sense::INVALID_OPCODE),
    }
}

/// A LUN of target 0 with no logical unit behind it.
fn absent(cdb: &[u8], out: &mut dyn DataIn) -> Completion {
    let cdb = match check_cdb(cdb) {
        Ok(c) => c,
        Err(s) => return Completion::check(s),
    };
    match cdb[0] {
        INQUIRY if cdb[1] & 0x01 == 0 && cdb[2] == 0 => reply(
            &standard_inquiry(NO_LU, false),
            usize::from(u16::from_be_bytes([cdb[3], cdb[4]])),
            out,
        ),
        REPORT_LUNS => report_luns(cdb, out),
        REQUEST_SENSE => request_sense(cdb, Sense::LUN_NOT_SUPPORTED, out),
        _ => Completion::check(Sense::LUN_NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::super::cdrom::tests::{MemDisk, VecIn};
    use super::super::cdrom::{CHECK_CONDITION, GOOD};
    use super::super::request::S_FUNCTION_SUCCEEDED;
    use super::*;

    const LUN0: [u8; 8] = [1, 0, 0x40, 0, 0, 0, 0, 0];
    const LUN1: [u8; 8] = [1, 0, 0x40, 1, 0, 0, 0, 0];
    const TARGET1: [u8; 8] = [1, 1, 0x40, 0, 0, 0, 0, 0];
    const WLUN: [u8; 8] = [0xc1, 0x01, 0, 0, 0, 0, 0, 0];
    const INQ: [u8; 6] = [0x12, 0, 0, 0, 36, 0];
    const TUR: [u8; 6] = [0; 6];
    const RLUNS: [u8; 12] = [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];

    fn target() -> Target {
        Target::new(Box::new(MemDisk::new(1 << 20)), "S")
    }

    fn run(t: &mut Target, lun: [u8; 8], cdb: &[u8]) -> (Completion, Vec<u8>) {
        let mut out = VecIn::new(256);
        let c = t.command(&lun, cdb, &mut out);
        out.buf.truncate(c.transferred as usize);
        (c, out.buf)
    }

    #[test]
    fn routing() {
        let mut t = target();
        // Other targets and unknown LUN formats are not there at all.
        for lun in [TARGET1, [1, 255, 0x40, 0, 0, 0, 0, 0], [0; 8], [2; 8]] {
            let (c, d) = run(&mut t, lun, &INQ);
            assert_eq!((c.response, c.transferred), (S_BAD_TARGET, 0));
            assert!(d.is_empty());
        }
        // LUN 0 is the CD-ROM.
        let (c, d) = run(&mut t, LUN0, &INQ);
        assert_eq!((c.response, c.status, d[0]), (S_OK, GOOD, 0x05));
        // LUN 1: no logical unit.
        let (c, d) = run(&mut t, LUN1, &INQ);
        assert_eq!((c.status, d[0], d.len()), (GOOD, 0x7f, 36));
        let (c, _) = run(&mut t, LUN1, &TUR);
        assert_eq!(
            (c.status, c.sense),
            (CHECK_CONDITION, Some(Sense::LUN_NOT_SUPPORTED))
        );
        let (c, d) = run(&mut t, LUN1, &[0x03, 0, 0, 0, 18, 0]);
        assert_eq!((c.status, d[2], d[12]), (GOOD, 0x05, 0x25));
        // A second level LUN is not supported either.
        let (_, d) = run(&mut t, [1, 0, 0x40, 0, 0x40, 1, 0, 0], &INQ);
        assert_eq!(d[0], 0x7f);
        // Every unit lists LUN 0 only.
        for lun in [LUN0, LUN1, WLUN, [1, 0, 0xc1, 0x01, 0, 0, 0, 0]] {
            let (c, d) = run(&mut t, lun, &RLUNS);
            assert_eq!(c.status, GOOD);
            assert_eq!(d, vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        // Well-known LUNs on request; too small an allocation length.
        let mut all = RLUNS;
        all[2] = 2;
        let (_, d) = run(&mut t, LUN0, &all);
        assert_eq!(&d[0..4], &[0, 0, 0, 16]);
        assert_eq!(&d[16..18], &[0xc1, 0x01]);
        let (c, _) = run(&mut t, LUN0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]);
        assert_eq!(c.sense, Some(Sense::invalid_field(6)));
        // The REPORT LUNS well-known logical unit.
        let (_, d) = run(&mut t, WLUN, &INQ);
        assert_eq!((d[0], d[1]), (0x1e, 0));
        let (c, _) = run(&mut t, WLUN, &TUR);
        assert_eq!(c.status, GOOD);
        let (c, _) = run(&mut t, WLUN, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c.sense, Some(Sense::INVALID_OPCODE));
    }

    #[test]
    fn task_management() {
        let mut t = target();
        // Consume the power-on unit attention.
        run(&mut t, LUN0, &TUR);
        assert_eq!(t.tmf(TMF_ABORT_TASK, &LUN0, 5), S_FUNCTION_COMPLETE);
        assert_eq!(t.tmf(TMF_ABORT_TASK_SET, &LUN0, 0), S_FUNCTION_COMPLETE);
        assert_eq!(t.tmf(TMF_CLEAR_TASK_SET, &LUN0, 0), S_FUNCTION_COMPLETE);
        assert_eq!(t.tmf(TMF_QUERY_TASK, &LUN0, 5), S_FUNCTION_COMPLETE);
        assert_ne!(t.tmf(TMF_QUERY_TASK, &LUN0, 5), S_FUNCTION_SUCCEEDED);
        assert_eq!(t.tmf(TMF_QUERY_TASK_SET, &LUN0, 0), S_FUNCTION_COMPLETE);
        assert_eq!(t.tmf(TMF_CLEAR_ACA, &LUN0, 0), S_FUNCTION_REJECTED);
        assert_eq!(t.tmf(99, &LUN0, 0), S_FUNCTION_REJECTED);
        // No unit attention so far.
        assert_eq!(run(&mut t, LUN0, &TUR).0.status, GOOD);
        // A logical unit reset: complete, and the next command hears of it.
        assert_eq!(t.tmf(TMF_LOGICAL_UNIT_RESET, &LUN0, 0), S_FUNCTION_COMPLETE);
        assert_eq!(run(&mut t, LUN0, &TUR).0.sense, Some(Sense::LUN_RESET));
        assert_eq!(run(&mut t, LUN0, &TUR).0.status, GOOD);
        assert_eq!(t.tmf(TMF_I_T_NEXUS_RESET, &LUN1, 0), S_FUNCTION_COMPLETE);
        assert_eq!(run(&mut t, LUN0, &TUR).0.sense, Some(Sense::I_T_NEXUS_LOSS));
        // Wrong LUN, wrong target.
        assert_eq!(t.tmf(TMF_LOGICAL_UNIT_RESET, &LUN1, 0), S_INCORRECT_LUN);
        assert_eq!(t.tmf(TMF_ABORT_TASK, &TARGET1, 0), S_BAD_TARGET);
        assert_eq!(t.tmf(TMF_LOGICAL_UNIT_RESET, &[0; 8], 0), S_BAD_TARGET);
        // Asynchronous notification: nothing supported.
        assert_eq!(t.an(&LUN0, 0xff), (0, S_OK));
        assert_eq!(t.an(&TARGET1, 0xff), (0, S_BAD_TARGET));
    }

    /// Random CDBs to every kind of unit (a small xorshift generator, no
    /// extra crates; `SCSI_FUZZ_ITERATIONS` sets how many): nothing
    /// panics, data never exceeds the buffer, errors move no data and
    /// always carry sense.
    #[test]
    fn random_commands() {
        let iterations = std::env::var("SCSI_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50_000u64);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // 1 MiB and a bit: 512 blocks and a partial one.
        let mut t = Target::new(Box::new(MemDisk::new((1 << 20) + 100)), "S");
        const OPS: [u8; 30] = [
            0x00, 0x03, 0x08, 0x0a, 0x12, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a, 0x35, 0x43, 0x46,
            0x4a, 0x51, 0x52, 0x5a, 0x88, 0x9e, 0xa0, 0xa8, 0xbb, 0xbd, 0xbe, 0x15, 0x42, 0xad,
            0x7f, 0xff,
        ];
        for _ in 0..iterations {
            let r = next();
            let lun = match r % 8 {
                0 => LUN1,
                1 => WLUN,
                2 => TARGET1,
                _ => LUN0,
            };
            let mut cdb: Vec<u8> = (0..(next() % 34)).map(|_| next() as u8).collect();
            if let Some(op) = cdb.first_mut() {
                *op = OPS[(next() % OPS.len() as u64) as usize];
            }
            // Small lengths and LBAs more often, so that commands succeed.
            if cdb.len() > 9 && r % 3 == 0 {
                for b in &mut cdb[2..9] {
                    *b &= 0x01;
                }
            }
            let len = match (r >> 8) % 4 {
                0 => 0,
                1 => (next() % 64) as usize,
                2 => (next() % 4096) as usize,
                _ => (next() % (1 << 17)) as usize,
            };
            let mut out = VecIn::new(len);
            let c = t.command(&lun, &cdb, &mut out);
            assert!(c.transferred <= len as u64, "{cdb:x?}");
            if c.status == CHECK_CONDITION {
                assert_eq!(c.transferred, 0);
                assert!(c.sense.is_some());
            } else {
                assert!(c.sense.is_none());
            }
            if c.response != S_OK {
                assert_eq!(c.transferred, 0);
            }
            if r % 97 == 0 {
                t.tmf((next() % 9) as u32, &lun, next());
            }
        }
    }
}
