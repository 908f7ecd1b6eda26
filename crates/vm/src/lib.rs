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
pub use vm::{Vm, VmConfig, VmError, VmExit, VmHandle, MAX_VCPUS};

/// The port I/O and MMIO buses the vCPU threads dispatch exits to.
pub struct IoBuses {
    pub pio: devices::Bus,
    pub mmio: devices::Bus,
}
