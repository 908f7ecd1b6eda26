//! The virtio-scsi I/O thread: waits for kicks, executes commands from the
//! request queue (reading the disc straight into the guest's data-in
//! buffers), answers the control queue, and leaves the event queue's
//! buffers where they are: there are no events to send.

use std::io::{self, IoSliceMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use disk::DiskImage;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestMemoryBackend as _, GuestMemoryRegion as _};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::cdrom::{DataIn, CHECK_CONDITION};
use super::request::{
    self, encode_response, Buffer, CtrlRequest, ParseError, AN_RESP_LEN, RESP_HEADER_LEN, S_FAILURE,
};
use super::target::Target;
use super::{ScsiStats, Sizes, CONTROL_QUEUE, REQUEST_QUEUE};
use crate::virtio::{GuestMemory, Interrupt};

const TOKEN_STOP: u64 = 3;

pub struct QueueSlot {
    pub queue: Queue,
    pub index: u16,
    pub kick: EventFd,
    /// The queue is malformed: its kicks are ignored until a reset.
    pub broken: bool,
}

pub struct Worker {
    pub mem: GuestMemory,
    /// Control, event and request queue, those the driver enabled.
    pub queues: [Option<QueueSlot>; 3],
    pub stop: EventFd,
    pub interrupt: Arc<dyn Interrupt>,
    pub target: Target,
    pub sizes: Arc<Sizes>,
    pub stats: Arc<ScsiStats>,
    pub name: String,
}

/// A request queue chain's data-in buffer in guest memory.
struct GuestDataIn<'a> {
    mem: &'a GuestMemory,
    buf: &'a Buffer,
}

impl DataIn for GuestDataIn<'_> {
    fn capacity(&self) -> u64 {
        self.buf.len
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.buf.write(self.mem, data) == data.len() {
            Ok(())
        } else {
            Err(io::Error::other("data-in buffer not in guest memory"))
        }
    }

    fn read_disk(&mut self, disk: &mut dyn DiskImage, offset: u64, len: u64) -> io::Result<()> {
        let (head, _) = self.buf.split_at(len);
        let slices = host_slices(self.mem, &head);
        if slices.iter().map(|&(_, l)| l as u64).sum::<u64>() != len {
            return Err(io::Error::other("data-in buffer not in guest memory"));
        }
        let mut io: Vec<IoSliceMut> = slices
            .iter()
            // SAFETY: each (ptr, len) lies inside a guest memory region
            // mapped for the life of `self.mem` (parsing checked the
            // segments with `check_range`); the kernel writes the guest's
            // buffers during the read, and no Rust reference to them
            // outlives it. The guest may look at them meanwhile, which is
            // the nature of DMA.
            .map(|&(p, l)| IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(p, l) }))
            .collect();
        disk.read_at(&mut io, offset)
    }
}

