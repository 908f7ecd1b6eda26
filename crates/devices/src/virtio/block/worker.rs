//! The block device's I/O thread: waits for kicks, walks the queue,
//! moves data between the image and guest memory with vectored positioned
//! I/O straight into the guest's buffers, and completes requests.

use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use disk::{DiskImage, SECTOR_SIZE};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryBackend as _, GuestMemoryRegion as _};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Kind, Request, Segment, ID_LEN, S_IOERR, S_OK, S_UNSUPP};
use super::{BlockStats, MAX_DISCARD_SECTORS};
use crate::virtio::{GuestMemory, Interrupt};

const TOKEN_KICK: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// How long the thread keeps looking at the avail ring, with the driver's
/// kicks turned off, after the last request it found. A guest streaming
/// I/O posts its next request within microseconds of a completion; a kick
/// costs it a VM exit and us a wake-up (together tens of microseconds
/// here), so while requests keep coming they are picked up by polling.
/// An idle disk costs one such interval of spinning after its last
/// request.
const POLL: std::time::Duration = std::time::Duration::from_micros(50);
/// The longest one polling spell lasts however busy the guest, so that the
/// thread comes back to its events (a reset waits on it).
const POLL_MAX: std::time::Duration = std::time::Duration::from_millis(1);
/// Requests one pass completes before it lets the thread look at its
/// events again (it kicks itself to come back): a guest that keeps the
/// ring full cannot keep a reset waiting.
const MAX_BATCH: u32 = 1024;

pub struct Worker {
    pub mem: GuestMemory,
    pub queue: Queue,
    pub queue_index: u16,
    pub kick: EventFd,
    pub stop: EventFd,
    pub interrupt: Arc<dyn Interrupt>,
    pub disk: Box<dyn DiskImage>,
    pub read_only: bool,
    pub id: [u8; ID_LEN],
    pub stats: Arc<BlockStats>,
    pub name: String,
}

