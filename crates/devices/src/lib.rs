//! Device models for the VM process, one file per device.
//!
//! Devices never touch KVM directly: they see port or MMIO accesses through
//! [`BusDevice`], raise interrupts through [`IrqLine`], and ask for VM-wide
//! actions (reset, power-off) through [`VmEvents`]. The `vm` crate wires
//! these to KVM, which keeps device logic testable without `/dev/kvm`.

pub mod acpi_pm;
pub mod backdoor;
pub mod bus;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod msix;
pub mod pci_host;
pub mod rtc;
pub mod serial;
pub mod threads;
pub mod virtio;

#[cfg(test)]
mod testutil;

pub use acpi_pm::AcpiPm;
pub use backdoor::Backdoor;
pub use bus::{Bus, BusDevice, BusError};
pub use i8042::I8042;
pub use pci_host::{PciDevice, PciEcam, PciHost, PciRoot};
pub use rtc::Rtc;
pub use serial::Serial;

use std::sync::Arc;

/// An interrupt line into the guest's interrupt controller.
///
/// Edge-triggered sources call [`IrqLine::pulse`]; level-triggered sources
/// (the ACPI SCI) call [`IrqLine::set_level`].
pub trait IrqLine: Send + Sync {
    /// Raise then lower the line: one edge-triggered interrupt.
    fn pulse(&self);
    /// Drive a level-triggered line high (`true`) or low (`false`).
    fn set_level(&self, high: bool);
}

/// What a device may ask of the whole VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest asked for a reset (i8042 pulse, reset register).
    Reset,
    /// The guest entered ACPI S5 or wrote a shutdown port.
    PowerOff,
}

/// Receiver of [`VmEvent`]s; the VM stops its vCPUs and acts on them.
pub trait VmEvents: Send + Sync {
    fn request(&self, event: VmEvent);
}

/// Registration of KVM ioeventfds: a guest write to `addr` (any width)
/// signals `fd` inside the kernel, with no exit to this process. Devices
/// use it for doorbells such as virtio queue notifications.
pub trait IoEvents: Send + Sync {
    fn register(&self, fd: &vmm_sys_util::eventfd::EventFd, addr: u64) -> std::io::Result<()>;
    fn unregister(&self, fd: &vmm_sys_util::eventfd::EventFd, addr: u64) -> std::io::Result<()>;
}

/// Shared handles a device is built with.
pub type SharedIrq = Arc<dyn IrqLine>;
pub type SharedEvents = Arc<dyn VmEvents>;

/// The general registers a [`RegsDevice`] reads and writes, as the vCPU
/// had them at the exit. Only the low 32 bits matter to the backdoor; a
/// write zero-extends, as a 32-bit register write does on x86-64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
}

/// A port device whose protocol lives in the vCPU's registers, not only in
/// the I/O data: the VMware backdoor passes arguments in EBX..EDI and
/// returns results there. The vCPU loop hands it the registers at the
/// exit and writes them back if the device returns true.
pub trait RegsDevice: Send {
    /// `in` (or one chunk of `rep insb`) on `port`: fill `data`.
    fn io_in(&mut self, port: u16, data: &mut [u8], regs: &mut GuestRegs) -> bool;
    /// `out` (or one byte of `rep outsb`) on `port`.
    fn io_out(&mut self, port: u16, data: &[u8], regs: &mut GuestRegs) -> bool;
}
