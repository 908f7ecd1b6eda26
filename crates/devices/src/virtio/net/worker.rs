//! The network device's I/O thread: frames from the TX queue to the tap
//! (or to the built-in DHCP server), frames from the tap (and the DHCP
//! server's answers) into the RX queue's buffers.
//!
//! Notifications (virtio 1.2 section 2.7.7/2.7.10): with EVENT_IDX the
//! device asks for a kick only when it needs one — on TX once it has
//! taken everything available (`avail_event` = the next chain it will
//! look at), on RX only once the driver's buffers ran out while a frame
//! waited (`avail_event` past every buffer it looked at), so a driver
//! refilling RX buffers while frames flow does so without a VM exit; and
//! it interrupts only when `used_event` says so. Without EVENT_IDX the
//! same is done with the used ring's NO_NOTIFY flag and the avail ring's
//! NO_INTERRUPT flag.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::coalesce::{self, UdpRun};
use super::filter::{check_gso, check_tx, Verdict, MAX_GSO_FRAME};
use super::hdr::{self, Hdr};
use super::poll::TxPoll;
use super::tap::Tap;
use super::{NetConfig, NetStats, F_MRG_RXBUF, NET_HDR_LEN};
use crate::virtio::chain::{self, Segment};
use crate::virtio::{features, ActiveQueue, GuestMemory, Interrupt};

const TOKEN_RX_KICK: u64 = 0;
const TOKEN_TX_KICK: u64 = 1;
const TOKEN_TAP: u64 = 2;
const TOKEN_STOP: u64 = 3;

/// Frames one TX pass sends before the thread looks at its other events
/// (and kicks itself to come back): a guest flooding its TX queue cannot
/// starve its RX queue or keep a reset waiting.
const TX_BATCH: usize = 256;
/// Frames one RX pass takes from the tap (or tries to place), for the
/// same reason.
const RX_BATCH: usize = 256;
/// Frames waiting for RX buffers (DHCP answers, the one frame read from
/// the tap when the guest had no room); beyond it new answers are dropped.
const MAX_PENDING: usize = 64;
/// What one read from the tap may return: a GSO frame of up to 64 KiB of
/// IP datagram with its link headers, behind the vnet header (a frame
/// the buffer cannot hold would be cut short).
const RX_BUF: usize = NET_HDR_LEN + 65536 + 256;
/// The longest chain the guest may send: the header and a GSO frame.
const TX_BUF: usize = NET_HDR_LEN + MAX_GSO_FRAME;

type QueueError = virtio_queue::Error;

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    stop: EventFd,
    interrupt: Arc<dyn Interrupt>,
    /// The features the driver accepted.
    acked: u64,
    mrg_rxbuf: bool,
    event_idx: bool,
    /// The driver broke a queue: the device touches neither until reset.
    broken: bool,
}

impl Active {
    /// A queue the driver broke: the driver is told through
    /// DEVICE_NEEDS_RESET; the device stops using its queues.
    fn broken(&mut self, name: &str, e: &QueueError) {
        log::warn!("{name}: queue broken ({e}); device needs reset");
        self.broken = true;
        self.interrupt.needs_reset();
    }
}

pub struct Worker {
    tap: Tap,
    cfg: NetConfig,
    stats: Arc<NetStats>,
    name: String,
    active: Option<Active>,
    /// Frames for the guest, each behind its (final but for num_buffers)
    /// virtio header.
    pending: VecDeque<Vec<u8>>,
    /// Whether the tap is in the epoll set's interest (not while the guest
    /// has no RX buffers).
    tap_watched: bool,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    /// The guest's UDP datagrams being merged for the tap, on a tap that
    /// takes UDP GSO frames (`coalesce`).
    run: Option<UdpRun>,
    /// How long to poll the TX ring for the guest's answer to what it was
    /// given (`poll`).
    tx_poll: TxPoll,
}

/// What became of a frame offered to the RX queue.
enum Placed {
    /// Taken: delivered, or lost to buffers too small or broken.
    Taken,
    /// Not enough buffers; nothing consumed. `more`: buffers came while
    /// the device asked to be told of new ones (try again now).
    NoRoom { more: bool },
}

