//! Address-range dispatch of port I/O and MMIO exits to devices.
//!
//! One `Bus` for port I/O and one for MMIO. Lookup is a binary search over
//! non-overlapping ranges sorted by base; the ranges are fixed once the VM
//! runs, so the vCPU threads only take each device's own lock.

use std::fmt;
use std::sync::{Arc, Mutex};

/// A device reachable on a bus. `offset` is relative to the base of the
/// range the device was inserted at; `data.len()` is the access size.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or overlaps one already on the bus.
    Overlap { base: u64, len: u64 },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::Overlap { base, len } => {
                write!(
                    f,
                    "bus range {base:#x}+{len:#x} is empty or overlaps another device"
                )
            }
        }
    }
}

impl std::error::Error for BusError {}

struct Range {
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, Range { base, len, dev });
        Ok(())
    }

    /// The device at `addr` and the offset into its range, for callers
    /// that must not hold the bus while the device runs (a bus behind a
    /// lock that the device's own handling may need to take).
    pub fn lookup(&self, addr: u64) -> Option<(Arc<Mutex<dyn BusDevice>>, u64)> {
        self.find(addr).map(|(r, off)| (r.dev.clone(), off))
    }

    /// Takes the range based at `base` off the bus; returns its device.
    pub fn remove(&mut self, base: u64) -> Option<Arc<Mutex<dyn BusDevice>>> {
        let i = self.ranges.iter().position(|r| r.base == base)?;
        Some(self.ranges.remove(i).dev)
    }

    fn find(&self, addr: u64) -> Option<(&Range, u64)> {
        let idx = self.ranges.partition_point(|r| r.base <= addr);
        let r = self.ranges.get(idx.checked_sub(1)?)?;
        let off = addr - r.base;
        (off < r.len).then_some((r, off))
    }

    /// Dispatch a read. Returns false if no device claims `addr`; the caller
    /// then fills `data` with all ones, as an unclaimed ISA/PCI read does.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((r, off)) => {
                r.dev
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write. Returns false if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((r, off)) => {
                r.dev
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Reg(10))), 0x3f8, 8).unwrap();
        bus.insert(Arc::new(Mutex::new(Reg(20))), 0x60, 1).unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Reg(0))), 0x3fc, 8),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert!(bus.insert(Arc::new(Mutex::new(Reg(0))), 0x1, 0).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 12);
        assert!(bus.write(0x60, &[7]));
        assert!(bus.read(0x60, &mut b));
        assert_eq!(b[0], 7);
        assert!(!bus.read(0x61, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.read(0x400, &mut b));
    }
}
