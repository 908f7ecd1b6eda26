//! The network device's I/O thread: frames from the TX queue to the tap
//! (or to the built-in DHCP server), frames from the tap (and the DHCP
//! server's answers) into the RX queue's buffers.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, Permissions};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::filter::{check_tx, Verdict};
use super::tap::Tap;
use super::{NetConfig, NetStats, F_MRG_RXBUF, NET_HDR_LEN};
use crate::virtio::{ActiveQueue, GuestMemory, Interrupt};

const TOKEN_RX_KICK: u64 = 0;
const TOKEN_TX_KICK: u64 = 1;
const TOKEN_TAP: u64 = 2;
const TOKEN_STOP: u64 = 3;

/// Frames one TX pass sends before the thread looks at its other events
/// (and kicks itself to come back): a guest flooding its TX queue cannot
/// starve its RX queue or keep a reset waiting.
const TX_BATCH: usize = 256;
/// Frames one RX pass takes from the tap, for the same reason.
const RX_BATCH: usize = 256;
/// Frames waiting for RX buffers (DHCP answers, the one frame read from
/// the tap when the guest had no room); beyond it new ones are dropped.
const MAX_PENDING: usize = 64;
/// Largest frame a tap hands us (64 KiB with GSO, which we do not enable;
/// plain frames are MTU-sized).
const MAX_FRAME: usize = 65536;

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    stop: EventFd,
    interrupt: Arc<dyn Interrupt>,
    mrg_rxbuf: bool,
}

pub struct Worker {
    tap: Tap,
    cfg: NetConfig,
    stats: Arc<NetStats>,
    name: String,
    active: Option<Active>,
    pending: VecDeque<Vec<u8>>,
    /// Whether the tap is in the epoll set's interest (not while the guest
    /// has no RX buffers).
    tap_watched: bool,
}

impl Worker {
    pub fn new(tap: Tap, cfg: NetConfig, stats: Arc<NetStats>, name: String) -> Worker {
        Worker {
            tap,
            cfg,
            stats,
            name,
            active: None,
            pending: VecDeque::new(),
            tap_watched: true,
        }
    }

    pub fn start(
        &mut self,
        mem: GuestMemory,
        acked: u64,
        rx: ActiveQueue,
        tx: ActiveQueue,
        stop: EventFd,
        interrupt: Arc<dyn Interrupt>,
    ) {
        self.active = Some(Active {
            mem,
            rx: rx.queue,
            tx: tx.queue,
            rx_kick: rx.kick,
            tx_kick: tx.kick,
            stop,
            interrupt,
            mrg_rxbuf: acked & F_MRG_RXBUF != 0,
        });
        self.tap_watched = true;
    }

    /// The driver reset the device: forget the queues and what waited.
    pub fn stop(&mut self) {
        self.active = None;
        self.pending.clear();
    }

