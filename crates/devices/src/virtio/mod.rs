//! Virtio 1.2 devices and their PCI transport.
//!
//! A device ([`VirtioDevice`]) describes itself (type, features, queues,
//! configuration space) and, once the driver has set DRIVER_OK, gets its
//! queues and starts an I/O thread of its own: request processing never
//! runs on a vCPU thread, so a slow disk stalls no vCPU. The transport
//! ([`pci::VirtioPci`]) owns everything the driver programs (feature
//! negotiation, queue addresses, MSI-X vectors, status) and the way the
//! device signals the driver ([`Interrupt`]). The same devices will sit on
//! other transports, and the state a transport keeps apart from the I/O
//! threads is what a snapshot will have to save.

pub mod block;
pub mod chain;
pub mod net;
pub mod pci;
pub mod rng;
pub mod scsi;
#[cfg(test)]
mod test_ring;

use std::fmt;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Feature bits every modern device offers (virtio 1.2 section 6).
pub mod features {
    /// The device follows virtio 1.x (not legacy); required by our transport.
    pub const VERSION_1: u64 = 1 << 32;
    /// `used_event`/`avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Descriptors may point to indirect tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
}

/// Device status bits (virtio 1.2 section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// How a running device signals its driver; implemented by the transport.
pub trait Interrupt: Send + Sync {
    /// The device put buffers in the used ring of queue `queue`.
    fn signal_used(&self, queue: u16);
    /// The device's configuration space changed.
    fn signal_config(&self);
    /// The device hit an error it cannot recover from without a reset (a
    /// malformed queue): set DEVICE_NEEDS_RESET and tell the driver.
    fn needs_reset(&self);
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemory,
    /// Features the driver accepted (a subset of what was offered).
    pub acked_features: u64,
    /// The queues the driver enabled, each with the event the transport
    /// fires (ioeventfd or a notify write) when the driver kicks it.
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<dyn Interrupt>,
}

pub struct ActiveQueue {
    /// Index of the queue in the device's list.
    pub index: u16,
    pub queue: Queue,
    pub kick: EventFd,
}

#[derive(Debug)]
pub enum ActivateError {
    /// The driver did not enable a queue the device cannot work without.
    MissingQueue(u16),
    /// A host resource (thread, eventfd) could not be had.
    Host(String),
}

impl fmt::Display for ActivateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivateError::MissingQueue(q) => write!(f, "queue {q} was not enabled"),
            ActivateError::Host(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ActivateError {}

/// A virtio device model, free of transport details.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 for a block device; section 5).
    fn device_type(&self) -> u16;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// Read device-specific configuration space at `offset`. Bytes past the
    /// end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device-specific configuration space; most devices ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start processing the queues.
    fn activate(&mut self, act: Activation) -> Result<(), ActivateError>;
    /// Stop processing and forget the queues: the driver reset the device.
    /// Returns only once no I/O thread touches guest memory any more.
    fn reset(&mut self);
    /// A short description for logs and status (e.g. the image path).
    fn describe(&self) -> String;
}

/// Copies the bytes of `config` at `offset` into `data`, zero past its end:
/// device configuration space reads as most devices implement them.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
        *b = at.and_then(|a| config.get(a)).copied().unwrap_or(0);
    }
}
