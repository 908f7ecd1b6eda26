//! virtio-scsi (virtio 1.2 section 5.6) with one CD/DVD-ROM drive: a
//! read-only disc image at target 0, LUN 0, as OpenBSD's vmd presents its
//! `cdrom`. Guests see an MMC drive (Linux: `sr0`; OpenBSD: `cd0` on
//! vioscsi(4); SeaBIOS boots from it) and OS installers a CD.
//!
//! Queues: control (0), event (1) and one request queue (2), served by one
//! I/O thread. Only the request queue is required: SeaBIOS enables no
//! other. Events are never sent (no hotplug, no parameter changes), so
//! the event queue's buffers stay with the device until a reset. Offered
//! features: EVENT_IDX and indirect descriptors; not INOUT (no command
//! moves data both ways), HOTPLUG, CHANGE or T10_PI.
//!
//! The configuration space advertises `max_target` 1, not 0: OpenBSD's
//! vioscsi(4) takes `max_target` as the number of targets (Linux and the
//! spec as the highest target number), and target 1 answers BAD_TARGET
//! to anyone who looks. `max_lun` is 0.

pub mod cdrom;
pub mod request;
pub mod target;
mod worker;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use disk::DiskImage;
use vmm_sys_util::eventfd::EventFd;

use crate::threads::{self, ThreadKind};

use super::{features, read_config_bytes, ActivateError, Activation, VirtioDevice};
use target::Target;
use worker::{QueueSlot, Worker};

/// Virtio device type of a SCSI host.
pub const VIRTIO_ID_SCSI: u16 = 8;

/// Descriptors per queue, as for the block device.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices.
pub const CONTROL_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;
pub const REQUEST_QUEUE: u16 = 2;
/// Data segments per command: the queue size less header and response.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest transfer hinted to the driver, in 512-byte sectors (32 MiB).
const MAX_SECTORS: u32 = 0xffff;
/// Commands the driver may queue to the LUN.
const CMD_PER_LUN: u32 = 128;
/// Bytes of `struct virtio_scsi_event`.
const EVENT_INFO_SIZE: u32 = 16;
/// Defaults of the two fields the driver may write, restored on reset.
pub const DEFAULT_SENSE_SIZE: u32 = 96;
pub const DEFAULT_CDB_SIZE: u32 = 32;
/// The largest values the driver may write.
const MAX_SENSE_SIZE: u32 = 0xffff;
const MAX_CDB_SIZE: u32 = 0xff;
/// Advertised highest target (see the module documentation).
const MAX_TARGET: u16 = 1;
/// Bytes of `struct virtio_scsi_config`.
const CONFIG_LEN: usize = 36;
const SENSE_SIZE_OFF: usize = 20;
const CDB_SIZE_OFF: usize = 24;

/// Counters the I/O thread keeps; read for status and tests.
#[derive(Default, Debug)]
pub struct ScsiStats {
    pub commands: AtomicU64,
    pub kicks: AtomicU64,
    pub read_bytes: AtomicU64,
    /// Commands that ended in CHECK CONDITION.
    pub check_conditions: AtomicU64,
    pub task_management: AtomicU64,
    /// Chains that could not be parsed.
    pub bad_requests: AtomicU64,
}

/// The two configuration fields the driver may write (section 5.6.4).
#[derive(Debug)]
pub struct Sizes {
    pub sense_size: AtomicU32,
    pub cdb_size: AtomicU32,
}

impl Sizes {
    fn reset(&self) {
        self.sense_size.store(DEFAULT_SENSE_SIZE, Ordering::Relaxed);
        self.cdb_size.store(DEFAULT_CDB_SIZE, Ordering::Relaxed);
    }
}

enum State {
    Idle(Box<dyn DiskImage>),
    Running {
        stop: EventFd,
        thread: JoinHandle<Box<dyn DiskImage>>,
    },
    /// The I/O thread died (it cannot panic by design; if it does, the
    /// disc is gone for this VM's life).
    Lost,
}

pub struct Scsi {
    state: State,
    sizes: Arc<Sizes>,
    serial: String,
    name: String,
    stats: Arc<ScsiStats>,
}

