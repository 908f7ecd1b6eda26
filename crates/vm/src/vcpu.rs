//! The vCPU thread: `KVM_RUN`, exit dispatch, and being kicked out of
//! `KVM_RUN` when the VM pauses or stops.
//!
//! Kicking uses the scheme Firecracker and QEMU use: a real-time signal
//! whose handler sets `kvm_run.immediate_exit` of the vCPU running on that
//! thread. If the signal lands while the thread is inside `KVM_RUN`, the
//! ioctl returns EINTR; if it lands just before the thread enters,
//! `immediate_exit` makes KVM return at once. Either way the thread then
//! re-reads the VM's run state, so no kick is lost.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::{Arc, Once};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::control::{Control, StopReason};
use crate::IoBuses;

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// `&kvm_run.immediate_exit` of the vCPU this thread runs, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer targets the mmap'ed kvm_run of the vCPU owned
        // by this very thread, valid while it is set (see `run_vcpu`).
        unsafe { std::ptr::write_volatile(p, 1) };
    }
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        register_signal_handler(kick_signal(), handle_kick)
            .expect("registering the vCPU kick signal handler");
    });
}

/// Runs vCPU `id` until the VM stops; returns the fd for reuse after a reset.
pub fn run_vcpu(mut vcpu: VcpuFd, id: u32, ctl: Arc<Control>, io: Arc<IoBuses>) -> VcpuFd {
    let flag: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    IMMEDIATE_EXIT.with(|c| c.set(flag));
    while ctl.vcpu_may_run() {
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !io.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                io.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !io.mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                io.mmio.write(addr, data);
            }
            Ok(VcpuExit::Intr) => {}
            Ok(VcpuExit::Shutdown) => {
                let why = format!("vCPU {id}: triple fault; {}", dump(&vcpu));
                ctl.stop(StopReason::Crash(why));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ctl.stop(StopReason::PowerOff),
                KVM_SYSTEM_EVENT_RESET => ctl.stop(StopReason::Reset),
                KVM_SYSTEM_EVENT_CRASH => {
                    let why = format!("vCPU {id}: guest reported a crash; {}", dump(&vcpu));
                    ctl.stop(StopReason::Crash(why));
                }
                other => log::warn!("vCPU {id}: ignoring system event {other}"),
            },
            Ok(VcpuExit::InternalError) => {
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                // `internal` member of the union is the valid one.
                let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let why = format!(
                    "vCPU {id}: KVM internal error (suberror {sub}; emulation failure if 1); {}",
                    dump(&vcpu)
                );
                ctl.stop(StopReason::Crash(why));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                let why = format!(
                    "vCPU {id}: VM entry failed (reason {reason:#x}, host cpu {cpu}); {}",
                    dump(&vcpu)
                );
                ctl.stop(StopReason::Crash(why));
            }
            Ok(other) => {
                let other = format!("{other:?}");
                let why = format!("vCPU {id}: unexpected exit {other}; {}", dump(&vcpu));
                ctl.stop(StopReason::Crash(why));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => ctl.stop(StopReason::Crash(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        }
    }
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    vcpu.set_kvm_immediate_exit(0);
    log::debug!("vCPU {id} stopped: {}", dump(&vcpu));
    vcpu
}

/// One-line register dump for crash reports.
pub fn dump(vcpu: &VcpuFd) -> String {
    let mut s = String::new();
    match vcpu.get_regs() {
        Ok(r) => {
            let _ = write!(
                s,
                "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
            );
        }
        Err(e) => {
            let _ = write!(s, "registers unavailable: {e}");
        }
    }
    if let Ok(sr) = vcpu.get_sregs() {
        let _ = write!(
            s,
            " cs={:#x} cpl={} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            sr.cs.selector, sr.cs.dpl, sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer
        );
    }
    s
}
