//! One virtual machine on KVM: guest memory, vCPU threads, the legacy
//! devices, loaders and the lifecycle (run, pause, reset, power-off).

pub mod acpi;
pub mod boot;
pub mod coalesced;
pub mod control;
pub mod cpuid;
pub mod creds;
pub mod firmware;
pub mod irq;
pub mod layout;
pub mod mptable;
pub mod msi;
pub mod regs;
pub mod vcpu;
mod vm;

pub use control::{RunState, StopReason};
pub use vm::{
    random_uuid, DiskConfig, LocalNet, NetDevConfig, NoGuestTools, Vm, VmConfig, VmError, VmExit,
    VmHandle, MAX_VCPUS,
};

/// The VM's threads by kind, and the hook that confines each (see
/// [`devices::threads`]).
pub use devices::threads;

/// The guest channel's protocol types, for users of `VmHandle`.
pub use guestrpc;

/// Where the vCPU threads dispatch exits to.
pub struct IoBuses {
    pub pio: devices::Bus,
    /// Behind a lock because PCI BARs move at the guest's request; never
    /// held while a device runs (see [`IoBuses::mmio_read`]).
    pub mmio: std::sync::Arc<std::sync::RwLock<devices::Bus>>,
    /// A device that needs the vCPU registers (the VMware backdoor), with
    /// the first of the two consecutive ports it owns.
    pub regs_dev: Option<(
        u16,
        std::sync::Arc<std::sync::Mutex<dyn devices::RegsDevice>>,
    )>,
    /// KVM has KVM_CAP_SYNC_REGS (registers in kvm_run at each exit).
    pub sync_regs: bool,
    /// Writes KVM queued for ports registered as coalesced (see
    /// [`coalesced`]); drained before every exit is dispatched.
    pub coalesced: Option<std::sync::Mutex<coalesced::CoalescedRing>>,
}

impl IoBuses {
    /// Applies the writes KVM queued, in order, so that the exit about to
    /// be dispatched sees devices as the guest left them.
    fn drain_coalesced(&self) {
        if let Some(ring) = &self.coalesced {
            let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
            ring.drain(|w| {
                if w.pio {
                    self.pio.write(w.addr, w.data());
                } else {
                    self.mmio_write(w.addr, w.data());
                }
            });
        }
    }

    /// Runs `f` on the MMIO device at `addr` with the offset into its
    /// range; false if nothing is mapped there. The bus lock is released
    /// before the device runs: a configuration write through the ECAM
    /// window may move a BAR, which takes it for writing.
    fn on_mmio(&self, addr: u64, f: impl FnOnce(&mut dyn devices::BusDevice, u64)) -> bool {
        let found = self
            .mmio
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(addr);
        match found {
            Some((dev, off)) => {
                f(&mut *dev.lock().unwrap_or_else(|e| e.into_inner()), off);
                true
            }
            None => false,
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.on_mmio(addr, |dev, off| dev.read(off, data))
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.on_mmio(addr, |dev, off| dev.write(off, data))
    }

    fn is_regs_port(&self, port: u16) -> bool {
        matches!(self.regs_dev, Some((base, _)) if port.wrapping_sub(base) < 2)
    }
}
