//! A split virtqueue driven from a test as a guest driver would drive it,
//! and an interrupt sink that counts: for the devices' end-to-end tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::{GuestMemory, Interrupt};

pub(crate) const RING: u16 = 16;

#[derive(Default)]
pub(crate) struct Irq {
    pub used: [AtomicU64; 3],
    pub reset: AtomicBool,
}

impl Interrupt for Irq {
    fn signal_used(&self, queue: u16) {
        self.used[usize::from(queue)].fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config(&self) {}
    fn needs_reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
    }
}

/// A split ring the test drives as a guest driver would.
pub(crate) struct Ring {
    pub base: u64,
    pub next_desc: u16,
    pub avail: u16,
    pub kick: EventFd,
}

impl Ring {
    pub(crate) fn desc(&self) -> u64 {
        self.base
    }
    pub(crate) fn avail_ring(&self) -> u64 {
        self.base + 0x100
    }
    pub(crate) fn used_ring(&self) -> u64 {
        self.base + 0x200
    }

    pub(crate) fn queue(&self) -> Queue {
        let mut q = Queue::new(256).unwrap();
        q.set_size(RING);
        q.set_desc_table_address(Some(self.desc() as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail_ring() as u32), Some(0));
        q.set_used_ring_address(Some(self.used_ring() as u32), Some(0));
        q.set_event_idx(true);
        q.set_ready(true);
        q
    }

    /// Adds a chain of (address, length, device-writable) buffers and
    /// kicks; returns its head.
    pub(crate) fn push(&mut self, m: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.add(m, bufs);
        self.publish(m);
        head
    }

    /// Adds a chain to the avail ring without making it available: a
    /// driver filling its ring, which [`Ring::publish`] then makes
    /// available at once. Returns its head.
    pub(crate) fn add(&mut self, m: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % RING;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = self.desc() + 16 * u64::from(idx);
            m.write_obj(addr, GuestAddress(at)).unwrap();
            m.write_obj(len, GuestAddress(at + 8)).unwrap();
            m.write_obj(flags, GuestAddress(at + 12)).unwrap();
            m.write_obj(self.next_desc, GuestAddress(at + 14)).unwrap();
        }
        let slot = self.avail_ring() + 4 + 2 * u64::from(self.avail % RING);
        m.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        head
    }

    /// Makes the chains added so far available, and kicks.
    pub(crate) fn publish(&mut self, m: &GuestMemory) {
        self.publish_quietly(m);
        self.kick.write(1).unwrap();
    }

    /// Makes the chains added so far available without a kick (a driver
    /// the device asked not to kick).
    pub(crate) fn publish_quietly(&mut self, m: &GuestMemory) {
        m.store(
            self.avail,
            GuestAddress(self.avail_ring() + 2),
            Ordering::Release,
        )
        .unwrap();
    }

    pub(crate) fn used_idx(&self, m: &GuestMemory) -> u16 {
        m.load(GuestAddress(self.used_ring() + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Waits for used entry `n` and returns (id, len).
    pub(crate) fn wait_used(&self, m: &GuestMemory, n: u16) -> (u32, u32) {
        let t = Instant::now();
        while self.used_idx(m) <= n {
            assert!(t.elapsed() < Duration::from_secs(10), "no completion");
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = self.used_ring() + 4 + 8 * u64::from(n % RING);
        (
            m.read_obj(GuestAddress(at)).unwrap(),
            m.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}
