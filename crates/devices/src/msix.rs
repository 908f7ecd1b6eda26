//! PCI MSI-X: the capability, the vector table and the pending bit array.
//!
//! Each vector is delivered through a KVM irqfd: the device writes the
//! vector's eventfd and KVM injects the message the routing table holds
//! for its GSI, without a trip through this process's vCPU threads. What
//! stays here is what the guest programs: message address and data, the
//! per-vector mask, the function mask and the enable bit. A vector fired
//! while masked is remembered in the pending bit array and delivered when
//! the guest unmasks it, as the PCI specification requires.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry: address low, address high, data, vector control.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// The most vectors one function may have (table size field is 11 bits).
pub const MSIX_MAX_VECTORS: u16 = 2048;

/// Message control bits (in the upper byte of the 16-bit register).
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control bit 0: the vector is masked.
const VECTOR_MASKED: u32 = 1;

/// A message the guest programmed into a table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

/// One interrupt source handed out by the VM: writing `fd` injects the
/// message routed to `gsi`.
pub struct MsiVector {
    pub gsi: u32,
    pub fd: EventFd,
}

/// The VM's side of MSI delivery (KVM GSI routing plus irqfds).
pub trait MsiRoutes: Send + Sync {
    /// `count` fresh vectors, each with its own GSI and eventfd.
    fn allocate(&self, count: usize) -> io::Result<Vec<MsiVector>>;
    /// Route `gsi` to `msg`, or nowhere (`None`) while the vector is
    /// masked or MSI-X is off.
    fn route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()>;
}

#[derive(Clone, Copy, Default)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            addr: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo),
            data: self.data,
        }
    }

    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }
}

pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
    vectors: Vec<MsiVector>,
    routes: Arc<dyn MsiRoutes>,
}

impl Msix {
    /// A table of `count` vectors (1..=2048), all masked, MSI-X disabled:
    /// the state at power-on and after a function reset.
    pub fn new(count: u16, routes: Arc<dyn MsiRoutes>) -> io::Result<Msix> {
        let count = count.clamp(1, MSIX_MAX_VECTORS);
        let vectors = routes.allocate(usize::from(count))?;
        Ok(Msix {
            entries: vec![
                Entry {
                    control: VECTOR_MASKED,
                    ..Default::default()
                };
                usize::from(count)
            ],
            pending: vec![false; usize::from(count)],
            enabled: false,
            function_masked: false,
            vectors,
            routes,
        })
    }

    pub fn len(&self) -> u16 {
        self.entries.len() as u16
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Bytes of the vector table.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes of the pending bit array (whole qwords, as guests read it).
    pub fn pba_size(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(64) * 8
    }

    /// The capability's body (after ID and next pointer): message control,
    /// table offset/BIR, PBA offset/BIR. Table and PBA offsets must be
    /// 8-byte aligned.
    pub fn capability_body(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[0..2].copy_from_slice(&(self.len() - 1).to_le_bytes());
        b[2..6].copy_from_slice(&(table_offset | u32::from(table_bar)).to_le_bytes());
        b[6..10].copy_from_slice(&(pba_offset | u32::from(pba_bar)).to_le_bytes());
        b
    }

    /// Which bytes of the capability body the guest may write: the enable
    /// and function mask bits.
    pub const CAPABILITY_WRITABLE: [u8; 2] = [0, 0xc0];

    /// The guest wrote message control (`value`, the whole 16-bit field).
    pub fn set_control(&mut self, value: u16) {
        let was_live = self.enabled && !self.function_masked;
        self.enabled = value & CTRL_ENABLE != 0;
        self.function_masked = value & CTRL_FUNCTION_MASK != 0;
        let live = self.enabled && !self.function_masked;
        if live != was_live {
            for i in 0..self.entries.len() {
                self.update_route(i);
            }
        }
        if live {
            self.deliver_pending();
        }
    }

    /// A read of the vector table at `offset`.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let mut value = [0u8; 8];
        let (index, field) = (
            (offset / MSIX_ENTRY_SIZE) as usize,
            (offset % MSIX_ENTRY_SIZE) as usize,
        );
        if let Some(e) = self.entries.get(index) {
            let words = [e.addr_lo, e.addr_hi, e.data, e.control];
            let w = field / 4;
            value[..4].copy_from_slice(&words[w].to_le_bytes());
            if let Some(next) = words.get(w + 1) {
                value[4..].copy_from_slice(&next.to_le_bytes());
            }
            let start = field % 4;
            let n = data.len().min(8 - start);
            data[..n].copy_from_slice(&value[start..start + n]);
            data[n..].fill(0);
        } else {
            data.fill(0);
        }
    }

    /// A write to the vector table at `offset` (dword or qword accesses,
    /// as the specification allows).
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        if !offset.is_multiple_of(4) || !matches!(data.len(), 4 | 8) {
            return;
        }
        let index = (offset / MSIX_ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get_mut(index) else {
            return;
        };
        let was_masked = e.masked();
        for (i, chunk) in data.chunks(4).enumerate() {
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            match (offset % MSIX_ENTRY_SIZE) / 4 + i as u64 {
                0 => e.addr_lo = v,
                1 => e.addr_hi = v,
                2 => e.data = v,
                3 => e.control = (e.control & !VECTOR_MASKED) | (v & VECTOR_MASKED),
                _ => {}
            }
        }
        let masked = e.masked();
        // While a vector is unmasked its route follows the entry; a change
        // to a masked one is picked up when it is unmasked.
        if !masked || was_masked != masked {
            self.update_route(index);
        }
        if was_masked && !masked {
            self.deliver_pending();
        }
    }

