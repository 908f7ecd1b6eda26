//! virtio-net (virtio 1.2 section 5.1) on a tap: one RX and one TX queue
//! served by an I/O thread of its own.
//!
//! Offered: MAC (set by the VMM: from `lladdr`, or stable per VM and
//! interface), MTU, STATUS (the link is up), MRG_RXBUF, EVENT_IDX and
//! indirect descriptors; and on a tap with a vnet header (`tap`), the
//! checksum and TCP segmentation offloads both ways (`hdr::OFFLOADS`:
//! CSUM, GUEST_CSUM, HOST_/GUEST_TSO4, TSO6 and ECN). The guest's
//! `virtio_net_hdr_v1` then passes through the tap unchanged, and once
//! the driver has accepted its features the tap is told (TUNSETOFFLOAD)
//! which frames the guest takes unfinished, so the kernel hands it no
//! partial checksum or unsegmented frame it did not agree to. On a tap
//! without a vnet header no offload is offered and every frame is a
//! finished Ethernet frame.
//!
//! MRG_RXBUF: with TSO a received frame may reach 64 KiB. Without merged
//! buffers the driver must post buffers that big for every frame (Linux
//! posts ~64 KiB chains of pages then, for 60-byte ACKs too); with them it
//! posts small buffers (Linux: sized to the recent frames) and the device
//! spreads a big frame over as many as it takes, telling the driver how
//! many in `num_buffers`.
//!
//! What the device enforces on the guest's frames (`filter`, `hdr`): a
//! frame whose header asks for what the driver did not negotiate, or
//! shorter than an Ethernet header, or longer than the MTU allows (64 KiB
//! for a GSO frame, whose segments must each fit the MTU) is dropped, and on a locked interface (`locked
//! lladdr` in vm.conf) so is one whose source MAC is not the interface's;
//! each is counted. The checks read the Ethernet frame behind the header,
//! copied out of guest memory first, so what is checked is what is sent. On a local interface the VM process answers the guest's DHCP
//! itself (`netcfg::dhcp`), and those frames never reach the tap.
//!
//! UDP datagrams of one flow that the guest queued back to back go to a
//! tap that takes UDP GSO frames (Linux 6.2 and later) merged into one
//! (`coalesce`): the kernel runs its receive path once for them and cuts
//! them back into the guest's datagrams, bit for bit.

mod coalesce;
pub mod filter;
pub mod hdr;
mod poll;
pub mod tap;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::threads::{self, ThreadKind};

use super::{features, read_config_bytes, ActivateError, Activation, VirtioDevice};
use tap::Tap;
use worker::Worker;

/// Virtio device type of a network device.
pub const VIRTIO_ID_NET: u16 = 1;

const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
pub(crate) const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;

/// `virtio_net_hdr_v1`: 12 bytes in virtio 1.x, with `num_buffers`.
pub const NET_HDR_LEN: usize = 12;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The MTU offered (and enforced on what the guest sends).
pub const DEFAULT_MTU: u16 = 1500;
const STATUS_LINK_UP: u16 = 1;

/// Counters the I/O thread keeps.
#[derive(Default, Debug)]
pub struct NetStats {
    pub tx_frames: AtomicU64,
    pub rx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames the guest sent that the device dropped: a bad header, too
    /// short or long, a spoofed source MAC on a locked interface, or
    /// refused by the tap.
    pub tx_dropped: AtomicU64,
    /// Of those: a spoofed source MAC.
    pub tx_spoofed: AtomicU64,
    /// Of those: a header asking for an offload the driver did not
    /// negotiate (or another flag it must not set).
    pub tx_bad_hdr: AtomicU64,
    /// Frames from the tap dropped because the guest's buffer was too
    /// small or broken, or because the guest did not accept the frame's
    /// segmentation.
    pub rx_dropped: AtomicU64,
    /// Frames sent and received unsegmented (TSO).
    pub tx_gso: AtomicU64,
    /// Of the guest's datagrams sent: those merged with others into one
    /// UDP GSO frame for the tap (`coalesce`).
    pub tx_merged: AtomicU64,
    pub rx_gso: AtomicU64,
    pub dhcp_replies: AtomicU64,
    /// The TUN_F_* offloads the tap has now: what the driver accepted for
    /// its receive side.
    pub offloads: AtomicU32,
}

/// How one interface is set up.
pub struct NetConfig {
    pub mac: [u8; 6],
    pub mtu: u16,
    /// Drop frames whose source MAC is not `mac`.
    pub locked: bool,
    /// A local interface's DHCP server, which answers the guest here.
    pub dhcp: Option<netcfg::dhcp::DhcpServer>,
}

