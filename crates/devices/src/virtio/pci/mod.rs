//! The virtio-pci transport, modern interface only (virtio 1.2 section 4.1).
//!
//! One function per device on bus 0, with one 32-bit memory BAR laid out
//! as below and described to the driver by vendor-specific capabilities:
//!
//! ```text
//! BAR0 + 0x0000  common configuration (feature bits, status, queues)
//! BAR0 + 0x1000  ISR status (read clears; INTx only)
//! BAR0 + 0x2000  device-specific configuration
//! BAR0 + 0x3000  queue notifications, 4 bytes per queue (ioeventfds)
//! BAR0 + 0x4000  MSI-X vector table
//! BAR0 + 0x6000  MSI-X pending bit array
//! ```
//!
//! Queue notifications are KVM ioeventfds, so a kick wakes the device's
//! I/O thread without a vCPU exit to this process; used-buffer
//! notifications are MSI-X messages through KVM irqfds, or, while the
//! driver has not enabled MSI-X, INTA# on the IOAPIC pin the ACPI _PRT
//! names, level-triggered and lowered when the driver reads the ISR.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

pub use common::NO_VECTOR;
use common::{CommonCfg, Effect, Vectors, COMMON_CFG_SIZE};

use super::{features, status, Activation, ActiveQueue, GuestMemory, Interrupt, VirtioDevice};
use crate::msix::{MsiRoutes, Msix, MSIX_CAP_ID};
use crate::pci_host::{BarKind, BarMove, PciConfig, PciDevice, PciError};
use crate::{BusDevice, IoEvents, SharedIrq};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type.
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;

const COMMON_OFF: u64 = 0x0000;
const ISR_OFF: u64 = 0x1000;
const DEVICE_OFF: u64 = 0x2000;
const NOTIFY_OFF: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFF: u64 = 0x4000;
const MSIX_PBA_OFF: u64 = 0x6000;
const REGION_LEN: u64 = 0x1000;
/// Size of BAR0.
pub const BAR_SIZE: u64 = 0x8000;

/// Vendor-specific capability ID, and the virtio structure types.
const CAP_VENDOR: u8 = 0x09;
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

/// ISR bits: a queue interrupt, a configuration change.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// PCI class codes guests expect of each virtio device type.
fn class_code(device_type: u16) -> u32 {
    match device_type {
        1 => 0x02_00_00,     // network controller, Ethernet
        2 | 8 => 0x01_00_00, // mass storage, SCSI (as QEMU presents both)
        4 => 0xff_00_00,     // entropy source: unclassified
        _ => 0xff_00_00,
    }
}

/// How a device signals its driver: MSI-X when the driver enabled it,
/// INTx with the ISR otherwise. Shared with the device's I/O thread.
struct Signal {
    msix: Arc<Mutex<Msix>>,
    vectors: Arc<Vectors>,
    isr: Mutex<u8>,
    intx: SharedIrq,
    needs_reset: AtomicBool,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Signal {
    fn notify(&self, vector: u16, isr_bit: u8) {
        {
            let mut msix = lock(&self.msix);
            if msix.enabled() {
                if vector != NO_VECTOR {
                    msix.fire(vector);
                }
                return;
            }
        }
        // The ISR and the line change together under the lock, so a
        // driver's read-and-clear never leaves the line high with the ISR
        // empty (an interrupt nobody claims) or low with bits set.
        let mut isr = lock(&self.isr);
        *isr |= isr_bit;
        self.intx.set_level(true);
    }

    /// The driver read the ISR: it is cleared and INTA# deasserted.
    fn read_isr(&self) -> u8 {
        let mut isr = lock(&self.isr);
        let v = std::mem::take(&mut *isr);
        if v != 0 {
            self.intx.set_level(false);
        }
        v
    }
}

impl Interrupt for Signal {
    fn signal_used(&self, queue: u16) {
        self.notify(self.vectors.queue(queue), ISR_QUEUE);
    }

    fn signal_config(&self) {
        self.notify(self.vectors.config(), ISR_CONFIG);
    }

