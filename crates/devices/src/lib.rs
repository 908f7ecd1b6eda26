//! Device models for the VM process, one file per device.
//!
//! Devices never touch KVM directly: they see port or MMIO accesses through
//! [`BusDevice`], raise interrupts through [`IrqLine`], and ask for VM-wide
//! actions (reset, power-off) through [`VmEvents`]. The `vm` crate wires
//! these to KVM, which keeps device logic testable without `/dev/kvm`.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod pci_host;
pub mod rtc;
pub mod serial;

#[cfg(test)]
mod testutil;

pub use acpi_pm::AcpiPm;
pub use bus::{Bus, BusDevice, BusError};
pub use i8042::I8042;
pub use pci_host::{PciDevice, PciHost, PciRoot};
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

/// Shared handles a device is built with.
pub type SharedIrq = Arc<dyn IrqLine>;
pub type SharedEvents = Arc<dyn VmEvents>;