    pub fn run(&mut self) {
        let Some(a) = self.active.as_ref() else {
            return;
        };
        use std::os::unix::io::AsRawFd;
        let epoll = match Epoll::new().and_then(|ep| {
            for (fd, token) in [
                (a.rx_kick.as_raw_fd(), TOKEN_RX_KICK),
                (a.tx_kick.as_raw_fd(), TOKEN_TX_KICK),
                (self.tap.fd(), TOKEN_TAP),
                (a.stop.as_raw_fd(), TOKEN_STOP),
            ] {
                ep.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )?;
            }
            Ok(ep)
        }) {
            Ok(e) => e,
            Err(e) => {
                log::error!("{}: epoll: {e}", self.name);
                a.interrupt.needs_reset();
                return;
            }
        };
        let mut events = [EpollEvent::default(); 4];
        // Kicks may have come before the thread started.
        self.tx_pass();
        self.rx_pass(&epoll);
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("{}: epoll_wait: {e}", self.name);
                    return;
                }
            };
            let (mut rx, mut tx) = (false, false);
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return,
                    TOKEN_TX_KICK => tx = true,
                    TOKEN_RX_KICK => rx = true,
                    _ => rx = true, // the tap has frames
                }
            }
            let Some(a) = self.active.as_ref() else {
                return;
            };
            if tx {
                let _ = a.tx_kick.read();
                self.tx_pass();
            }
            if rx {
                if let Some(a) = self.active.as_ref() {
                    let _ = a.rx_kick.read();
                }
                self.rx_pass(&epoll);
            } else if !self.pending.is_empty() {
                // DHCP answers the TX pass produced.
                self.rx_pass(&epoll);
            }
        }
    }

    /// Sends what the guest queued, at most [`TX_BATCH`] frames.
    fn tx_pass(&mut self) {
        let mut frame = vec![0u8; NET_HDR_LEN + MAX_FRAME];
        let mut sent = 0;
        loop {
            let Some(a) = self.active.as_mut() else {
                return;
            };
            if let Err(e) = a.tx.disable_notification(&a.mem) {
                return broken(&self.name, a, &e.to_string());
            }
            loop {
                let Some(a) = self.active.as_mut() else {
                    return;
                };
                let mem = a.mem.clone();
                let chain = match a.tx.iter(&mem) {
                    Ok(mut it) => it.next(),
                    Err(e) => return broken(&self.name, a, &e.to_string()),
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let len = gather(&mem, chain, &mut frame);
                if let Some(len) = len.filter(|&l| l >= NET_HDR_LEN) {
                    self.send(&frame[NET_HDR_LEN..len]);
                } else {
                    self.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                }
                let Some(a) = self.active.as_mut() else {
                    return;
                };
                if let Err(e) = a.tx.add_used(&a.mem, head, 0) {
                    return broken(&self.name, a, &e.to_string());
                }
                sent += 1;
                if sent >= TX_BATCH {
                    // Come back through the event loop.
                    let _ = a.tx_kick.write(1);
                    break;
                }
            }
            let Some(a) = self.active.as_mut() else {
                return;
            };
            if sent >= TX_BATCH {
                break;
            }
            match a.tx.enable_notification(&a.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => return broken(&self.name, a, &e.to_string()),
            }
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if sent > 0 {
            match a.tx.needs_notification(&a.mem) {
                Ok(true) => a.interrupt.signal_used(1),
                Ok(false) => {}
                Err(e) => broken(&self.name, a, &e.to_string()),
            }
        }
    }

    /// One frame from the guest: checked, then answered by the DHCP
    /// server or written to the tap.
    fn send(&mut self, frame: &[u8]) {
        match check_tx(frame, self.cfg.mtu, &self.cfg.mac, self.cfg.locked) {
            Verdict::Pass => {}
            Verdict::Spoofed => {
                self.stats.tx_spoofed.fetch_add(1, Ordering::Relaxed);
                self.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Runt | Verdict::Giant => {
                self.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Some(dhcp) = self.cfg.dhcp.as_mut() {
            if let Some(reply) = dhcp.handle(frame) {
                self.stats.dhcp_replies.fetch_add(1, Ordering::Relaxed);
                if self.pending.len() < MAX_PENDING {
                    self.pending.push_back(reply);
                }
                return;
            }
        }
        match self.tap.write_frame(frame) {
            Ok(()) => {
                self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .tx_bytes
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
            // The tap's queue is full, or its link is down: a dropped
            // frame, as on a wire.
            Err(_) => {
                self.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Moves frames (pending ones first, then the tap's) into the guest's
    /// RX buffers until either runs out, at most [`RX_BATCH`].
    fn rx_pass(&mut self, epoll: &Epoll) {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut delivered = 0;
        let mut no_room = false;
        for _ in 0..RX_BATCH {
            let frame = match self.pending.pop_front() {
                Some(f) => f,
                None => match self.tap.read_frame(&mut buf) {
                    Ok(n) => buf[..n].to_vec(),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::warn!("{}: tap read: {e}", self.name);
                        break;
                    }
                },
            };
            match self.deliver(&frame) {
                Some(true) => delivered += 1,
                Some(false) => {
                    // No room: keep it for the next RX kick.
                    self.pending.push_front(frame);
                    no_room = true;
                    break;
                }
                None => return, // queue broken
            }
        }
        // While the guest has no buffers, the tap's frames wait in the
        // tap's own queue (and are dropped there if it overflows), not in
        // a loop here.
        let watch = !no_room;
        if watch != self.tap_watched {
            let ev = if watch {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            if epoll
                .ctl(
                    ControlOperation::Modify,
                    self.tap.fd(),
                    EpollEvent::new(ev, TOKEN_TAP),
                )
                .is_ok()
            {
                self.tap_watched = watch;
            }
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if delivered > 0 {
            match a.rx.needs_notification(&a.mem) {
                Ok(true) => a.interrupt.signal_used(0),
                Ok(false) => {}
                Err(e) => broken(&self.name, a, &e.to_string()),
            }
        }
        if delivered == RX_BATCH {
            // More may wait; come back after the other events.
            let _ = a.rx_kick.write(1);
        }
    }

    /// Writes header + `frame` into RX buffers: Some(true) done,
    /// Some(false) not enough buffers (nothing consumed), None broken.
    fn deliver(&mut self, frame: &[u8]) -> Option<bool> {
        let a = self.active.as_mut()?;
        let total = NET_HDR_LEN + frame.len();
        let start = a.rx.next_avail();
        let mut used: Vec<(u16, u32)> = Vec::new();
        let mut written = 0usize;
        let mut first_hdr: Option<GuestAddress> = None;
        while written < total {
            let mem = a.mem.clone();
            let chain = match a.rx.iter(&mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    broken(&self.name, a, &e.to_string());
                    return None;
                }
            };
            let Some(chain) = chain else {
                // Not enough room: give the buffers back untouched.
                a.rx.set_next_avail(start);
                if a.rx.enable_notification(&a.mem).unwrap_or(false) {
                    // Buffers came meanwhile: try again at the next kick
                    // we give ourselves.
                    let _ = a.rx_kick.write(1);
                }
                return Some(false);
            };
            let head = chain.head_index();
            let mut n = 0u32;
            for d in chain.writable() {
                if written >= total {
                    break;
                }
                let Some((addr, len)) = checked(&mem, &d) else {
                    continue;
                };
                let take = (len as usize).min(total - written);
                let ok = if written < NET_HDR_LEN {
                    // The header (zero but for num_buffers) then data.
                    let mut tmp = vec![0u8; take];
                    for (i, b) in tmp.iter_mut().enumerate() {
                        let at = written + i;
                        *b = if at < NET_HDR_LEN {
                            0
                        } else {
                            frame[at - NET_HDR_LEN]
                        };
                    }
                    if first_hdr.is_none() {
                        first_hdr = Some(addr);
                    }
                    mem.write_slice(&tmp, addr).is_ok()
                } else {
                    mem.write_slice(
                        &frame[written - NET_HDR_LEN..written - NET_HDR_LEN + take],
                        addr,
                    )
                    .is_ok()
                };
                if !ok {
                    break;
                }
                written += take;
                n += take as u32;
            }
            used.push((head, n));
            if !a.mrg_rxbuf && written < total {
                // Without merged buffers a frame takes one buffer: too
                // small a buffer loses the frame, as on hardware.
                break;
            }
        }
        if written < total {
            // Unmergeable and too small: complete the buffer empty.
            self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            // num_buffers (bytes 10-11 of the header), which the header's
            // first buffer holds whole (a driver's buffers are >= 12 bytes
            // in practice; if not, the count is simply not written).
            if let Some(h) = first_hdr {
                let _ = a
                    .mem
                    .write_obj((used.len() as u16).to_le(), h.unchecked_add_usize(10));
            }
            self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
            self.stats
                .rx_bytes
                .fetch_add(frame.len() as u64, Ordering::Relaxed);
        }
        for (head, n) in used {
            if let Err(e) = a.rx.add_used(&a.mem, head, n) {
                broken(&self.name, a, &e.to_string());
                return None;
            }
        }
        Some(true)
    }
}

/// A queue the driver broke: the driver is told through
/// DEVICE_NEEDS_RESET; the device stops using it.
fn broken(name: &str, a: &Active, why: &str) {
    log::warn!("{name}: queue broken ({why}); device needs reset");
    a.interrupt.needs_reset();
}

trait AddUsize {
    fn unchecked_add_usize(self, n: usize) -> GuestAddress;
}

impl AddUsize for GuestAddress {
    fn unchecked_add_usize(self, n: usize) -> GuestAddress {
        GuestAddress(self.0.wrapping_add(n as u64))
    }
}

/// A descriptor's range if it lies in guest RAM.
fn checked(mem: &GuestMemory, d: &Descriptor) -> Option<(GuestAddress, u32)> {
    let addr = GuestAddress(d.addr().0);
    let perm = if d.is_write_only() {
        Permissions::Write
    } else {
        Permissions::Read
    };
    (d.len() > 0 && mem.check_range(addr, d.len() as usize, perm)).then_some((addr, d.len()))
}

/// Copies the readable part of a TX chain into `out`; its length, or None
/// if it does not fit or points outside guest RAM.
fn gather(
    mem: &GuestMemory,
    chain: virtio_queue::DescriptorChain<&GuestMemory>,
    out: &mut [u8],
) -> Option<usize> {
    let mut len = 0usize;
    for d in chain.readable() {
        let (addr, n) = checked(mem, &d)?;
        let n = n as usize;
        if len + n > out.len() {
            return None;
        }
        mem.read_slice(&mut out[len..len + n], addr).ok()?;
        len += n;
    }
    Some(len)
}