enum State {
    Idle(Box<Worker>),
    Running {
        stop: EventFd,
        thread: JoinHandle<Box<Worker>>,
    },
    Lost,
}

pub struct Net {
    state: State,
    config: Vec<u8>,
    features: u64,
    name: String,
    stats: Arc<NetStats>,
}

impl Net {
    pub fn new(tap: Tap, cfg: NetConfig, name: String) -> Net {
        // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
        let mut config = vec![0u8; 12];
        config[0..6].copy_from_slice(&cfg.mac);
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&cfg.mtu.to_le_bytes());
        let stats = Arc::new(NetStats::default());
        let offloads = if tap.vnet_hdr() { hdr::OFFLOADS } else { 0 };
        let worker = Worker::new(tap, cfg, stats.clone(), name.clone());
        Net {
            state: State::Idle(Box::new(worker)),
            config,
            features: features::RING_EVENT_IDX
                | features::RING_INDIRECT_DESC
                | F_MAC
                | F_MTU
                | F_STATUS
                | F_MRG_RXBUF
                | offloads,
            name,
            stats,
        }
    }

    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// Polls the TX ring for `window` after every delivery (not adapting
    /// it); only before activation.
    #[cfg(test)]
    fn poll_fixed(&mut self, window: std::time::Duration) {
        if let State::Idle(w) = &mut self.state {
            w.poll_fixed(window);
        }
    }
}

/// Runs the I/O thread's passes over `rx` and `tx` as they stand, as
/// after a kick of each: a TX pass, an RX pass (the tap's frames, the
/// DHCP server's answers), and the same again, without a thread or epoll.
/// `tap` is usually one end of [`Tap::socket_pair`]. Returns whether the
/// queues are still usable (false: the device asked for a reset), the
/// tap, and the counters. For the fuzz target (`fuzz/`); not an
/// interface for devices.
#[doc(hidden)]
pub fn fuzz_process(
    mem: &super::GuestMemory,
    rx: &mut virtio_queue::Queue,
    tx: &mut virtio_queue::Queue,
    acked_features: u64,
    tap: Tap,
    cfg: NetConfig,
    interrupt: Arc<dyn super::Interrupt>,
) -> (bool, Tap, Arc<NetStats>) {
    let stats = Arc::new(NetStats::default());
    let mut worker = Worker::new(tap, cfg, stats.clone(), "fuzz".into());
    let eventfd = || EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    worker.start(
        mem.clone(),
        acked_features,
        super::ActiveQueue {
            index: 0,
            queue: std::mem::take(rx),
            kick: eventfd(),
        },
        super::ActiveQueue {
            index: 1,
            queue: std::mem::take(tx),
            kick: eventfd(),
        },
        eventfd(),
        interrupt,
    );
    for _ in 0..2 {
        worker.tx_pass();
        worker.rx_pass();
    }
    let ok = !worker.is_broken();
    let (r, t, tap) = worker.into_parts();
    *rx = r;
    *tx = t;
    (ok, tap, stats)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is the VMM's to choose (VIRTIO_NET_F_CTRL_MAC_ADDR is not
        // offered); nothing else is writable.
    }

    fn activate(&mut self, act: Activation) -> Result<(), ActivateError> {
        let mut rx = None;
        let mut tx = None;
        for q in act.queues {
            match q.index {
                0 => rx = Some(q),
                1 => tx = Some(q),
                _ => {}
            }
        }
        let rx = rx.ok_or(ActivateError::MissingQueue(0))?;
        let tx = tx.ok_or(ActivateError::MissingQueue(1))?;
        let mut worker = match std::mem::replace(&mut self.state, State::Lost) {
            State::Idle(w) => w,
            other => {
                self.state = other;
                return Err(ActivateError::Host("device already running".into()));
            }
        };
        let host = |e: std::io::Error| ActivateError::Host(e.to_string());
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(host)?;
        worker.start(
            act.mem,
            act.acked_features,
            rx,
            tx,
            stop.try_clone().map_err(host)?,
            act.interrupt,
        );
        let thread = threads::spawn(ThreadKind::Net, "virtio-net", move || {
            worker.run();
            worker
        })
        .map_err(host)?;
        self.state = State::Running { stop, thread };
        Ok(())
    }

    fn reset(&mut self) {
        match std::mem::replace(&mut self.state, State::Lost) {
            State::Running { stop, thread } => {
                let _ = stop.write(1);
                match thread.join() {
                    Ok(mut w) => {
                        w.stop();
                        self.state = State::Idle(w);
                    }
                    Err(_) => log::error!("{}: I/O thread died; interface lost", self.name),
                }
            }
            other => self.state = other,
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
