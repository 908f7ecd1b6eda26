//! virtio-blk (virtio 1.2 section 5.2): one request queue served by an I/O
//! thread of its own, on any [`disk::DiskImage`].
//!
//! Offered: SEG_MAX, BLK_SIZE, FLUSH (a completed flush is on stable
//! storage: `fdatasync`), RO for read-only disks, DISCARD and
//! WRITE_ZEROES where the image can deallocate, GET_ID (a serial chosen by
//! the VMM), EVENT_IDX and indirect descriptors. No write cache toggling:
//! the guest sees a write-back cache and flushes it, as on QEMU's default.

pub mod request;
mod worker;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;

use disk::{DiskImage, SECTOR_SIZE};
use vmm_sys_util::eventfd::EventFd;

use crate::threads::{self, ThreadKind};

use super::{features, read_config_bytes, ActivateError, Activation, VirtioDevice};
use request::ID_LEN;
use worker::Worker;

/// Virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u16 = 2;

// Feature bits (section 5.2.3).
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

/// Descriptors per queue: what Linux and QEMU use by default.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request: the queue size less header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest discard / write-zeroes range, in sectors (4 GiB - 512).
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX >> 9;

/// Counters the I/O thread keeps; read for status and benchmarks.
#[derive(Default, Debug)]
pub struct BlockStats {
    pub requests: AtomicU64,
    pub kicks: AtomicU64,
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub bad_requests: AtomicU64,
}

enum State {
    Idle(Box<dyn DiskImage>),
    Running {
        stop: EventFd,
        thread: JoinHandle<Box<dyn DiskImage>>,
    },
    /// The I/O thread died (it cannot panic by design; if it does, the
    /// disk is gone for this VM's life).
    Lost,
}

pub struct Block {
    state: State,
    config: Vec<u8>,
    features: u64,
    read_only: bool,
    id: [u8; ID_LEN],
    name: String,
    stats: Arc<BlockStats>,
}