impl Worker {
    /// Runs until `stop` is signalled; returns the image for the next
    /// activation.
    pub fn run(mut self) -> Box<dyn DiskImage> {
        let epoll = match self.epoll() {
            Ok(e) => e,
            Err(e) => {
                log::error!("{}: epoll: {e}", self.name);
                self.interrupt.needs_reset();
                return self.disk;
            }
        };
        let mut broken = false;
        let mut events = [EpollEvent::default(); 2];
        // A kick may have come before we started waiting.
        if !self.process() {
            broken = true;
        }
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("{}: epoll_wait: {e}", self.name);
                    break;
                }
            };
            let mut kicked = false;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return self.disk,
                    _ => kicked = true,
                }
            }
            if kicked {
                let _ = self.kick.read();
                self.stats.kicks.fetch_add(1, Ordering::Relaxed);
                // After a broken queue only a reset helps; kicks are
                // drained and ignored until then.
                if !broken {
                    let before = self.stats.requests.load(Ordering::Relaxed);
                    let ok = self.process()
                        && (self.stats.requests.load(Ordering::Relaxed) == before || self.poll());
                    broken = !ok;
                }
            }
        }
        self.disk
    }

    /// Polls the avail ring for up to [`POLL`] after each request found,
    /// with notifications off, then turns them back on (catching what came
    /// meanwhile). False if the queue broke.
    fn poll(&mut self) -> bool {
        if let Err(e) = self.queue.disable_notification(&self.mem) {
            return self.broken(&e.to_string());
        }
        let start = std::time::Instant::now();
        let mut deadline = start + POLL;
        loop {
            let now = std::time::Instant::now();
            if now >= deadline || now - start >= POLL_MAX {
                break;
            }
            let pending = match self.queue.avail_idx(&self.mem, Ordering::Acquire) {
                Ok(idx) => idx.0 != self.queue.next_avail(),
                Err(e) => return self.broken(&e.to_string()),
            };
            if pending {
                match self.drain() {
                    Ok(true) => deadline = std::time::Instant::now() + POLL,
                    // The avail index moved but no chain came: a driver
                    // playing with its rings. Stop polling.
                    Ok(false) => break,
                    Err(()) => return false,
                }
            } else {
                std::hint::spin_loop();
            }
        }
        self.process()
    }

    /// Completes what is available now, without touching notification
    /// suppression; signals the driver if it wants. Ok(whether anything
    /// completed), Err if the queue broke.
    fn drain(&mut self) -> Result<bool, ()> {
        let mut completed = false;
        let mut n = 0u32;
        loop {
            let mem = self.mem.clone();
            let chain = match self.queue.iter(&mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    self.broken(&e.to_string());
                    return Err(());
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let written = self.complete(chain);
            if let Err(e) = self.queue.add_used(&self.mem, head, written) {
                self.broken(&e.to_string());
                return Err(());
            }
            completed = true;
            n += 1;
            if n >= MAX_BATCH {
                break;
            }
        }
        if completed {
            match self.queue.needs_notification(&self.mem) {
                Ok(true) => self.interrupt.signal_used(self.queue_index),
                Ok(false) => {}
                Err(e) => {
                    self.broken(&e.to_string());
                    return Err(());
                }
            }
        }
        Ok(completed)
    }

    /// Parses and executes one chain; the bytes written for the used ring.
    fn complete(&mut self, chain: virtio_queue::DescriptorChain<&GuestMemory>) -> u32 {
        match request::parse(&self.mem, chain) {
            Ok(req) => self.execute(&req),
            Err(e) => {
                // Nothing can be written back; the request completes
                // empty so the driver gets its descriptors back.
                log::debug!("{}: bad request: {e}", self.name);
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                0
            }
        }
    }

    fn epoll(&self) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        use std::os::unix::io::AsRawFd;
        epoll.ctl(
            ControlOperation::Add,
            self.kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_KICK),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            self.stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )?;
        Ok(epoll)
    }

    /// Completes every available request. False if the queue is broken
    /// (the driver is told through DEVICE_NEEDS_RESET).
    pub(super) fn process(&mut self) -> bool {
        let mut completed = false;
        // Rounds in a row that took no request although the avail index
        // said there were some (see below).
        let mut idle_rounds = 0;
        let mut batch = 0u32;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                return self.broken(&e.to_string());
            }
            idle_rounds += 1;
            loop {
                let mem = self.mem.clone();
                let chain = match self.queue.iter(&mem) {
                    Ok(mut it) => it.next(),
                    Err(e) => return self.broken(&e.to_string()),
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let written = self.complete(chain);
                if let Err(e) = self.queue.add_used(&self.mem, head, written) {
                    return self.broken(&e.to_string());
                }
                completed = true;
                idle_rounds = 0;
                batch += 1;
                if batch >= MAX_BATCH {
                    // Come back through the event loop (a stop may be
                    // waiting); notifications stay off meanwhile.
                    let _ = self.kick.write(1);
                    break;
                }
            }
            if batch >= MAX_BATCH {
                break;
            }
            match self.queue.enable_notification(&self.mem) {
                // More arrived meanwhile. But a driver whose used ring
                // lies over its avail index makes the device's own flag
                // writes move that index: found nothing twice in a row,
                // wait for the next kick instead of spinning forever
                // (where a reset could not stop this thread).
                Ok(true) if idle_rounds < 2 => continue,
                Ok(_) => break,
                Err(e) => return self.broken(&e.to_string()),
            }
        }
        if completed {
            match self.queue.needs_notification(&self.mem) {
                Ok(true) => self.interrupt.signal_used(self.queue_index),
                Ok(false) => {}
                Err(e) => return self.broken(&e.to_string()),
            }
        }
        true
    }

    fn broken(&self, why: &str) -> bool {
        log::warn!("{}: queue broken ({why}); device needs reset", self.name);
        self.interrupt.needs_reset();
        false
    }

    /// Executes `req` and writes its status; returns the bytes written
    /// into guest memory (the used length).
    fn execute(&mut self, req: &Request) -> u32 {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let (status, written) = match req.kind {
            Kind::Read => match self.rw(req, false) {
                Ok(()) => {
                    self.stats
                        .read_bytes
                        .fetch_add(req.data_len, Ordering::Relaxed);
                    (S_OK, req.data_len as u32)
                }
                Err(s) => (s, 0),
            },
            Kind::Write if self.read_only => (S_IOERR, 0),
            Kind::Write => match self.rw(req, true) {
                Ok(()) => {
                    self.stats
                        .written_bytes
                        .fetch_add(req.data_len, Ordering::Relaxed);
                    (S_OK, 0)
                }
                Err(s) => (s, 0),
            },
            Kind::Flush => match self.disk.flush() {
                Ok(()) => (S_OK, 0),
                Err(e) => {
                    log::warn!("{}: flush: {e}", self.name);
                    (S_IOERR, 0)
                }
            },
            Kind::GetId => {
                let n = self.write_id(&req.data);
                (S_OK, n)
            }
            Kind::Discard | Kind::WriteZeroes if self.read_only => (S_IOERR, 0),
            Kind::Discard | Kind::WriteZeroes => (self.discard(req), 0),
            Kind::Unsupported(_) => (S_UNSUPP, 0),
        };
        if self.mem.write_obj(status, req.status).is_err() {
            // Checked at parse time; only a concurrent hot-unplug of memory
            // could get here, and we have none.
            return written;
        }
        written + 1
    }

    /// A read or write of the request's data at its sector.
    fn rw(&mut self, req: &Request, write: bool) -> Result<(), u8> {
        let capacity = self.disk.size() / SECTOR_SIZE;
        if !req.data_len.is_multiple_of(SECTOR_SIZE)
            || req
                .sector
                .checked_add(req.data_len / SECTOR_SIZE)
                .is_none_or(|end| end > capacity)
        {
            return Err(S_IOERR);
        }
        let offset = req.sector * SECTOR_SIZE;
        let result = if write {
            let bufs = self.host_slices(&req.data);
            let io: Vec<IoSlice> = bufs
                .iter()
                // SAFETY: each (ptr, len) lies inside a guest memory
                // region mapped for the life of `self.mem`; the guest may
                // change the bytes concurrently, which is the nature of
                // DMA and harmless to us (they are only copied).
                .map(|&(p, l)| IoSlice::new(unsafe { std::slice::from_raw_parts(p, l) }))
                .collect();
            self.disk.write_at(&io, offset)
        } else {
            let bufs = self.host_slices(&req.data);
            let mut io: Vec<IoSliceMut> = bufs
                .iter()
                // SAFETY: as above; the guest's buffers are written by the
                // kernel's read, no Rust reference to them outlives it.
                .map(|&(p, l)| IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(p, l) }))
                .collect();
            self.disk.read_at(&mut io, offset)
        };
        result.map_err(|e| {
            log::warn!(
                "{}: {} of {} bytes at sector {}: {e}",
                self.name,
                if write { "write" } else { "read" },
                req.data_len,
                req.sector
            );
            S_IOERR
        })
    }

    /// Host addresses of `segs`, split where guest memory regions end.
    /// Parsing checked that every segment lies in guest RAM.
    fn host_slices(&self, segs: &[Segment]) -> Vec<(*mut u8, usize)> {
        let mut out = Vec::with_capacity(segs.len());
        for s in segs {
            let mut addr = s.addr;
            let mut left = s.len as usize;
            while left > 0 {
                let Some(region) = self.mem.find_region(addr) else {
                    break;
                };
                let off = addr.0 - region.start_addr().0;
                let n = left.min((region.len() - off) as usize);
                // `get_host_address` on the region gives a pointer into
                // its mapping.
                match region.get_host_address(vm_memory::MemoryRegionAddress(off)) {
                    Ok(p) => out.push((p, n)),
                    Err(_) => break,
                }
                addr = addr.unchecked_add(n as u64);
                left -= n;
            }
        }
        out
    }

    fn write_id(&self, data: &[Segment]) -> u32 {
        let mut written = 0usize;
        for s in data {
            if written >= ID_LEN {
                break;
            }
            let n = (s.len as usize).min(ID_LEN - written);
            if self
                .mem
                .write_slice(&self.id[written..written + n], s.addr)
                .is_err()
            {
                break;
            }
            written += n;
        }
        written as u32
    }

    fn discard(&mut self, req: &Request) -> u8 {
        let Some(ranges) = request::discard_ranges(&self.mem, &req.data) else {
            return S_UNSUPP;
        };
        let capacity = self.disk.size() / SECTOR_SIZE;
        for r in &ranges {
            let end = r.sector.checked_add(u64::from(r.num_sectors));
            if r.unknown_flags
                || (req.kind == Kind::Discard && r.unmap)
                || r.num_sectors > MAX_DISCARD_SECTORS
            {
                return S_UNSUPP;
            }
            if end.is_none_or(|e| e > capacity) {
                return S_IOERR;
            }
        }
        for r in ranges {
            let (off, len) = (
                r.sector * SECTOR_SIZE,
                u64::from(r.num_sectors) * SECTOR_SIZE,
            );
            let res = match req.kind {
                Kind::Discard => self.disk.discard(off, len),
                _ => self.disk.write_zeroes(off, len, r.unmap),
            };
            if let Err(e) = res {
                log::warn!(
                    "{}: discard/write-zeroes at sector {}: {e}",
                    self.name,
                    r.sector
                );
                return S_IOERR;
            }
        }
        S_OK
    }
}