impl Scsi {
    /// A virtio-scsi host with one CD-ROM drive holding `image`, read
    /// only. `serial` is the drive's unit serial number (VPD page 0x80;
    /// printable ASCII, cut to 32 bytes); `name` names the device in logs.
    pub fn new(image: Box<dyn DiskImage>, serial: &str, name: String) -> Scsi {
        let sizes = Sizes {
            sense_size: AtomicU32::new(DEFAULT_SENSE_SIZE),
            cdb_size: AtomicU32::new(DEFAULT_CDB_SIZE),
        };
        Scsi {
            state: State::Idle(image),
            sizes: Arc::new(sizes),
            serial: serial.to_string(),
            name,
            stats: Arc::new(ScsiStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<ScsiStats> {
        self.stats.clone()
    }

    /// `struct virtio_scsi_config` as the driver reads it now.
    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&1u32.to_le_bytes()); // num_queues
        c[4..8].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[8..12].copy_from_slice(&MAX_SECTORS.to_le_bytes());
        c[12..16].copy_from_slice(&CMD_PER_LUN.to_le_bytes());
        c[16..20].copy_from_slice(&EVENT_INFO_SIZE.to_le_bytes());
        let sense = self.sizes.sense_size.load(Ordering::Relaxed);
        let cdb = self.sizes.cdb_size.load(Ordering::Relaxed);
        c[SENSE_SIZE_OFF..SENSE_SIZE_OFF + 4].copy_from_slice(&sense.to_le_bytes());
        c[CDB_SIZE_OFF..CDB_SIZE_OFF + 4].copy_from_slice(&cdb.to_le_bytes());
        // max_channel 0 at 28.
        c[30..32].copy_from_slice(&MAX_TARGET.to_le_bytes());
        // max_lun 0 at 32.
        c
    }
}

impl VirtioDevice for Scsi {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_SCSI
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only sense_size and cdb_size are writable; a write may cover
        // part of a field (the transport passes 1, 2 or 4 bytes).
        let mut config = self.config();
        for (i, &b) in data.iter().enumerate() {
            if let Some(at) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .filter(|a| (SENSE_SIZE_OFF..CDB_SIZE_OFF + 4).contains(a))
            {
                config[at] = b;
            }
        }
        let field = |off: usize| u32::from_le_bytes(config[off..off + 4].try_into().unwrap());
        let (sense, cdb) = (field(SENSE_SIZE_OFF), field(CDB_SIZE_OFF));
        // Bounds as QEMU keeps them: the response area is written whole
        // for every command, so it must stay small.
        if sense > MAX_SENSE_SIZE || cdb > MAX_CDB_SIZE {
            log::warn!(
                "{}: driver wrote sense_size {sense}, cdb_size {cdb}: ignored",
                self.name
            );
            return;
        }
        self.sizes.sense_size.store(sense, Ordering::Relaxed);
        self.sizes.cdb_size.store(cdb, Ordering::Relaxed);
    }

    fn activate(&mut self, act: Activation) -> Result<(), ActivateError> {
        let mut slots: [Option<QueueSlot>; 3] = [None, None, None];
        for q in act.queues {
            if let Some(slot) = slots.get_mut(usize::from(q.index)) {
                *slot = Some(QueueSlot {
                    queue: q.queue,
                    index: q.index,
                    kick: q.kick,
                    broken: false,
                });
            }
        }
        if slots[usize::from(REQUEST_QUEUE)].is_none() {
            return Err(ActivateError::MissingQueue(REQUEST_QUEUE));
        }
        let image = match std::mem::replace(&mut self.state, State::Lost) {
            State::Idle(d) => d,
            other => {
                self.state = other;
                return Err(ActivateError::Host("device already running".into()));
            }
        };
        let host = |e: std::io::Error| ActivateError::Host(e.to_string());
        let (stop, worker_stop) =
            match EventFd::new(libc::EFD_NONBLOCK).and_then(|s| s.try_clone().map(|c| (s, c))) {
                Ok(pair) => pair,
                Err(e) => {
                    self.state = State::Idle(image);
                    return Err(host(e));
                }
            };
        let worker = Worker {
            mem: act.mem,
            queues: slots,
            stop: worker_stop,
            interrupt: act.interrupt,
            // Each activation is a power-on of the drive.
            target: Target::new(image, &self.serial),
            sizes: self.sizes.clone(),
            stats: self.stats.clone(),
            name: self.name.clone(),
        };
        match threads::spawn(ThreadKind::Disk, "virtio-scsi", move || worker.run()) {
            Ok(thread) => {
                self.state = State::Running { stop, thread };
                Ok(())
            }
            // The closure, and the image in it, is gone with the error.
            Err(e) => Err(host(e)),
        }
    }

