//! Interrupt lines into KVM's in-kernel PIC + IOAPIC.

use std::sync::Arc;

use devices::IrqLine;
use kvm_ioctls::VmFd;

/// A GSI driven with `KVM_IRQ_LINE`. The in-kernel irqchip routes GSIs 0-15
/// to both the 8259 pair and the IOAPIC, so one line serves either mode
/// the guest chooses. Safe to call from any thread: it is a single ioctl.
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl KvmIrqLine {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Self {
        Self { vm, gsi }
    }

    fn set(&self, high: bool) {
        // Only fails for a bad GSI or a VM without irqchip, both
        // configuration bugs caught when the VM is built.
        if let Err(e) = self.vm.set_irq_line(self.gsi, high) {
            log::error!("KVM_IRQ_LINE gsi {}: {e}", self.gsi);
        }
    }
}

impl IrqLine for KvmIrqLine {
    fn pulse(&self) {
        self.set(true);
        self.set(false);
    }

    fn set_level(&self, high: bool) {
        self.set(high);
    }
}
