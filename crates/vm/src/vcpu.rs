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

use devices::GuestRegs;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
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

/// An I/O exit for a [`devices::RegsDevice`], handled once the borrow of
/// the exit data has ended (the device needs the vCPU's registers too).
/// The data pointer targets the vCPU's mmap'ed `kvm_run`, valid while the
/// vCPU fd lives.
struct RegsIo {
    port: u16,
    input: bool,
    data: *mut u8,
    len: usize,
}

/// Runs vCPU `id` until the VM stops; returns the fd for reuse after a reset.
pub fn run_vcpu(mut vcpu: VcpuFd, id: u32, ctl: Arc<Control>, io: Arc<IoBuses>) -> VcpuFd {
    let flag: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    IMMEDIATE_EXIT.with(|c| c.set(flag));
    // With KVM_CAP_SYNC_REGS, KVM copies the GPRs into kvm_run at every exit
    // and back on entry when marked dirty: no GET/SET_REGS ioctls for the
    // backdoor, whose OpenBSD bulk transfer makes one exit per byte.
    let sync_regs = io.sync_regs;
    if sync_regs && io.regs_dev.is_some() {
        vcpu.set_sync_valid_reg(SyncReg::Register);
    }
    while ctl.vcpu_may_run() {
        let mut regs_io = None;
        let exit = vcpu.run();
        if matches!(
            exit,
            Ok(VcpuExit::IoIn(..)
                | VcpuExit::IoOut(..)
                | VcpuExit::MmioRead(..)
                | VcpuExit::MmioWrite(..))
        ) {
            io.drain_coalesced();
        }
        match exit {
            Ok(VcpuExit::IoIn(port, data)) if io.is_regs_port(port) => {
                regs_io = Some(RegsIo {
                    port,
                    input: true,
                    data: data.as_mut_ptr(),
                    len: data.len(),
                });
            }
            Ok(VcpuExit::IoOut(port, data)) if io.is_regs_port(port) => {
                let (ptr, len) = (data.as_ptr() as *mut u8, data.len());
                regs_io = Some(RegsIo {
                    port,
                    input: false,
                    data: ptr,
                    len,
                });
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !io.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                io.pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !io.mmio_read(addr, data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                io.mmio_write(addr, data);
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
        if let Some(r) = regs_io {
            if let Err(e) = regs_exit(&mut vcpu, &io, &r, sync_regs) {
                ctl.stop(StopReason::Crash(format!(
                    "vCPU {id}: registers for port {:#x}: {e}",
                    r.port
                )));
            }
        }
    }
    IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    vcpu.set_kvm_immediate_exit(0);
    // A VM the host had to power off may have hung: where each vCPU was is
    // the first thing to know, so say it without -v.
    if ctl.stopped_by_host() {
        log::warn!("vCPU {id} at the host's power-off: {}", dump(&vcpu));
    } else {
        log::debug!("vCPU {id} stopped: {}", dump(&vcpu));
    }
    vcpu
}

/// Runs a register-passing device for one I/O exit: registers in, device,
/// registers back (RIP, RSP, RFLAGS untouched) before the next KVM_RUN.
fn regs_exit(
    vcpu: &mut VcpuFd,
    io: &IoBuses,
    r: &RegsIo,
    sync: bool,
) -> Result<(), kvm_ioctls::Error> {
    let Some((_, dev)) = &io.regs_dev else {
        return Ok(());
    };
    let mut kr = if sync {
        vcpu.sync_regs().regs
    } else {
        vcpu.get_regs()?
    };
    let mut g = GuestRegs {
        rax: kr.rax,
        rbx: kr.rbx,
        rcx: kr.rcx,
        rdx: kr.rdx,
        rsi: kr.rsi,
        rdi: kr.rdi,
        rbp: kr.rbp,
    };
    // SAFETY: see `RegsIo`: the slice lies in this vCPU's kvm_run mapping,
    // and nothing else touches it until the next KVM_RUN.
    let data = unsafe { std::slice::from_raw_parts_mut(r.data, r.len) };
    let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
    let changed = if r.input {
        d.io_in(r.port, data, &mut g)
    } else {
        d.io_out(r.port, data, &mut g)
    };
    drop(d);
    if changed {
        kr.rax = g.rax;
        kr.rbx = g.rbx;
        kr.rcx = g.rcx;
        kr.rdx = g.rdx;
        kr.rsi = g.rsi;
        kr.rdi = g.rdi;
        kr.rbp = g.rbp;
        if sync {
            vcpu.sync_regs_mut().regs = kr;
            vcpu.set_sync_dirty_reg(SyncReg::Register);
        } else {
            vcpu.set_regs(&kr)?;
        }
    }
    Ok(())
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