/// What one read from the tap gave.
enum TapRead {
    /// A frame the guest may take, `n` bytes with its header in `rx_buf`.
    Frame(usize),
    /// A frame the guest may not take (counted).
    Dropped,
    /// Nothing waiting.
    Empty,
}

impl Worker {
    pub fn new(tap: Tap, cfg: NetConfig, stats: Arc<NetStats>, name: String) -> Worker {
        Worker {
            run: tap.udp_gso().then(UdpRun::new),
            tap,
            cfg,
            stats,
            name,
            active: None,
            pending: VecDeque::new(),
            tap_watched: true,
            tx_buf: vec![0; TX_BUF],
            rx_buf: vec![0; RX_BUF],
            tx_poll: TxPoll::default(),
        }
    }

    /// The driver set DRIVER_OK (after FEATURES_OK): the tap's offloads
    /// are set to what the driver accepted for its receive side, then the
    /// queues are the thread's.
    pub fn start(
        &mut self,
        mem: GuestMemory,
        acked: u64,
        rx: ActiveQueue,
        tx: ActiveQueue,
        stop: EventFd,
        interrupt: Arc<dyn Interrupt>,
    ) {
        if self.tap.vnet_hdr() {
            let want = hdr::tap_offloads(acked);
            if let Err(e) = self.tap.set_offloads(want) {
                // The tap keeps handing over finished frames only.
                log::warn!("{}: TUNSETOFFLOAD {want:#x}: {e}", self.name);
            }
            self.stats
                .offloads
                .store(self.tap.offloads(), Ordering::Relaxed);
        }
        self.active = Some(Active {
            mem,
            rx: rx.queue,
            tx: tx.queue,
            rx_kick: rx.kick,
            tx_kick: tx.kick,
            stop,
            interrupt,
            acked,
            mrg_rxbuf: acked & F_MRG_RXBUF != 0,
            event_idx: acked & features::RING_EVENT_IDX != 0,
            broken: false,
        });
        self.tap_watched = true;
    }

    /// The driver reset the device: forget the queues and what waited,
    /// and take the offloads back (the next driver may accept fewer).
    pub fn stop(&mut self) {
        self.active = None;
        self.pending.clear();
        if self.tap.offloads() != 0 {
            if let Err(e) = self.tap.set_offloads(0) {
                log::warn!("{}: TUNSETOFFLOAD 0: {e}", self.name);
            }
            self.stats
                .offloads
                .store(self.tap.offloads(), Ordering::Relaxed);
        }
    }

