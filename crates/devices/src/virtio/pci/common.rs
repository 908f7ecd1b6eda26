//! The common configuration structure (`virtio_pci_common_cfg`, virtio 1.2
//! section 4.1.4.3): feature negotiation, device status and queue setup,
//! as a register file. It does no I/O: a write returns what the transport
//! must do about it ([`Effect`]).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use crate::virtio::{features, status};

/// "No vector": the driver wants no MSI-X message for this source.
pub const NO_VECTOR: u16 = 0xffff;

/// Size of the structure (through `queue_reset`).
pub const COMMON_CFG_SIZE: u64 = 0x3c;

// Field offsets.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
const QUEUE_NOTIFY_DATA: u64 = 0x38;
const QUEUE_RESET: u64 = 0x3a;

/// MSI-X vectors the driver chose: index 0 is the configuration change
/// vector, 1.. the queues'. Shared with the interrupt path, which reads
/// them from the device's I/O thread.
pub struct Vectors(Vec<AtomicU16>);

impl Vectors {
    fn new(queues: usize) -> Self {
        Vectors((0..=queues).map(|_| AtomicU16::new(NO_VECTOR)).collect())
    }

    pub fn config(&self) -> u16 {
        self.0[0].load(Ordering::Acquire)
    }

    pub fn queue(&self, q: u16) -> u16 {
        self.0
            .get(usize::from(q) + 1)
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    fn set(&self, i: usize, v: u16) {
        if let Some(slot) = self.0.get(i) {
            slot.store(v, Ordering::Release);
        }
    }

    fn reset(&self) {
        for v in &self.0 {
            v.store(NO_VECTOR, Ordering::Release);
        }
    }
}

/// What the transport must do after a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The driver wrote 0 to device status: reset the device.
    Reset,
    /// The driver set DRIVER_OK: activate the device.
    DriverOk,
}

pub struct CommonCfg {
    offered: u64,
    acked: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    status: u8,
    generation: u8,
    queue_select: u16,
    pub queues: Vec<Queue>,
    pub vectors: Arc<Vectors>,
    /// How many MSI-X vectors exist; a vector number past them reads back
    /// as NO_VECTOR, which is how a driver learns the assignment failed.
    msix_len: u16,
}