    fn reset(&mut self) {
        match std::mem::replace(&mut self.state, State::Lost) {
            State::Running { stop, thread } => {
                let _ = stop.write(1);
                match thread.join() {
                    Ok(image) => self.state = State::Idle(image),
                    Err(_) => log::error!("{}: I/O thread died; disc lost", self.name),
                }
            }
            other => self.state = other,
        }
        self.sizes.reset();
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::cdrom::tests::MemDisk;
    use super::*;
    use crate::virtio::test_ring::{Irq, Ring};
    use crate::virtio::{ActiveQueue, GuestMemory};
    use vm_memory::{Bytes, GuestAddress};

    /// A command header: LUN (target, lun 0, flat), CDB padded to 32.
    fn cmd(target: u8, cdb: &[u8]) -> Vec<u8> {
        let mut h = vec![1, target, 0x40, 0, 0, 0, 0, 0];
        h.extend_from_slice(&[0; 11]);
        let mut c = cdb.to_vec();
        c.resize(32, 0);
        h.extend_from_slice(&c);
        h
    }

    /// (sense_len, residual, status, response, sense).
    fn resp(m: &GuestMemory, at: u64) -> (u32, u32, u8, u8, Vec<u8>) {
        let mut r = [0u8; 108];
        m.read_slice(&mut r, GuestAddress(at)).unwrap();
        let sense_len = u32::from_le_bytes(r[0..4].try_into().unwrap());
        (
            sense_len,
            u32::from_le_bytes(r[4..8].try_into().unwrap()),
            r[10],
            r[11],
            r[12..12 + (sense_len as usize).min(96)].to_vec(),
        )
    }

    #[test]
    fn through_the_queues() {
        let m = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut disk = MemDisk::new(1 << 20);
        disk.data[16 * 2048..16 * 2048 + 6].copy_from_slice(b"\x01CD001");
        let mut scsi = Scsi::new(Box::new(disk), "SER", "cd0".into());
        assert_eq!(scsi.device_type(), 8);
        assert_eq!(scsi.queue_max_sizes().len(), 3);

        // Configuration space: defaults, the two writable fields.
        let mut c = [0u8; 36];
        scsi.read_config(0, &mut c);
        let le32 = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap());
        assert_eq!(le32(&c[0..]), 1);
        assert_eq!(le32(&c[20..]), 96);
        assert_eq!(le32(&c[24..]), 32);
        assert_eq!(u16::from_le_bytes([c[30], c[31]]), 1);
        scsi.write_config(0, &[0xff; 8]); // num_queues, seg_max: read-only
        scsi.write_config(24, &16u32.to_le_bytes());
        scsi.write_config(20, &1_000_000u32.to_le_bytes()); // too big: ignored
        scsi.read_config(0, &mut c);
        assert_eq!((le32(&c[0..]), le32(&c[20..]), le32(&c[24..])), (1, 96, 16));
        scsi.write_config(24, &32u32.to_le_bytes()); // what Linux writes

        let mut rings: Vec<Ring> = (0..3u64)
            .map(|i| Ring {
                base: 0x1000 * (i + 1),
                next_desc: 0,
                avail: 0,
                kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            })
            .collect();
        let irq = Arc::new(Irq::default());
        let queues = rings
            .iter()
            .enumerate()
            .map(|(i, r)| ActiveQueue {
                index: i as u16,
                queue: r.queue(),
                kick: r.kick.try_clone().unwrap(),
            })
            .collect();
        scsi.activate(Activation {
            mem: m.clone(),
            acked_features: scsi.features(),
            queues,
            interrupt: irq.clone(),
        })
        .unwrap();
        let (ctl, rest) = rings.split_at_mut(1);
        let (evt, req) = rest.split_at_mut(1);
        let (ctl, evt, req) = (&mut ctl[0], &mut evt[0], &mut req[0]);

        // An event buffer: kept, never used.
        evt.push(&m, &[(0x8000, 16, true)]);

        // INQUIRY, 96-byte buffer: 36 bytes come back, 60 residual.
        let mut n = 0;
        m.write_slice(&cmd(0, &[0x12, 0, 0, 0, 96, 0]), GuestAddress(0x10000))
            .unwrap();
        let head = req.push(
            &m,
            &[
                (0x10000, 51, false),
                (0x11000, 108, true),
                (0x12000, 96, true),
            ],
        );
        assert_eq!(req.wait_used(&m, n), (u32::from(head), 108 + 36));
        n += 1;
        assert_eq!(resp(&m, 0x11000), (0, 60, 0, 0, vec![]));
        let mut inq = [0u8; 36];
        m.read_slice(&mut inq, GuestAddress(0x12000)).unwrap();
        assert_eq!((inq[0], &inq[8..16]), (0x05, &b"VMD     "[..]));

        // TUR: the power-on unit attention, with autosense.
        m.write_slice(&cmd(0, &[0; 6]), GuestAddress(0x10000))
            .unwrap();
        req.push(&m, &[(0x10000, 51, false), (0x11000, 108, true)]);
        assert_eq!(req.wait_used(&m, n).1, 108);
        n += 1;
        let (sense_len, resid, status, response, sense) = resp(&m, 0x11000);
        assert_eq!((sense_len, resid, status, response), (18, 0, 2, 0));
        assert_eq!((sense[0], sense[2], sense[12]), (0x70, 6, 0x29));

        // READ(10) of blocks 16-17 into two descriptors, response and
        // data sharing one of them.
        m.write_slice(
            &cmd(0, &[0x28, 0, 0, 0, 0, 16, 0, 0, 2, 0]),
            GuestAddress(0x10000),
        )
        .unwrap();
        req.push(
            &m,
            &[
                (0x10000, 51, false),
                (0x20000, 108 + 1000, true),
                (0x30000, 4096 - 1000, true),
            ],
        );
        assert_eq!(req.wait_used(&m, n).1, 108 + 4096);
        n += 1;
        let (sense_len, resid, status, response, _) = resp(&m, 0x20000);
        assert_eq!((sense_len, resid, status, response), (0, 0, 0, 0));
        let mut data = vec![0u8; 4096];
        m.read_slice(&mut data[..1000], GuestAddress(0x20000 + 108))
            .unwrap();
        m.read_slice(&mut data[1000..], GuestAddress(0x30000))
            .unwrap();
        assert_eq!(&data[..6], b"\x01CD001");
        assert!(data[2048..].iter().all(|&b| b == 17));

        // Target 1 is not there.
        m.write_slice(&cmd(1, &[0x12, 0, 0, 0, 36, 0]), GuestAddress(0x10000))
            .unwrap();
        req.push(
            &m,
            &[
                (0x10000, 51, false),
                (0x11000, 108, true),
                (0x12000, 36, true),
            ],
        );
        req.wait_used(&m, n);
        n += 1;
        assert_eq!(resp(&m, 0x11000).3, 3, "BAD_TARGET");

        // No response buffer: completed empty; the queue goes on.
        req.push(&m, &[(0x10000, 51, false)]);
        assert_eq!(req.wait_used(&m, n).1, 0);
        n += 1;

        // Control queue: a logical unit reset, then the unit attention.
        let mut tmf = Vec::new();
        tmf.extend_from_slice(&0u32.to_le_bytes());
        tmf.extend_from_slice(&5u32.to_le_bytes());
        tmf.extend_from_slice(&[1, 0, 0x40, 0, 0, 0, 0, 0]);
        tmf.extend_from_slice(&0u64.to_le_bytes());
        m.write_slice(&tmf, GuestAddress(0x40000)).unwrap();
        m.write_obj(0xffu8, GuestAddress(0x41000)).unwrap();
        ctl.push(&m, &[(0x40000, 24, false), (0x41000, 1, true)]);
        assert_eq!(ctl.wait_used(&m, 0).1, 1);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x41000)).unwrap(), 0);
        m.write_slice(&cmd(0, &[0; 6]), GuestAddress(0x10000))
            .unwrap();
        req.push(&m, &[(0x10000, 51, false), (0x11000, 108, true)]);
        req.wait_used(&m, n);
        let (_, _, status, _, sense) = resp(&m, 0x11000);
        assert_eq!((status, sense[12], sense[13]), (2, 0x29, 0x03));

        assert!(irq.used[2].load(Ordering::SeqCst) > 0);
        assert!(irq.used[0].load(Ordering::SeqCst) > 0);
        assert!(!irq.reset.load(Ordering::SeqCst));
        let stats = scsi.stats();
        assert_eq!(stats.read_bytes.load(Ordering::Relaxed), 4096);
        assert_eq!(stats.bad_requests.load(Ordering::Relaxed), 1);

        // Reset: the thread stops, the event buffer was never used, the
        // writable configuration fields are back to their defaults.
        scsi.reset();
        assert_eq!(evt.used_idx(&m), 0);
        scsi.read_config(0, &mut c);
        assert_eq!((le32(&c[20..]), le32(&c[24..])), (96, 32));
        assert!(matches!(scsi.state, State::Idle(_)));
        // Without a request queue the device cannot start.
        let e = scsi.activate(Activation {
            mem: m.clone(),
            acked_features: 0,
            queues: vec![],
            interrupt: irq.clone(),
        });
        assert!(matches!(e, Err(ActivateError::MissingQueue(2))));
        assert!(matches!(scsi.state, State::Idle(_)));
    }
}