/// Host addresses of `buf`, split where guest memory regions end.
fn host_slices(mem: &GuestMemory, buf: &Buffer) -> Vec<(*mut u8, usize)> {
    let mut out = Vec::with_capacity(buf.segs.len());
    for s in &buf.segs {
        let mut addr = s.addr;
        let mut left = s.len as usize;
        while left > 0 {
            let Some(region) = mem.find_region(addr) else {
                break;
            };
            let off = addr.0 - region.start_addr().0;
            let n = left.min((region.len() - off) as usize);
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

impl Worker {
    /// Runs until `stop` is signalled; returns the image for the next
    /// activation.
    pub fn run(mut self) -> Box<dyn DiskImage> {
        let epoll = match self.epoll() {
            Ok(e) => e,
            Err(e) => {
                log::error!("{}: epoll: {e}", self.name);
                self.interrupt.needs_reset();
                return self.target.into_disk();
            }
        };
        let mut events = [EpollEvent::default(); 4];
        // Kicks may have come before we started waiting.
        self.process(REQUEST_QUEUE);
        self.process(CONTROL_QUEUE);
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("{}: epoll_wait: {e}", self.name);
                    break;
                }
            };
            let mut kicked = [false; 3];
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return self.target.into_disk(),
                    q => {
                        if let Some(Some(slot)) = self.queues.get(q as usize) {
                            let _ = slot.kick.read();
                            kicked[q as usize] = true;
                        }
                    }
                }
            }
            self.stats.kicks.fetch_add(1, Ordering::Relaxed);
            // Commands first: a task management function must find every
            // command submitted before it completed.
            if kicked[usize::from(REQUEST_QUEUE)] || kicked[usize::from(CONTROL_QUEUE)] {
                self.process(REQUEST_QUEUE);
            }
            if kicked[usize::from(CONTROL_QUEUE)] {
                self.process(CONTROL_QUEUE);
            }
            // Event queue kicks bring buffers for events that never come.
        }
        self.target.into_disk()
    }

    fn epoll(&self) -> io::Result<Epoll> {
        use std::os::unix::io::AsRawFd;
        let epoll = Epoll::new()?;
        for slot in self.queues.iter().flatten() {
            epoll.ctl(
                ControlOperation::Add,
                slot.kick.as_raw_fd(),
                EpollEvent::new(EventSet::IN, u64::from(slot.index)),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            self.stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )?;
        Ok(epoll)
    }

    /// Completes every available chain of queue `index`, if enabled and
    /// not broken.
    fn process(&mut self, index: u16) {
        let Some(mut slot) = self.queues[usize::from(index)].take() else {
            return;
        };
        if !slot.broken {
            if let Err(why) = self.process_queue(&mut slot.queue, index) {
                log::warn!(
                    "{}: queue {index} broken ({why}); device needs reset",
                    self.name
                );
                self.interrupt.needs_reset();
                slot.broken = true;
            }
        }
        self.queues[usize::from(index)] = Some(slot);
    }

    fn process_queue(&mut self, queue: &mut Queue, index: u16) -> Result<(), String> {
        let mem = self.mem.clone();
        let mut completed = false;
        loop {
            queue
                .disable_notification(&mem)
                .map_err(|e| e.to_string())?;
            loop {
                let chain = match queue.iter(&mem) {
                    Ok(mut it) => it.next(),
                    Err(e) => return Err(e.to_string()),
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let used = if index == REQUEST_QUEUE {
                    self.command(chain)
                } else {
                    self.control(chain)
                };
                queue
                    .add_used(&mem, head, used)
                    .map_err(|e| e.to_string())?;
                completed = true;
            }
            match queue.enable_notification(&mem) {
                Ok(true) => continue, // more arrived meanwhile
                Ok(false) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        if completed && queue.needs_notification(&mem).map_err(|e| e.to_string())? {
            self.interrupt.signal_used(index);
        }
        Ok(())
    }

    /// Executes a request queue chain; returns the used length.
    fn command(&mut self, chain: impl Iterator<Item = Descriptor>) -> u32 {
        let cdb_size = self.sizes.cdb_size.load(Ordering::Relaxed);
        let sense_size = self.sizes.sense_size.load(Ordering::Relaxed);
        let req = match request::parse_cmd(&self.mem, chain, cdb_size, sense_size) {
            Ok(r) => r,
            Err(e) => return self.bad_command(&e),
        };
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let c = {
            let mut din = GuestDataIn {
                mem: &self.mem,
                buf: &req.data_in,
            };
            self.target.command(&req.lun, &req.cdb, &mut din)
        };
        if c.status == CHECK_CONDITION {
            self.stats.check_conditions.fetch_add(1, Ordering::Relaxed);
        }
        if req.cdb.first().is_some_and(|&op| is_read(op)) {
            self.stats
                .read_bytes
                .fetch_add(c.transferred, Ordering::Relaxed);
        }
        // residual = data_length - transferred (one of data-out and
        // data-in is empty; data-out is never consumed).
        let residual = (req.data_in.len + req.data_out.len).saturating_sub(c.transferred);
        let residual = u32::try_from(residual).unwrap_or(u32::MAX);
        let sense = match c.sense {
            Some(s) => {
                let room = (req.response.len - RESP_HEADER_LEN).min(u64::from(sense_size));
                let f = s.fixed();
                f[..f.len().min(room as usize)].to_vec()
            }
            None => Vec::new(),
        };
        // The whole response area is written, the unused part of the
        // sense field zeroed, so that the used length (at most what was
        // written from the start, section 2.7.8.1) can cover data-in.
        // sense_size is below 64 KiB (write_config sees to it).
        let mut resp = encode_response(c.response, c.status, residual, &sense);
        resp.resize(resp.len().max(req.response.len as usize), 0);
        let written = req.response.write(&self.mem, &resp) as u64;
        let used = if written == req.response.len {
            written + c.transferred
        } else {
            written
        };
        u32::try_from(used).unwrap_or(u32::MAX)
    }

    fn bad_command(&self, e: &ParseError) -> u32 {
        log::debug!("{}: bad request: {e}", self.name);
        self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        match e.response() {
            Some(resp) => {
                let r = encode_response(S_FAILURE, 0, 0, &[]);
                resp.write(&self.mem, &r) as u32
            }
            // Nothing can be written back; the request completes empty so
            // the driver gets its descriptors back.
            None => 0,
        }
    }

    /// Answers a control queue chain; returns the used length.
    fn control(&mut self, chain: impl Iterator<Item = Descriptor>) -> u32 {
        match request::parse_ctrl(&self.mem, chain) {
            Ok(CtrlRequest::Tmf {
                subtype,
                lun,
                tag,
                response,
            }) => {
                self.stats.task_management.fetch_add(1, Ordering::Relaxed);
                let r = self.target.tmf(subtype, &lun, tag);
                response.write(&self.mem, &[r]) as u32
            }
            Ok(CtrlRequest::An {
                lun,
                event_requested,
                response,
                ..
            }) => {
                let (actual, r) = self.target.an(&lun, event_requested);
                let mut b = [0u8; AN_RESP_LEN as usize];
                b[..4].copy_from_slice(&actual.to_le_bytes());
                b[4] = r;
                response.write(&self.mem, &b) as u32
            }
            Ok(CtrlRequest::Unknown { kind, response }) => {
                log::debug!("{}: unknown control request type {kind}", self.name);
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                // The last writable byte is the response in the generic
                // layout. The used length stays 0: the bytes before it
                // were not written.
                response.write(&self.mem, &[S_FAILURE]);
                0
            }
            Err(e) => {
                log::debug!("{}: bad control request: {e}", self.name);
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                0
            }
        }
    }
}

fn is_read(op: u8) -> bool {
    matches!(op, 0x08 | 0x28 | 0xa8 | 0x88 | 0xbe)
}