impl CommonCfg {
    /// A device offering `offered` features with queues of the given
    /// maximum sizes (each a power of two, at most 32768).
    pub fn new(offered: u64, max_sizes: &[u16], msix_len: u16) -> Self {
        let queues = max_sizes
            .iter()
            .map(|&m| Queue::new(m).expect("device queue sizes are valid"))
            .collect();
        CommonCfg {
            offered,
            acked: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            status: 0,
            generation: 0,
            queue_select: 0,
            queues,
            vectors: Arc::new(Vectors::new(max_sizes.len())),
            msix_len,
        }
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    /// Set DEVICE_NEEDS_RESET (the device hit a broken queue).
    pub fn set_needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
    }

    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn selected_mut(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// Back to the state after power-on.
    pub fn reset(&mut self) {
        self.acked = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.status = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.vectors.reset();
    }

    /// Read `data.len()` bytes at `offset`. Fields are read with their own
    /// width (64-bit addresses also as two halves); anything else reads 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let v: u64 = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select.into(),
            (DEVICE_FEATURE, 4) => match self.device_feature_select {
                0 => self.offered & 0xffff_ffff,
                1 => self.offered >> 32,
                _ => 0,
            },
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select.into(),
            (DRIVER_FEATURE, 4) => match self.driver_feature_select {
                0 => self.acked & 0xffff_ffff,
                1 => self.acked >> 32,
                _ => 0,
            },
            (CONFIG_MSIX_VECTOR, 2) => self.vectors.config().into(),
            (NUM_QUEUES, 2) => self.queues.len() as u64,
            (DEVICE_STATUS, 1) => self.status.into(),
            (CONFIG_GENERATION, 1) => self.generation.into(),
            (QUEUE_SELECT, 2) => self.queue_select.into(),
            (QUEUE_SIZE, 2) => self.selected().map_or(0, |q| q.size().into()),
            (QUEUE_MSIX_VECTOR, 2) => match self.selected() {
                Some(_) => self.vectors.queue(self.queue_select).into(),
                None => NO_VECTOR.into(),
            },
            (QUEUE_ENABLE, 2) => self.selected().map_or(0, |q| q.ready().into()),
            // Queue i is notified at i * notify_off_multiplier.
            (QUEUE_NOTIFY_OFF, 2) => self.queue_select.into(),
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 4 | 8) | (0x24 | 0x2c | 0x34, 4) => {
                let field = offset & !7;
                let full = self.selected().map_or(0, |q| match field {
                    QUEUE_DESC => q.desc_table(),
                    QUEUE_DRIVER => q.avail_ring(),
                    _ => q.used_ring(),
                });
                if offset % 8 == 4 {
                    full >> 32
                } else {
                    full
                }
            }
            (QUEUE_NOTIFY_DATA, 2) => self.queue_select.into(),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        data.copy_from_slice(&bytes[..data.len()]);
    }

    /// Write `data` at `offset`; see [`Effect`].
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Effect {
        let mut b = [0u8; 8];
        if data.len() > 8 {
            return Effect::None;
        }
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        // Queue configuration is frozen once the queue is enabled or the
        // device is running (drivers must not change it then; ignoring
        // such writes keeps the I/O thread's copy the only truth).
        let queue_locked =
            self.status & status::DRIVER_OK != 0 || self.selected().is_none_or(|q| q.ready());
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (DRIVER_FEATURE, 4) if self.status & status::FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => self.acked = (self.acked & !0xffff_ffff) | (v & 0xffff_ffff),
                    1 => self.acked = (self.acked & 0xffff_ffff) | (v & 0xffff_ffff) << 32,
                    _ => {}
                }
            }
            (CONFIG_MSIX_VECTOR, 2) => self.vectors.set(0, self.vector(v as u16)),
            (DEVICE_STATUS, 1) => return self.write_status(v as u8),
            (QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (QUEUE_SIZE, 2) if !queue_locked => {
                let size = v as u16;
                if let Some(q) = self.selected_mut() {
                    // An invalid size (zero, not a power of two, above the
                    // maximum) is refused by the queue and reads back as the
                    // previous one.
                    if size.is_power_of_two() && size <= q.max_size() {
                        q.set_size(size);
                    }
                }
            }
            (QUEUE_MSIX_VECTOR, 2) if self.selected().is_some() => {
                let vec = self.vector(v as u16);
                self.vectors.set(usize::from(self.queue_select) + 1, vec);
            }
            (QUEUE_ENABLE, 2) if v == 1 && !queue_locked => {
                if let Some(q) = self.selected_mut() {
                    q.set_ready(true);
                }
            }
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 4 | 8) | (0x24 | 0x2c | 0x34, 4)
                if !queue_locked =>
            {
                let field = offset & !7;
                let (low, high) = match (offset % 8, data.len()) {
                    (0, 8) => (Some(v as u32), Some((v >> 32) as u32)),
                    (0, _) => (Some(v as u32), None),
                    _ => (None, Some(v as u32)),
                };
                if let Some(q) = self.selected_mut() {
                    match field {
                        QUEUE_DESC => q.set_desc_table_address(low, high),
                        QUEUE_DRIVER => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            // queue_reset (VIRTIO_F_RING_RESET) is not offered.
            (QUEUE_RESET, 2) => {}
            _ => {}
        }
        Effect::None
    }

    fn vector(&self, v: u16) -> u16 {
        if v < self.msix_len {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, v: u8) -> Effect {
        if v == 0 {
            return Effect::Reset;
        }
        let old = self.status;
        let mut new = v;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            // The device accepts the features only if they are a subset of
            // what it offered and include VERSION_1 (no legacy interface
            // here); otherwise FEATURES_OK reads back clear.
            let ok = self.acked & !self.offered == 0 && self.acked & features::VERSION_1 != 0;
            if !ok {
                new &= !status::FEATURES_OK;
            }
        }
        // The driver cannot clear bits (only a reset does), nor set
        // DEVICE_NEEDS_RESET itself.
        new |= old;
        new = (new & !status::DEVICE_NEEDS_RESET) | (old & status::DEVICE_NEEDS_RESET);
        self.status = new;
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            return Effect::DriverOk;
        }
        Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w16(c: &mut CommonCfg, off: u64, v: u16) -> Effect {
        c.write(off, &v.to_le_bytes())
    }
    fn w32(c: &mut CommonCfg, off: u64, v: u32) -> Effect {
        c.write(off, &v.to_le_bytes())
    }
    fn r16(c: &CommonCfg, off: u64) -> u16 {
        let mut b = [0; 2];
        c.read(off, &mut b);
        u16::from_le_bytes(b)
    }
    fn r32(c: &CommonCfg, off: u64) -> u32 {
        let mut b = [0; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    const OFFERED: u64 = features::VERSION_1 | 1 << 9;

    #[test]
    fn feature_negotiation() {
        let mut c = CommonCfg::new(OFFERED, &[256], 2);
        w32(&mut c, DEVICE_FEATURE_SELECT, 1);
        assert_eq!(r32(&c, DEVICE_FEATURE), 1);
        w32(&mut c, DEVICE_FEATURE_SELECT, 0);
        assert_eq!(r32(&c, DEVICE_FEATURE), 1 << 9);
        // Without VERSION_1 FEATURES_OK does not stick.
        w32(&mut c, DRIVER_FEATURE, 1 << 9);
        c.write(
            DEVICE_STATUS,
            &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
        );
        assert_eq!(c.status() & status::FEATURES_OK, 0);
        // Nor with a feature that was not offered.
        w32(&mut c, DRIVER_FEATURE_SELECT, 1);
        w32(&mut c, DRIVER_FEATURE, 1 | 2);
        c.write(DEVICE_STATUS, &[status::FEATURES_OK]);
        assert_eq!(c.status() & status::FEATURES_OK, 0);
        w32(&mut c, DRIVER_FEATURE, 1);
        c.write(DEVICE_STATUS, &[status::FEATURES_OK]);
        assert_ne!(c.status() & status::FEATURES_OK, 0);
        assert_eq!(c.acked_features(), OFFERED);
        // Frozen after FEATURES_OK.
        w32(&mut c, DRIVER_FEATURE, 0);
        assert_eq!(c.acked_features(), OFFERED);
    }

    #[test]
    fn queue_setup_and_driver_ok() {
        let mut c = CommonCfg::new(OFFERED, &[256, 128], 3);
        assert_eq!(r16(&c, NUM_QUEUES), 2);
        w16(&mut c, QUEUE_SELECT, 1);
        assert_eq!(r16(&c, QUEUE_SIZE), 128);
        w16(&mut c, QUEUE_SIZE, 100);
        assert_eq!(r16(&c, QUEUE_SIZE), 128, "not a power of two");
        w16(&mut c, QUEUE_SIZE, 64);
        assert_eq!(r16(&c, QUEUE_SIZE), 64);
        w32(&mut c, QUEUE_DESC, 0x1000);
        w32(&mut c, QUEUE_DESC + 4, 0x1);
        c.write(QUEUE_DRIVER, &0x2000u64.to_le_bytes());
        w32(&mut c, QUEUE_DEVICE, 0x3000);
        assert_eq!(r32(&c, QUEUE_DESC + 4), 1);
        let mut q = [0u8; 8];
        c.read(QUEUE_DRIVER, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x2000);
        w16(&mut c, QUEUE_MSIX_VECTOR, 2);
        assert_eq!(r16(&c, QUEUE_MSIX_VECTOR), 2);
        w16(&mut c, QUEUE_MSIX_VECTOR, 3);
        assert_eq!(r16(&c, QUEUE_MSIX_VECTOR), NO_VECTOR, "past the table");
        w16(&mut c, QUEUE_MSIX_VECTOR, 1);
        w16(&mut c, QUEUE_ENABLE, 1);
        w16(&mut c, QUEUE_SIZE, 32);
        assert_eq!(r16(&c, QUEUE_SIZE), 64, "frozen once enabled");
        assert_eq!(c.vectors.queue(1), 1);
        assert_eq!(c.queues[1].desc_table(), 0x1_0000_1000);
        w16(&mut c, QUEUE_SELECT, 9);
        assert_eq!(r16(&c, QUEUE_SIZE), 0, "absent queue");
        w32(&mut c, DRIVER_FEATURE_SELECT, 1);
        w32(&mut c, DRIVER_FEATURE, 1);
        c.write(
            DEVICE_STATUS,
            &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
        );
        assert_eq!(c.write(DEVICE_STATUS, &[0xf]), Effect::DriverOk);
        assert_eq!(c.write(DEVICE_STATUS, &[0xf]), Effect::None);
        assert_eq!(c.write(DEVICE_STATUS, &[0]), Effect::Reset);
        c.reset();
        assert_eq!(c.status(), 0);
        assert_eq!(c.vectors.queue(1), NO_VECTOR);
        w16(&mut c, QUEUE_SELECT, 1);
        assert_eq!(r16(&c, QUEUE_ENABLE), 0);
    }
}