    fn needs_reset(&self) {
        self.needs_reset.store(true, Ordering::Release);
        self.signal_config();
    }
}

/// What the VM provides to a virtio-pci function.
pub struct PciWiring {
    /// Where BAR0 starts (the VMM assigns it; the guest may move it).
    pub bar_addr: u64,
    /// INTA#, level-triggered.
    pub intx: SharedIrq,
    /// The IOAPIC pin `intx` drives, for the Interrupt Line register.
    pub intx_line: u8,
    pub msi: Arc<dyn MsiRoutes>,
    pub ioevents: Arc<dyn IoEvents>,
}

#[derive(Debug)]
pub enum VirtioPciError {
    Pci(PciError),
    Host(io::Error),
}

impl std::fmt::Display for VirtioPciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VirtioPciError::Pci(e) => write!(f, "{e}"),
            VirtioPciError::Host(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for VirtioPciError {}

/// A virtio device on PCI: configuration space (its [`PciDevice`] face)
/// and BAR0 (its [`BusDevice`] face, relative to the BAR's address).
pub struct VirtioPci {
    config: PciConfig,
    device: Box<dyn VirtioDevice>,
    common: CommonCfg,
    signal: Arc<Signal>,
    msix: Arc<Mutex<Msix>>,
    msix_cap: usize,
    cfg_cap: usize,
    kicks: Vec<EventFd>,
    mem: GuestMemory,
    ioevents: Arc<dyn IoEvents>,
    bar: u64,
    active: bool,
}

impl VirtioPci {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        wiring: PciWiring,
    ) -> Result<Self, VirtioPciError> {
        let dtype = device.device_type();
        let mut config = PciConfig::new(
            VIRTIO_PCI_VENDOR,
            VIRTIO_PCI_DEVICE_BASE + dtype,
            class_code(dtype),
            1, // modern-only devices have revision 1 or more
        );
        config.set_subsystem(VIRTIO_PCI_VENDOR, 0x1100);
        config.set_interrupt_pin_a(wiring.intx_line);
        config
            .add_bar(0, BarKind::Memory32, BAR_SIZE, wiring.bar_addr)
            .map_err(VirtioPciError::Pci)?;

        let nqueues = device.queue_max_sizes().len();
        // One vector per queue and one for configuration changes, as
        // Linux asks for first.
        let msix = Msix::new(nqueues as u16 + 1, wiring.msi).map_err(VirtioPciError::Host)?;
        let common = CommonCfg::new(
            device.features() | features::VERSION_1,
            device.queue_max_sizes(),
            msix.len(),
        );
        let cap = |cfg_type: u8, offset: u64, length: u64, extra: &[u8]| {
            let mut b = vec![16 + extra.len() as u8, cfg_type, 0, 0, 0, 0];
            b.extend_from_slice(&(offset as u32).to_le_bytes());
            b.extend_from_slice(&(length as u32).to_le_bytes());
            b.extend_from_slice(extra);
            b
        };
        let notify_len = nqueues as u64 * u64::from(NOTIFY_MULTIPLIER);
        let pci = VirtioPciError::Pci;
        config
            .add_capability(
                CAP_VENDOR,
                &cap(CAP_COMMON_CFG, COMMON_OFF, COMMON_CFG_SIZE, &[]),
            )
            .map_err(pci)?;
        config
            .add_capability(
                CAP_VENDOR,
                &cap(
                    CAP_NOTIFY_CFG,
                    NOTIFY_OFF,
                    notify_len,
                    &NOTIFY_MULTIPLIER.to_le_bytes(),
                ),
            )
            .map_err(pci)?;
        config
            .add_capability(CAP_VENDOR, &cap(CAP_ISR_CFG, ISR_OFF, 1, &[]))
            .map_err(pci)?;
        config
            .add_capability(
                CAP_VENDOR,
                &cap(CAP_DEVICE_CFG, DEVICE_OFF, REGION_LEN, &[]),
            )
            .map_err(pci)?;
        // The PCI configuration access capability: a window into the BARs
        // through configuration space, for firmware that cannot map them.
        // Its bar, offset, length and data fields are the driver's.
        let cfg_cap = config
            .add_capability(CAP_VENDOR, &cap(CAP_PCI_CFG, 0, 0, &[0; 4]))
            .map_err(pci)?;
        config.set_writable(cfg_cap + 4, &[0xff]);
        config.set_writable(cfg_cap + 8, &[0xff; 12]);
        let msix_cap = config
            .add_capability(
                MSIX_CAP_ID,
                &msix.capability_body(0, MSIX_TABLE_OFF as u32, 0, MSIX_PBA_OFF as u32),
            )
            .map_err(pci)?;
        config.set_writable(msix_cap + 2, &Msix::CAPABILITY_WRITABLE);

        let kicks = (0..nqueues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(VirtioPciError::Host)?;
        let msix = Arc::new(Mutex::new(msix));
        let signal = Arc::new(Signal {
            msix: msix.clone(),
            vectors: common.vectors.clone(),
            isr: Mutex::new(0),
            intx: wiring.intx,
            needs_reset: AtomicBool::new(false),
        });
        let dev = VirtioPci {
            config,
            device,
            common,
            signal,
            msix,
            msix_cap,
            cfg_cap,
            kicks,
            mem,
            ioevents: wiring.ioevents,
            bar: wiring.bar_addr,
            active: false,
        };
        dev.register_ioevents(dev.bar, true)
            .map_err(VirtioPciError::Host)?;
        Ok(dev)
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Where BAR0 is now.
    pub fn bar_addr(&self) -> u64 {
        self.bar
    }

    fn register_ioevents(&self, bar: u64, register: bool) -> io::Result<()> {
        for (q, fd) in self.kicks.iter().enumerate() {
            let addr = bar + NOTIFY_OFF + q as u64 * u64::from(NOTIFY_MULTIPLIER);
            if register {
                self.ioevents.register(fd, addr)?;
            } else {
                self.ioevents.unregister(fd, addr)?;
            }
        }
        Ok(())
    }

    /// The guest moved BAR0: the doorbells move with it. (The VMM moves
    /// the MMIO range.)
    fn bar_moved(&mut self, new: u64) {
        if let Err(e) = self.register_ioevents(self.bar, false) {
            log::warn!(
                "virtio-pci: unregistering doorbells at {:#x}: {e}",
                self.bar
            );
        }
        self.bar = new;
        // A BAR may be parked at 0 (or anywhere odd) while firmware sizes
        // and assigns; notification writes then still reach us through
        // MMIO exits, only slower.
        if let Err(e) = self.register_ioevents(new, true) {
            log::warn!("virtio-pci: registering doorbells at {new:#x}: {e}");
        }
    }

    fn reset(&mut self) {
        // Always: a reset before DRIVER_OK must still undo what the driver
        // wrote into the device's configuration space.
        self.device.reset();
        self.active = false;
        self.common.reset();
        self.signal.needs_reset.store(false, Ordering::Release);
        self.signal.read_isr();
        // Kicks that arrived for the old queues mean nothing to new ones.
        for k in &self.kicks {
            let _ = k.read();
        }
    }

    /// The VM was reset: the device, MSI-X and the configuration header go
    /// back to power-on state. Returns BAR moves for the VMM to apply to
    /// its MMIO bus.
    pub fn power_on_reset(&mut self) -> Vec<BarMove> {
        self.reset();
        lock(&self.msix).reset();
        let moves = self.config.reset();
        for m in &moves {
            if m.bar == 0 {
                self.bar_moved(m.new_addr);
            }
        }
        moves
    }

    fn activate(&mut self) {
        if self.common.status() & status::FEATURES_OK == 0 {
            log::warn!("virtio-pci: DRIVER_OK without FEATURES_OK; device needs reset");
            self.common.set_needs_reset();
            return;
        }
        let acked = self.common.acked_features();
        let event_idx = acked & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (i, q) in self.common.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            // The transport keeps its copy for the driver to read back;
            // the I/O thread gets its own, built from the same state.
            let Ok(mut q) = virtio_queue::Queue::try_from(q.state()) else {
                self.common.set_needs_reset();
                return;
            };
            q.set_event_idx(event_idx);
            if !q.is_valid(&self.mem) {
                log::warn!(
                    "{}: queue {i} rings are outside guest memory or misaligned",
                    self.device.describe()
                );
                self.common.set_needs_reset();
                return;
            }
            let kick = match self.kicks[i].try_clone() {
                Ok(k) => k,
                Err(e) => {
                    log::error!("virtio-pci: {e}");
                    self.common.set_needs_reset();
                    return;
                }
            };
            queues.push(ActiveQueue {
                index: i as u16,
                queue: q,
                kick,
            });
        }
        let act = Activation {
            mem: self.mem.clone(),
            acked_features: acked,
            queues,
            interrupt: self.signal.clone(),
        };
        match self.device.activate(act) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::warn!("{}: cannot start: {e}", self.device.describe());
                self.common.set_needs_reset();
            }
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            Effect::None => {}
            Effect::Reset => self.reset(),
            Effect::DriverOk => self.activate(),
        }
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFF + REGION_LEN => {
                if self.signal.needs_reset.load(Ordering::Acquire) {
                    self.common.set_needs_reset();
                }
                self.common.read(o - COMMON_OFF, data);
            }
            o if o < ISR_OFF + REGION_LEN => {
                data.fill(0);
                if o == ISR_OFF {
                    data[0] = self.signal.read_isr();
                }
            }
            o if o < DEVICE_OFF + REGION_LEN => self.device.read_config(o - DEVICE_OFF, data),
            o if (MSIX_TABLE_OFF..MSIX_PBA_OFF).contains(&o) => {
                lock(&self.msix).table_read(o - MSIX_TABLE_OFF, data)
            }
            o if (MSIX_PBA_OFF..BAR_SIZE).contains(&o) => {
                lock(&self.msix).pba_read(o - MSIX_PBA_OFF, data)
            }
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFF + REGION_LEN => self.common_write(o - COMMON_OFF, data),
            o if o < ISR_OFF + REGION_LEN => {}
            o if o < DEVICE_OFF + REGION_LEN => self.device.write_config(o - DEVICE_OFF, data),
            o if o < NOTIFY_OFF + REGION_LEN => {
                // Reached only when the ioeventfd is not (yet) at this
                // address: hand the kick on the same way.
                let q = (o - NOTIFY_OFF) / u64::from(NOTIFY_MULTIPLIER);
                if let Some(k) = self.kicks.get(q as usize) {
                    let _ = k.write(1);
                }
            }
            o if (MSIX_TABLE_OFF..MSIX_PBA_OFF).contains(&o) => {
                lock(&self.msix).table_write(o - MSIX_TABLE_OFF, data)
            }
            _ => {}
        }
    }

    /// The access the PCI configuration access capability describes:
    /// (BAR offset, length), if it names BAR0 with a length of 1, 2 or 4.
    fn cfg_window(&self) -> Option<(u64, usize)> {
        let [bar] = self.config.bytes::<1>(self.cfg_cap + 4);
        let offset = u32::from_le_bytes(self.config.bytes(self.cfg_cap + 8));
        let length = u32::from_le_bytes(self.config.bytes(self.cfg_cap + 12));
        (bar == 0
            && matches!(length, 1 | 2 | 4)
            && u64::from(offset) + u64::from(length) <= BAR_SIZE)
            .then_some((u64::from(offset), length as usize))
    }
}