impl Block {
    /// A block device on `disk`. `serial` is what GET_ID answers (cut to
    /// 20 bytes); `name` names the device in logs.
    pub fn new(disk: Box<dyn DiskImage>, read_only: bool, serial: &str, name: String) -> Block {
        let capacity = disk.size() / SECTOR_SIZE;
        let mut features = features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH;
        if read_only {
            features |= F_RO;
        } else if disk.supports_discard() {
            features |= F_DISCARD | F_WRITE_ZEROES;
        }
        // struct virtio_blk_config, through write_zeroes_may_unmap.
        let mut config = vec![0u8; 0x3c];
        config[0x00..0x08].copy_from_slice(&capacity.to_le_bytes());
        config[0x0c..0x10].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[0x14..0x18].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        config[0x22..0x24].copy_from_slice(&1u16.to_le_bytes()); // num_queues
        config[0x24..0x28].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[0x28..0x2c].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        config[0x2c..0x30].copy_from_slice(&8u32.to_le_bytes()); // alignment: 4 KiB
        config[0x30..0x34].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[0x34..0x38].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        config[0x38] = 1; // write_zeroes_may_unmap
        let mut id = [0u8; ID_LEN];
        let s = serial.as_bytes();
        id[..s.len().min(ID_LEN)].copy_from_slice(&s[..s.len().min(ID_LEN)]);
        Block {
            state: State::Idle(disk),
            config,
            features,
            read_only,
            id,
            name,
            stats: Arc::new(BlockStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }
}

/// One pass of the I/O thread over `queue`, as after a kick: completes
/// every available request against `disk` and signals `interrupt`.
/// Returns false if the queue is broken (`interrupt.needs_reset()` was
/// called). For the fuzz target (`fuzz/`), which drives the queue path
/// without a thread; not an interface for devices.
#[doc(hidden)]
pub fn fuzz_process(
    mem: &super::GuestMemory,
    queue: &mut virtio_queue::Queue,
    disk: Box<dyn DiskImage>,
    read_only: bool,
    interrupt: Arc<dyn super::Interrupt>,
) -> (bool, Box<dyn DiskImage>) {
    let kick = EventFd::new(0).expect("eventfd");
    let stop = EventFd::new(0).expect("eventfd");
    let mut worker = Worker {
        mem: mem.clone(),
        queue: std::mem::take(queue),
        queue_index: 0,
        kick,
        stop,
        interrupt,
        disk,
        read_only,
        id: *b"fuzz-serial-0123456\0",
        stats: Arc::new(BlockStats::default()),
        name: "fuzz".into(),
    };
    let ok = worker.process();
    *queue = worker.queue;
    (ok, worker.disk)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Only `writeback` is writable, and only with CONFIG_WCE, which
        // is not offered.
    }

    fn activate(&mut self, act: Activation) -> Result<(), ActivateError> {
        let Some(q) = act.queues.into_iter().find(|q| q.index == 0) else {
            return Err(ActivateError::MissingQueue(0));
        };
        let disk = match std::mem::replace(&mut self.state, State::Lost) {
            State::Idle(d) => d,
            other => {
                self.state = other;
                return Err(ActivateError::Host("device already running".into()));
            }
        };
        let host = |e: std::io::Error| ActivateError::Host(e.to_string());
        let stop = match EventFd::new(libc::EFD_NONBLOCK) {
            Ok(s) => s,
            Err(e) => {
                self.state = State::Idle(disk);
                return Err(host(e));
            }
        };
        let worker_stop = stop.try_clone().map_err(host)?;
        let worker = Worker {
            mem: act.mem,
            queue: q.queue,
            queue_index: q.index,
            kick: q.kick,
            stop: worker_stop,
            interrupt: act.interrupt,
            disk,
            read_only: self.read_only,
            id: self.id,
            stats: self.stats.clone(),
            name: self.name.clone(),
        };
        let thread =
            threads::spawn(ThreadKind::Disk, "virtio-blk", move || worker.run()).map_err(host)?;
        self.state = State::Running { stop, thread };
        Ok(())
    }

    fn reset(&mut self) {
        match std::mem::replace(&mut self.state, State::Lost) {
            State::Running { stop, thread } => {
                let _ = stop.write(1);
                match thread.join() {
                    Ok(disk) => self.state = State::Idle(disk),
                    Err(_) => log::error!("{}: I/O thread died; disk lost", self.name),
                }
            }
            other => self.state = other,
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_ring::{Irq, Ring};
    use crate::virtio::{ActiveQueue, GuestMemory};
    use std::io::{IoSlice, IoSliceMut};
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};

    /// A disk whose reads take `delay`: a request in flight when the
    /// driver resets the device.
    struct SlowDisk {
        data: Vec<u8>,
        delay: Duration,
    }

    impl DiskImage for SlowDisk {
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&mut self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> std::io::Result<()> {
            std::thread::sleep(self.delay);
            let mut at = offset as usize;
            for b in bufs {
                let n = b.len();
                b.copy_from_slice(&self.data[at..at + n]);
                at += n;
            }
            Ok(())
        }
        fn write_at(&mut self, _: &[IoSlice<'_>], _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn supports_discard(&self) -> bool {
            false
        }
        fn discard(&mut self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&mut self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn activate(b: &mut Block, m: &GuestMemory, ring: &Ring, irq: &Arc<Irq>) {
        b.activate(Activation {
            mem: m.clone(),
            acked_features: b.features(),
            queues: vec![ActiveQueue {
                index: 0,
                queue: ring.queue(),
                kick: ring.kick.try_clone().unwrap(),
            }],
            interrupt: irq.clone(),
        })
        .unwrap();
    }

    /// A read of sector 1 into 0x20000, status at 0x30000.
    fn read_request(m: &GuestMemory, ring: &mut Ring) {
        m.write_obj(request::T_IN, GuestAddress(0x10000)).unwrap();
        m.write_obj(1u64, GuestAddress(0x10008)).unwrap();
        m.write_obj(0xffu8, GuestAddress(0x30000)).unwrap();
        ring.push(
            m,
            &[
                (0x10000, 16, false),
                (0x20000, 512, true),
                (0x30000, 1, true),
            ],
        );
    }

    /// The driver resets the device while a request is being served: the
    /// reset waits for that request only, the image comes back, and the
    /// device works again after the driver sets it up anew.
    #[test]
    fn a_reset_mid_request_returns_and_the_device_starts_again() {
        let m = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let data: Vec<u8> = (0..8192).map(|i| (i / 512) as u8).collect();
        let disk = SlowDisk {
            data,
            delay: Duration::from_millis(300),
        };
        let mut b = Block::new(Box::new(disk), false, "ser", "t".into());
        let irq = Arc::new(Irq::default());
        let mut ring = Ring {
            base: 0x1000,
            next_desc: 0,
            avail: 0,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        activate(&mut b, &m, &ring, &irq);
        read_request(&m, &mut ring);
        std::thread::sleep(Duration::from_millis(50)); // in the disk's read now
        let t = Instant::now();
        b.reset();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "reset waited {:?}",
            t.elapsed()
        );
        assert!(matches!(b.state, State::Idle(_)), "the image came back");

        // Set up again, from scratch, as a driver does after a reset.
        m.write_slice(&[0u8; 0x400], GuestAddress(0x1000)).unwrap();
        let mut ring = Ring {
            base: 0x1000,
            next_desc: 0,
            avail: 0,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        activate(&mut b, &m, &ring, &irq);
        read_request(&m, &mut ring);
        let (head, len) = ring.wait_used(&m, 0);
        assert_eq!((head, len), (0, 513));
        let status: u8 = m.read_obj(GuestAddress(0x30000)).unwrap();
        assert_eq!(status, request::S_OK);
        let sector: u8 = m.read_obj(GuestAddress(0x20000)).unwrap();
        assert_eq!(sector, 1);
        b.reset();
    }
}