    /// A read of the pending bit array at `offset`.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            *b = (0..8)
                .filter(|bit| self.pending.get(first + bit).copied().unwrap_or(false))
                .fold(0u8, |acc, bit| acc | 1 << bit);
        }
    }

    /// Signal vector `v`: delivered now, or remembered as pending while it
    /// (or the function) is masked. Vectors past the table are ignored.
    pub fn fire(&mut self, v: u16) {
        let i = usize::from(v);
        let Some(e) = self.entries.get(i) else {
            return;
        };
        if !self.enabled {
            return;
        }
        if self.function_masked || e.masked() {
            self.pending[i] = true;
            return;
        }
        if let Err(e) = self.vectors[i].fd.write(1) {
            log::warn!("MSI-X vector {v}: irqfd write: {e}");
        }
    }

    /// Back to power-on state: disabled, every vector masked, no message.
    pub fn reset(&mut self) {
        for e in self.entries.iter_mut() {
            *e = Entry {
                control: VECTOR_MASKED,
                ..Default::default()
            };
        }
        self.pending.fill(false);
        self.enabled = false;
        self.function_masked = false;
        for i in 0..self.entries.len() {
            self.update_route(i);
        }
    }

    fn deliver_pending(&mut self) {
        for i in 0..self.entries.len() {
            if self.pending[i] && !self.entries[i].masked() && self.enabled && !self.function_masked
            {
                self.pending[i] = false;
                if let Err(e) = self.vectors[i].fd.write(1) {
                    log::warn!("MSI-X vector {i}: irqfd write: {e}");
                }
            }
        }
    }

    fn update_route(&self, i: usize) {
        let e = &self.entries[i];
        let live = self.enabled && !self.function_masked && !e.masked();
        let msg = live.then(|| e.message());
        if let Err(err) = self.routes.route(self.vectors[i].gsi, msg) {
            log::warn!(
                "MSI-X vector {i}: routing GSI {}: {err}",
                self.vectors[i].gsi
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records routes; eventfds are real so that firing can be observed.
    #[derive(Default)]
    struct Routes(Mutex<Vec<(u32, Option<MsiMessage>)>>);

    impl MsiRoutes for Routes {
        fn allocate(&self, count: usize) -> io::Result<Vec<MsiVector>> {
            (0..count)
                .map(|i| {
                    Ok(MsiVector {
                        gsi: 24 + i as u32,
                        fd: EventFd::new(libc::EFD_NONBLOCK)?,
                    })
                })
                .collect()
        }
        fn route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
            self.0.lock().unwrap().push((gsi, msg));
            Ok(())
        }
    }

    fn fired(m: &Msix, v: usize) -> bool {
        m.vectors[v].fd.read().is_ok()
    }

    fn program(m: &mut Msix, v: u64, addr: u64, data: u32) {
        let base = v * MSIX_ENTRY_SIZE;
        m.table_write(base, &(addr as u32).to_le_bytes());
        m.table_write(base + 4, &((addr >> 32) as u32).to_le_bytes());
        m.table_write(base + 8, &data.to_le_bytes());
    }

    #[test]
    fn masked_vectors_pend_and_deliver_on_unmask() {
        let routes = Arc::new(Routes::default());
        let mut m = Msix::new(2, routes.clone()).unwrap();
        m.fire(0);
        assert!(!fired(&m, 0), "disabled MSI-X delivers nothing");
        m.set_control(CTRL_ENABLE);
        program(&mut m, 1, 0xfee0_0000, 0x41);
        m.fire(1);
        assert!(!fired(&m, 1), "vectors start masked");
        let mut pba = [0u8; 8];
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        m.table_write(16 + 12, &0u32.to_le_bytes());
        assert!(fired(&m, 1), "unmask delivers the pending vector");
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0);
        assert_eq!(
            routes.0.lock().unwrap().last(),
            Some(&(
                25,
                Some(MsiMessage {
                    addr: 0xfee0_0000,
                    data: 0x41
                })
            ))
        );
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        m.fire(1);
        assert!(!fired(&m, 1));
        m.set_control(CTRL_ENABLE);
        assert!(fired(&m, 1), "function unmask delivers too");
        m.fire(7);
    }

    #[test]
    fn table_reads_back_and_ignores_bad_accesses() {
        let mut m = Msix::new(1, Arc::new(Routes::default())).unwrap();
        program(&mut m, 0, 0x1_fee0_1000, 7);
        m.table_write(2, &[1, 2, 3, 4]);
        m.table_write(0, &[1, 2]);
        let mut q = [0u8; 8];
        m.table_read(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x1_fee0_1000);
        let mut d = [0u8; 4];
        m.table_read(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1, "masked at start");
        m.table_read(16, &mut d);
        assert_eq!(d, [0; 4], "past the table");
    }
}