impl PciDevice for VirtioPci {
    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == (self.cfg_cap + 16) / 4 {
            if let Some((offset, len)) = self.cfg_window() {
                let mut data = [0u8; 4];
                self.bar_read(offset, &mut data[..len]);
                self.config.set_bytes(self.cfg_cap + 16, &data);
            }
        }
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        let moved = self.config.write(reg, offset, data);
        let (start, end) = (reg * 4 + offset, reg * 4 + offset + data.len());
        let touches = |at: usize, len: usize| start < at + len && at < end;
        if touches(self.msix_cap + 2, 2) {
            let ctrl = u16::from_le_bytes(self.config.bytes(self.msix_cap + 2));
            lock(&self.msix).set_control(ctrl);
        }
        if start == self.cfg_cap + 16 {
            if let Some((bar_off, len)) = self.cfg_window() {
                let bytes: [u8; 4] = self.config.bytes(self.cfg_cap + 16);
                self.bar_write(bar_off, &bytes[..len.min(data.len())]);
            }
        }
        if let Some(m) = moved {
            if m.bar == 0 {
                self.bar_moved(m.new_addr);
            }
        }
        moved
    }
}

impl BusDevice for VirtioPci {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.bar_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.bar_write(offset, data);
    }
}

impl Drop for VirtioPci {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}
