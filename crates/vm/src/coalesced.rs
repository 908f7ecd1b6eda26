//! KVM's coalesced I/O ring: writes to registered ports that KVM queues in
//! a shared page instead of leaving `KVM_RUN` for each.
//!
//! Only for ports whose writes have no effect the guest could see before
//! its next access to the device, because the device model only sees them
//! when a vCPU next leaves `KVM_RUN` and drains the ring. The CMOS index
//! port 0x70 is the classic case (QEMU coalesces it too): it only selects
//! the register that the next access to 0x71 reads or writes, and that
//! access is an exit, which drains first. Every RTC read of a guest clock
//! costs an index write and a data read, so this halves the exits of it.
//!
//! On this machine's PVM host every return from `KVM_RUN` costs an MSR read
//! and a CR4 write that trap to the next hypervisor down: an exit not taken
//! is worth ~30 µs.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use kvm_bindings::{kvm_coalesced_mmio, kvm_coalesced_mmio_ring, KVM_COALESCED_MMIO_PAGE_OFFSET};
use kvm_ioctls::VcpuFd;
use std::os::fd::AsRawFd;

/// The ring page, mapped once for the VM (every vCPU fd maps the same page).
pub struct CoalescedRing {
    page: NonNull<kvm_coalesced_mmio_ring>,
    page_size: usize,
    /// Entries the page holds (KVM_COALESCED_MMIO_MAX).
    max: u32,
}

// SAFETY: the page is plain shared memory; `drain` takes `&mut self`, so
// callers serialise (the VM keeps the ring behind a mutex).
unsafe impl Send for CoalescedRing {}

/// One write KVM queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedWrite {
    /// Port I/O (else MMIO).
    pub pio: bool,
    pub addr: u64,
    len: usize,
    data: [u8; 8],
}

impl QueuedWrite {
    pub fn data(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl CoalescedRing {
    /// Maps the VM's ring through one of its vCPU fds.
    pub fn map(vcpu: &VcpuFd) -> io::Result<CoalescedRing> {
        // SAFETY: sysconf has no preconditions.
        let page_size = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => return Err(io::Error::last_os_error()),
        };
        let offset = libc::off_t::from(KVM_COALESCED_MMIO_PAGE_OFFSET) * page_size as libc::off_t;
        // SAFETY: a fresh shared mapping of the page KVM exposes at this
        // offset of a vCPU fd; nothing else in the process aliases it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(p.cast()).ok_or_else(io::Error::last_os_error)?;
        let max = ((page_size - size_of::<kvm_coalesced_mmio_ring>())
            / size_of::<kvm_coalesced_mmio>()) as u32;
        Ok(CoalescedRing {
            page,
            page_size,
            max,
        })
    }

    /// Takes the queued writes out of the ring, oldest first, handing each
    /// to `f`.
    pub fn drain(&mut self, mut f: impl FnMut(QueuedWrite)) {
        let ring = self.page.as_ptr();
        // SAFETY: `ring` points to the mapped page, which starts with the
        // ring header; the kernel writes `last` and the entries, we write
        // `first` (the ring protocol of include/uapi/linux/kvm.h), with
        // volatile accesses since the other side changes them.
        unsafe {
            let mut first = std::ptr::addr_of!((*ring).first).read_volatile();
            let last = std::ptr::addr_of!((*ring).last).read_volatile();
            // Entries up to `last` were written before `last` was.
            fence(Ordering::Acquire);
            if first >= self.max || last >= self.max {
                // Not a state KVM makes; start over rather than read wild.
                std::ptr::addr_of_mut!((*ring).first).write_volatile(last % self.max);
                return;
            }
            let entries = std::ptr::addr_of!((*ring).coalesced_mmio).cast::<kvm_coalesced_mmio>();
            while first != last {
                let e = entries.add(first as usize).read_volatile();
                f(QueuedWrite {
                    pio: e.__bindgen_anon_1.pio != 0,
                    addr: e.phys_addr,
                    len: (e.len as usize).min(8),
                    data: e.data,
                });
                first = (first + 1) % self.max;
            }
            // The slots are free for the kernel only after we read them.
            fence(Ordering::Release);
            std::ptr::addr_of_mut!((*ring).first).write_volatile(first);
        }
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.page_size) };
    }
}
