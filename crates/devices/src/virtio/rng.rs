//! virtio-rng (virtio 1.2 section 5.4): entropy for the guest, from the
//! host's `getrandom(2)`. One request queue; every buffer the guest posts
//! is filled whole. Served on the vCPU's kick by an I/O thread, like the
//! other devices, so a guest asking for megabytes stalls no vCPU.

use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, Permissions};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::threads::{self, ThreadKind};

use super::{features, ActivateError, Activation, GuestMemory, Interrupt, VirtioDevice};

/// Virtio device type of an entropy source.
pub const VIRTIO_ID_RNG: u16 = 4;
const QUEUE_SIZE: u16 = 64;
/// Bytes one pass hands out before the thread looks at its events again.
const BATCH_BYTES: usize = 1 << 20;

struct Running {
    stop: EventFd,
    thread: JoinHandle<()>,
}

#[derive(Default)]
pub struct Rng {
    running: Option<Running>,
}

impl Rng {
    pub fn new() -> Rng {
        Rng::default()
    }
}

/// Fills `buf` from the kernel's CSPRNG.
fn fill(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom writes at most the given length into buf.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
}

fn serve(mem: &GuestMemory, q: &mut Queue, kick: &EventFd, irq: &dyn Interrupt) -> bool {
    let mut given = 0usize;
    let mut buf = vec![0u8; 4096];
    loop {
        if q.disable_notification(mem).is_err() {
            return false;
        }
        loop {
            let chain = match q.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => return false,
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut written = 0u32;
            for d in chain.writable() {
                let addr = GuestAddress(d.addr().0);
                let len = d.len() as usize;
                if !mem.check_range(addr, len, Permissions::Write) {
                    break;
                }
                let mut off = 0;
                while off < len {
                    let n = (len - off).min(buf.len());
                    if !fill(&mut buf[..n])
                        || mem
                            .write_slice(&buf[..n], GuestAddress(addr.0 + off as u64))
                            .is_err()
                    {
                        break;
                    }
                    off += n;
                }
                written += off as u32;
            }
            if q.add_used(mem, head, written).is_err() {
                return false;
            }
            given += written as usize;
            if given >= BATCH_BYTES {
                let _ = kick.write(1);
                break;
            }
        }
        if given >= BATCH_BYTES {
            break;
        }
        match q.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(_) => return false,
        }
    }
    if given > 0 && q.needs_notification(mem).unwrap_or(true) {
        irq.signal_used(0);
    }
    true
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::RING_EVENT_IDX | features::RING_INDIRECT_DESC
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // no configuration space
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, act: Activation) -> Result<(), ActivateError> {
        let q = act
            .queues
            .into_iter()
            .find(|q| q.index == 0)
            .ok_or(ActivateError::MissingQueue(0))?;
        let host = |e: std::io::Error| ActivateError::Host(e.to_string());
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(host)?;
        let worker_stop = stop.try_clone().map_err(host)?;
        let (mem, irq): (GuestMemory, Arc<dyn Interrupt>) = (act.mem, act.interrupt);
        let mut queue = q.queue;
        let kick = q.kick;
        let thread = threads::spawn(ThreadKind::Rng, "virtio-rng", move || {
            use std::os::unix::io::AsRawFd;
            let Ok(ep) = Epoll::new() else { return };
            for (fd, t) in [(kick.as_raw_fd(), 0u64), (worker_stop.as_raw_fd(), 1)] {
                if ep
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, t))
                    .is_err()
                {
                    return;
                }
            }
            let mut ok = serve(&mem, &mut queue, &kick, irq.as_ref());
            let mut events = [EpollEvent::default(); 2];
            loop {
                let Ok(n) = ep.wait(-1, &mut events) else {
                    continue;
                };
                if events[..n].iter().any(|e| e.data() == 1) {
                    return;
                }
                let _ = kick.read();
                if ok && !serve(&mem, &mut queue, &kick, irq.as_ref()) {
                    log::warn!("virtio-rng: queue broken; device needs reset");
                    irq.needs_reset();
                    ok = false;
                }
            }
        })
        .map_err(host)?;
        self.running = Some(Running { stop, thread });
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.write(1);
            let _ = r.thread.join();
        }
    }

    fn describe(&self) -> String {
        "rng".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_ring::{Irq, Ring};
    use crate::virtio::ActiveQueue;

    #[test]
    fn fills_every_buffer_it_is_given() {
        let m = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut rng = Rng::new();
        let irq = Arc::new(Irq::default());
        let mut ring = Ring {
            base: 0x1000,
            next_desc: 0,
            avail: 0,
            kick: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        };
        rng.activate(Activation {
            mem: m.clone(),
            acked_features: rng.features(),
            queues: vec![ActiveQueue {
                index: 0,
                queue: ring.queue(),
                kick: ring.kick.try_clone().unwrap(),
            }],
            interrupt: irq.clone(),
        })
        .unwrap();
        // Two buffers in one chain, then a read-only one the device skips.
        ring.push(&m, &[(0x10000, 3000, true), (0x20000, 5000, true)]);
        assert_eq!(ring.wait_used(&m, 0), (0, 8000));
        let mut got = vec![0u8; 8000];
        m.read_slice(&mut got[..3000], GuestAddress(0x10000))
            .unwrap();
        m.read_slice(&mut got[3000..], GuestAddress(0x20000))
            .unwrap();
        // 8000 random bytes are not all alike (p = 2^-63992).
        assert!(got.iter().any(|&b| b != got[0]));
        ring.push(&m, &[(0x30000, 16, false)]);
        assert_eq!(ring.wait_used(&m, 1).1, 0);
        rng.reset();
    }
}