    /// Whether the driver broke a queue (the device then waits for a
    /// reset).
    pub fn is_broken(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.broken)
    }

    /// The queues (default ones if never started) and the tap, for the
    /// fuzz hook.
    pub fn into_parts(mut self) -> (Queue, Queue, Tap) {
        let (rx, tx) = match self.active.take() {
            Some(a) => (a.rx, a.tx),
            None => (Queue::default(), Queue::default()),
        };
        (rx, tx, self.tap)
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
        let (watch, _) = self.rx_pass();
        self.watch_tap(&epoll, watch);
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
                    TOKEN_RX_KICK => {
                        if let Some(a) = self.active.as_ref() {
                            let _ = a.rx_kick.read();
                        }
                        rx = true;
                    }
                    _ => rx = true, // the tap has frames
                }
            }
            if tx {
                if let Some(a) = self.active.as_ref() {
                    let _ = a.tx_kick.read();
                }
                if self.tx_pass() > 0 {
                    self.tx_poll.kicked(Instant::now());
                }
            }
            // After a TX pass: the DHCP answers it produced.
            if rx || !self.pending.is_empty() {
                let (watch, delivered) = self.rx_pass();
                self.watch_tap(&epoll, watch);
                if delivered > 0 {
                    let window = self.tx_poll.delivered(Instant::now());
                    if !window.is_zero() && self.poll_tx(window) {
                        self.tx_poll.answered();
                    }
                }
            }
        }
    }

    /// Adds the tap to or takes it out of the epoll set's interest: while
    /// the guest has no buffers the tap's frames wait in the tap's own
    /// queue (and are dropped there if it overflows), not in a loop here.
    fn watch_tap(&mut self, epoll: &Epoll, watch: bool) {
        if watch == self.tap_watched {
            return;
        }
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

    /// Sends what the guest queued, at most [`TX_BATCH`] frames; how many
    /// chains it completed.
    pub(super) fn tx_pass(&mut self) -> usize {
        let Some(mut a) = self.active.take() else {
            return 0;
        };
        let mut sent = 0;
        if !a.broken {
            let mut buf = std::mem::take(&mut self.tx_buf);
            let r = self.tx_chains(&mut a, &mut buf);
            self.tx_buf = buf;
            // What the pass merged goes now: a pass waits for nothing.
            self.flush_run();
            match r {
                Ok(0) => {}
                Ok(n) => {
                    sent = n;
                    match should_signal(&mut a.tx, &a.mem, a.event_idx) {
                        Ok(true) => a.interrupt.signal_used(1),
                        Ok(false) => {}
                        Err(e) => a.broken(&self.name, &e),
                    }
                }
                Err(e) => a.broken(&self.name, &e),
            }
        }
        self.active = Some(a);
        sent
    }

    #[cfg(test)]
    pub(super) fn poll_fixed(&mut self, window: Duration) {
        self.tx_poll = TxPoll::fixed(window);
    }

    /// Polls the TX ring for up to `window`, the guest asked not to kick
    /// meanwhile, then sends what came (the TX pass asks for kicks again
    /// and looks once more); whether anything came.
    fn poll_tx(&mut self, window: Duration) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        if a.broken || suppress_tx_kicks(a).is_err() {
            return false;
        }
        let start = Instant::now();
        let came = loop {
            match a.tx.avail_idx(&a.mem, Ordering::Acquire) {
                Ok(i) if i.0 != a.tx.next_avail() => break true,
                Ok(_) if start.elapsed() < window => std::hint::spin_loop(),
                // Nothing, or a ring outside RAM (for the pass to report).
                _ => break false,
            }
        };
        self.tx_pass();
        came
    }

    /// The TX loop; how many chains it completed.
    fn tx_chains(&mut self, a: &mut Active, buf: &mut [u8]) -> Result<usize, QueueError> {
        let mut sent = 0;
        let mut idle_rounds = 0;
        loop {
            a.tx.disable_notification(&a.mem)?;
            let before = sent;
            while sent < TX_BATCH {
                let Some(chain) = a.tx.iter(&a.mem)?.next() else {
                    break;
                };
                let head = chain.head_index();
                match gather(&a.mem, chain, buf) {
                    Some(n) => self.send(a.acked, &buf[..n]),
                    None => {
                        self.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                a.tx.add_used(&a.mem, head, 0)?;
                sent += 1;
            }
            if sent >= TX_BATCH {
                // Come back through the event loop.
                let _ = a.tx_kick.write(1);
                return Ok(sent);
            }
            // A driver whose rings overlap can make the device's own
            // flag writes look like new work: two empty rounds in a row
            // and the device waits for a kick instead.
            idle_rounds = if sent == before { idle_rounds + 1 } else { 0 };
            if idle_rounds >= 2 || !a.tx.enable_notification(&a.mem)? {
                return Ok(sent);
            }
        }
    }

    /// One chain from the guest (header and frame): checked, then answered
    /// by the DHCP server or written to the tap.
    fn send(&mut self, acked: u64, buf: &[u8]) {
        let stats = &*self.stats;
        let dropped = |why: Option<&AtomicU64>| {
            if let Some(c) = why {
                c.fetch_add(1, Ordering::Relaxed);
            }
            stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
        };
        let Some((h, frame)) = buf.split_first_chunk::<NET_HDR_LEN>() else {
            return dropped(None);
        };
        let hd = Hdr::parse(h);
        let Ok(gso) = hdr::check_tx(&hd, acked) else {
            return dropped(Some(&stats.tx_bad_hdr));
        };
        let mut verdict = check_tx(frame, gso, self.cfg.mtu, &self.cfg.mac, self.cfg.locked);
        if gso && verdict == Verdict::Pass {
            let v6 = hd.gso_type & !hdr::GSO_ECN == hdr::GSO_TCPV6;
            verdict = check_gso(frame, hd.csum_start, hd.gso_size, v6, self.cfg.mtu);
        }
        match verdict {
            Verdict::Pass => {}
            Verdict::Spoofed => return dropped(Some(&stats.tx_spoofed)),
            Verdict::Runt | Verdict::Giant => return dropped(None),
        }
        if !gso {
            if let Some(reply) = self.cfg.dhcp.as_mut().and_then(|d| d.handle(frame)) {
                stats.dhcp_replies.fetch_add(1, Ordering::Relaxed);
                if self.pending.len() < MAX_PENDING {
                    let mut p = vec![0u8; NET_HDR_LEN];
                    p.extend_from_slice(&reply);
                    self.pending.push_back(p);
                }
                return;
            }
        }
        // A datagram a run can take joins it, or starts the next once the
        // run is sent; anything else goes after the run.
        match self.run.as_ref().and_then(|_| coalesce::check(&hd, frame)) {
            Some(d) => {
                if self.run.as_mut().is_some_and(|r| r.push(h, frame, d)) {
                    return;
                }
                flush_run(&mut self.run, &self.tap, stats, &self.name);
                // An empty run takes any datagram.
                if let Some(r) = self.run.as_mut() {
                    r.push(h, frame, d);
                    return;
                }
            }
            None => flush_run(&mut self.run, &self.tap, stats, &self.name),
        }
        // On a vnet-header tap the guest's header goes along unchanged
        // (num_buffers means nothing on TX and the kernel skips it). The
        // frame was copied out of guest memory before the checks: what
        // was checked is what is sent.
        let out = if self.tap.vnet_hdr() { buf } else { frame };
        match self.tap.write_frame(out) {
            Ok(()) => {
                stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                stats
                    .tx_bytes
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                if gso {
                    stats.tx_gso.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The tap's queue is full, its link is down, or the kernel
            // refused the header: a dropped frame, as on a wire.
            Err(_) => dropped(None),
        }
    }

    /// Writes the datagrams merged so far to the tap.
    fn flush_run(&mut self) {
        flush_run(&mut self.run, &self.tap, &self.stats, &self.name);
    }

    /// Moves frames (pending ones first, then the tap's) into the guest's
    /// RX buffers until either runs out, at most [`RX_BATCH`] tries.
    /// Whether to keep watching the tap (not when the guest ran out of
    /// buffers, or broke its queues), and how many frames it delivered.
    pub(super) fn rx_pass(&mut self) -> (bool, usize) {
        let Some(mut a) = self.active.take() else {
            return (false, 0);
        };
        let (mut watch, mut placed) = (false, 0);
        if !a.broken {
            let mut buf = std::mem::take(&mut self.rx_buf);
            let r = self.rx_frames(&mut a, &mut buf);
            self.rx_buf = buf;
            match r {
                Ok((delivered, dry)) => {
                    watch = !dry;
                    placed = delivered;
                    if delivered > 0 {
                        match should_signal(&mut a.rx, &a.mem, a.event_idx) {
                            Ok(true) => a.interrupt.signal_used(0),
                            Ok(false) => {}
                            Err(e) => a.broken(&self.name, &e),
                        }
                    }
                }
                Err(e) => a.broken(&self.name, &e),
            }
            watch &= !a.broken;
        }
        self.active = Some(a);
        (watch, placed)
    }

    /// The RX loop: (frames placed, whether the buffers ran out).
    fn rx_frames(&mut self, a: &mut Active, buf: &mut [u8]) -> Result<(usize, bool), QueueError> {
        let mut delivered = 0;
        for _ in 0..RX_BATCH {
            let placed = if let Some(p) = self.pending.front() {
                let placed = place(a, &self.stats, p)?;
                if let Placed::Taken = placed {
                    self.pending.pop_front();
                }
                placed
            } else {
                let n = match self.read_tap(a.acked, buf) {
                    TapRead::Frame(n) => n,
                    TapRead::Dropped => continue,
                    TapRead::Empty => break,
                };
                let placed = place(a, &self.stats, &buf[..n])?;
                if let Placed::NoRoom { .. } = placed {
                    // Kept for when buffers come.
                    self.pending.push_front(buf[..n].to_vec());
                }
                placed
            };
            match placed {
                Placed::Taken => delivered += 1,
                Placed::NoRoom { more: true } => continue,
                Placed::NoRoom { more: false } => return Ok((delivered, true)),
            }
        }
        if !self.pending.is_empty() {
            // The batch ended with frames waiting: come back after the
            // other events.
            let _ = a.rx_kick.write(1);
        }
        // Buffers remain: no kick needed when the driver adds more (a
        // no-op with EVENT_IDX, where `avail_event` already says so).
        a.rx.disable_notification(&a.mem)?;
        Ok((delivered, false))
    }

    /// One frame from the tap into `buf`, behind its header made fit for
    /// the driver.
    fn read_tap(&self, acked: u64, buf: &mut [u8]) -> TapRead {
        let r = if self.tap.vnet_hdr() {
            self.tap.read_frame(buf)
        } else {
            buf[..NET_HDR_LEN].fill(0);
            self.tap
                .read_frame(&mut buf[NET_HDR_LEN..])
                .map(|n| n + NET_HDR_LEN)
        };
        match r {
            Ok(n) if n >= NET_HDR_LEN && hdr::fix_rx(&mut buf[..n], acked).is_ok() => {
                TapRead::Frame(n)
            }
            Ok(_) => {
                self.stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
                TapRead::Dropped
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => TapRead::Empty,
            Err(e) => {
                log::warn!("{}: tap read: {e}", self.name);
                TapRead::Empty
            }
        }
    }
}

/// Places `data` (a header, final but for num_buffers, then a frame) in
/// the RX queue's next buffers: one chain, or as many as it takes with
/// MRG_RXBUF.
fn place(a: &mut Active, stats: &NetStats, data: &[u8]) -> Result<Placed, QueueError> {
    let total = data.len();
    let start = a.rx.next_avail();
    let mut chains: Vec<(u16, Vec<Segment>)> = Vec::new();
    let mut room = 0usize;
    let mut broken_chain = false;
    while room < total {
        let Some(chain) = a.rx.iter(&a.mem)?.next() else {
            // Not enough buffers. Ask for a kick when the driver adds one
            // past those looked at (`avail_event` = the index after them),
            // then give those back untouched.
            let more = a.rx.enable_notification(&a.mem)?;
            a.rx.set_next_avail(start);
            return Ok(Placed::NoRoom { more });
        };
        let head = chain.head_index();
        match chain::split(&a.mem, chain) {
            Ok((_, w)) if !w.is_empty() => {
                room += w.iter().map(|s| s.len as usize).sum::<usize>();
                chains.push((head, w));
            }
            // Outside RAM, or nothing to write to.
            _ => {
                chains.push((head, Vec::new()));
                broken_chain = true;
                break;
            }
        }
        if !a.mrg_rxbuf {
            break;
        }
    }
    if broken_chain || room < total {
        // A buffer the driver broke, or one too small without merged
        // buffers: the frame is lost, as on hardware, and the buffers go
        // back empty.
        for &(head, _) in &chains {
            a.rx.add_used(&a.mem, head, 0)?;
        }
        stats.rx_dropped.fetch_add(1, Ordering::Relaxed);
        return Ok(Placed::Taken);
    }
    let mut h = [0u8; NET_HDR_LEN];
    h.copy_from_slice(&data[..NET_HDR_LEN]);
    h[hdr::NUM_BUFFERS..].copy_from_slice(&(chains.len() as u16).to_le_bytes());
    let frame = &data[NET_HDR_LEN..];
    let mut at = 0usize;
    for (head, segs) in &chains {
        let mut len = 0u32;
        for s in segs {
            if at >= total {
                break;
            }
            let n = (s.len as usize).min(total - at);
            write_part(&a.mem, s.addr, &h, frame, at, n);
            at += n;
            len += n as u32;
        }
        a.rx.add_used(&a.mem, *head, len)?;
    }
    stats.rx_frames.fetch_add(1, Ordering::Relaxed);
    stats
        .rx_bytes
        .fetch_add(frame.len() as u64, Ordering::Relaxed);
    if h[1] != hdr::GSO_NONE {
        stats.rx_gso.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Placed::Taken)
}

/// Writes bytes `at..at + n` of the header `h` followed by `frame` to
/// guest address `addr` (checked to be RAM).
fn write_part(mem: &GuestMemory, addr: GuestAddress, h: &[u8], frame: &[u8], at: usize, n: usize) {
    let mut addr = addr;
    let (mut at, end) = (at, at + n);
    if at < h.len() {
        let k = end.min(h.len());
        let _ = mem.write_slice(&h[at..k], addr);
        addr = GuestAddress(addr.0 + (k - at) as u64);
        at = k;
    }
    if at < end {
        let _ = mem.write_slice(&frame[at - h.len()..end - h.len()], addr);
    }
}

/// Asks the driver not to kick the TX queue while the device polls it:
/// the used ring's NO_NOTIFY flag, or with EVENT_IDX an `avail_event`
/// just behind the next chain, which no new avail index can cross
/// (Linux's `vring_need_event`); the next TX pass asks for kicks again.
fn suppress_tx_kicks(a: &mut Active) -> Result<(), QueueError> {
    if !a.event_idx {
        return a.tx.disable_notification(&a.mem);
    }
    let at = a.tx.used_ring() + 4 + 8 * u64::from(a.tx.size());
    let behind = a.tx.next_avail().wrapping_sub(1);
    a.mem
        .store(behind.to_le(), GuestAddress(at), Ordering::Release)
        .map_err(QueueError::GuestMemory)
}

/// Writes the datagrams `run` merged so far to the tap.
fn flush_run(run: &mut Option<UdpRun>, tap: &Tap, stats: &NetStats, name: &str) {
    let Some(m) = run.as_mut().and_then(UdpRun::finish) else {
        return;
    };
    match tap.write_frame(m.frame) {
        Ok(()) => {
            stats.tx_frames.fetch_add(m.datagrams, Ordering::Relaxed);
            stats.tx_bytes.fetch_add(m.bytes, Ordering::Relaxed);
            if m.datagrams > 1 {
                stats.tx_merged.fetch_add(m.datagrams, Ordering::Relaxed);
            }
        }
        Err(e) => {
            stats.tx_dropped.fetch_add(m.datagrams, Ordering::Relaxed);
            // The kernel said it takes UDP GSO frames, then refused one:
            // datagrams go one by one from now on.
            if m.datagrams > 1 && e.raw_os_error() == Some(libc::EINVAL) {
                log::warn!(
                    "{name}: the tap refused a UDP GSO frame ({e}); datagrams no longer merged"
                );
                *run = None;
            }
        }
    }
}

/// Whether the driver wants an interrupt for what was just added to the
/// used ring: `used_event` with EVENT_IDX, else the avail ring's
/// NO_INTERRUPT flag (which virtio-queue does not look at).
fn should_signal(q: &mut Queue, mem: &GuestMemory, event_idx: bool) -> Result<bool, QueueError> {
    let needs = q.needs_notification(mem)?;
    if event_idx {
        return Ok(needs);
    }
    let flags: u16 = mem
        .load(GuestAddress(q.avail_ring()), Ordering::Acquire)
        .map_err(QueueError::GuestMemory)?;
    Ok(u16::from_le(flags)
        & virtio_bindings::bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16
        == 0)
}

/// Copies the readable part of a TX chain into `out`; its length, or None
/// if it does not fit, points outside guest RAM, or has the wrong shape.
fn gather(
    mem: &GuestMemory,
    chain: virtio_queue::DescriptorChain<&GuestMemory>,
    out: &mut [u8],
) -> Option<usize> {
    let (readable, _) = chain::split(mem, chain).ok()?;
    let mut len = 0usize;
    for s in readable {
        let n = s.len as usize;
        if n > out.len() - len {
            return None;
        }
        mem.read_slice(&mut out[len..len + n], s.addr).ok()?;
        len += n;
    }
    Some(len)
}
