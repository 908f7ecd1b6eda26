//! One virtual machine on KVM: guest memory, vCPU threads, the legacy
//! devices, loaders and the lifecycle (run, pause, reset, power-off).

pub mod acpi;
pub mod boot;
pub mod control;
pub mod cpuid;
pub mod irq;
pub mod layout;
pub mod regs;
pub mod vcpu;
mod vm;

pub use control::{RunState, StopReason};
pub use vm::{random_uuid, NoGuestTools, Vm, VmConfig, VmError, VmExit, VmHandle, MAX_VCPUS};

/// The guest channel's protocol types, for users of `VmHandle`.
pub use guestrpc;

/// Where the vCPU threads dispatch exits to.
pub struct IoBuses {
    pub pio: devices::Bus,
    pub mmio: devices::Bus,
    /// A device that needs the vCPU registers (the VMware backdoor), with
    /// the first of the two consecutive ports it owns.
    pub regs_dev: Option<(
        u16,
        std::sync::Arc<std::sync::Mutex<dyn devices::RegsDevice>>,
    )>,
    /// KVM has KVM_CAP_SYNC_REGS (registers in kvm_run at each exit).
    pub sync_regs: bool,
}

impl IoBuses {
    fn is_regs_port(&self, port: u16) -> bool {
        matches!(self.regs_dev, Some((base, _)) if port.wrapping_sub(base) < 2)
    }
}
