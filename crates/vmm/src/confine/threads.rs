//! A seccomp filter per thread kind, below the process-wide one.
//!
//! Every thread the VM starts (see `vm::threads`) installs its kind's
//! filter on itself first thing, before it reads anything a guest wrote.
//! Filters stack: a call must pass the process-wide filter and the
//! thread's, so a thread's list is what the thread needs, not a way past
//! the ceiling (the lists below repeat calls the ceiling allows, and
//! allowing there what the ceiling forbids would grant nothing). Threads
//! are started by a spawner thread that keeps only the process-wide
//! filter, so that no thread inherits another kind's; the main thread
//! (it runs and resets the VM) installs its own once the spawner is
//! there.
//!
//! Found by strace -f of the test guests (boot, SMP, reset, disks raw and
//! qcow2, network, guest tools, pause, stop) and by reading what each
//! thread runs; see vmm(8) for the summary.

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

use kvm_bindings::{
    kvm_fpu, kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irqchip, kvm_irqfd,
    kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, KVMIO,
};
use seccompiler::{BpfProgram, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use vm::threads::ThreadKind;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

use super::{allow, allow_arg_in, allow_if, compile, OnViolation, Rules};

// The KVM requests the VM's threads make, numbered as in kvm-ioctls.
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
// And those of a guest reset, on the main thread.
// _IOR, as the kernel has it (a historical slip kept for the ABI).
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);

/// Every kind, each with a filter.
pub const KINDS: &[ThreadKind] = &[
    ThreadKind::Vcpu,
    ThreadKind::Disk,
    ThreadKind::Net,
    ThreadKind::Rng,
    ThreadKind::ConsoleIn,
    ThreadKind::Control,
    ThreadKind::Signals,
    ThreadKind::Main,
];

/// What every thread does whatever its kind (besides mapping memory, see
/// `no_exec`): memory, locks, sleeping, logging (stderr), ending (itself,
/// or the process: a panic aborts), and the runtime's bits (the random
/// keys of hash maps, the signal stack it takes down at exit).
const COMMON: &[libc::c_long] = &[
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_write,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Memory may be mapped and its protection changed, but never made
/// executable: no thread runs code it did not start with.
fn no_exec(r: &mut Rules) -> Result<(), String> {
    for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
        let exec = libc::PROT_EXEC as u64;
        let rule =
            SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(exec), 0)
                .and_then(|c| SeccompRule::new(vec![c]))
                .map_err(|e| format!("seccomp rule for call {nr}: {e}"))?;
        r.entry(nr).or_default().push(rule);
    }
    Ok(())
}

/// tgkill(2) to this process's threads only, with one of `signals`.
fn to_self(r: &mut Rules, signals: &[u64]) -> Result<(), String> {
    let pid = u64::from(std::process::id());
    for &sig in signals {
        allow_if(r, libc::SYS_tgkill, &[(0, pid), (2, sig)])?;
    }
    Ok(())
}

/// A kind's rules (for the tests of the filters made of them).
#[cfg(test)]
pub(super) fn rules_of(kind: ThreadKind) -> Result<Rules, String> {
    rules(kind)
}

/// A kind's rules.
fn rules(kind: ThreadKind) -> Result<Rules, String> {
    let mut r = Rules::new();
    allow(&mut r, COMMON);
    no_exec(&mut r)?;
    // What a debug build's std asks of every descriptor it closes (is it
    // open?); the flags say nothing worth hiding.
    let getfd = libc::F_GETFD as u64;
    let abort = libc::SIGABRT as u64;
    let kick = vm::vcpu::kick_signal() as u64;
    let dup = libc::F_DUPFD_CLOEXEC as u64;
    // Raising an interrupt: the INTx line (ioctl) or an MSI's irqfd (a
    // write, in COMMON).
    let irq_line = [KVM_IRQ_LINE()];
    match kind {
        // KVM_RUN, the device models its exits reach, and what a driver
        // setting its device up makes them do: registers for the
        // backdoor and crash reports, interrupt lines, MSI routes and
        // irqfds, queue notifiers (ioeventfds) where BARs move, the tap's
        // offloads, the eventfds of a device's queues (made, cloned,
        // drained, closed). Kicks reach the other vCPUs (a stop).
        ThreadKind::Vcpu => {
            let ioctls = [
                KVM_RUN(),
                KVM_GET_REGS(),
                KVM_SET_REGS(),
                KVM_GET_SREGS(),
                KVM_IRQ_LINE(),
                KVM_IRQFD(),
                KVM_IOEVENTFD(),
                KVM_SET_GSI_ROUTING(),
                libc::TUNSETOFFLOAD,
            ];
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &ioctls.map(u64::from))?;
            allow(
                &mut r,
                &[libc::SYS_read, libc::SYS_eventfd2, libc::SYS_close],
            );
            allow_arg_in(&mut r, libc::SYS_fcntl, 1, &[dup, getfd])?;
            to_self(&mut r, &[abort, kick])?;
        }
        // A disk's queue: its image (raw or qcow2, with base images),
        // its eventfds, its interrupt.
        ThreadKind::Disk => {
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &irq_line.map(u64::from))?;
            allow(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_readv,
                    libc::SYS_writev,
                    libc::SYS_pread64,
                    libc::SYS_pwrite64,
                    libc::SYS_preadv,
                    libc::SYS_pwritev,
                    libc::SYS_preadv2,
                    libc::SYS_pwritev2,
                    libc::SYS_lseek,
                    libc::SYS_fsync,
                    libc::SYS_fdatasync,
                    libc::SYS_fallocate,
                    libc::SYS_ftruncate,
                    libc::SYS_fstat,
                    libc::SYS_newfstatat,
                    libc::SYS_statx,
                    libc::SYS_close,
                    libc::SYS_epoll_create1,
                    libc::SYS_epoll_ctl,
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                ],
            );
            allow_arg_in(&mut r, libc::SYS_fcntl, 1, &[getfd])?;
            to_self(&mut r, &[abort])?;
        }
        // An interface: its tap, its eventfds, its interrupt.
        ThreadKind::Net => {
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &irq_line.map(u64::from))?;
            allow(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_readv,
                    libc::SYS_writev,
                    libc::SYS_close,
                    libc::SYS_epoll_create1,
                    libc::SYS_epoll_ctl,
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                ],
            );
            allow_arg_in(&mut r, libc::SYS_fcntl, 1, &[getfd])?;
            to_self(&mut r, &[abort])?;
        }
        // Entropy (getrandom, in COMMON), its eventfds, its interrupt.
        ThreadKind::Rng => {
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &irq_line.map(u64::from))?;
            allow(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_close,
                    libc::SYS_epoll_create1,
                    libc::SYS_epoll_ctl,
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_pwait,
                ],
            );
            allow_arg_in(&mut r, libc::SYS_fcntl, 1, &[getfd])?;
            to_self(&mut r, &[abort])?;
        }
        // Reads the console (a pty, stdin), raises the serial interrupt.
        ThreadKind::ConsoleIn => {
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &irq_line.map(u64::from))?;
            allow(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_poll,
                    libc::SYS_ppoll,
                    libc::SYS_close,
                ],
            );
            allow_arg_in(&mut r, libc::SYS_fcntl, 1, &[getfd])?;
            to_self(&mut r, &[abort])?;
        }
        // vmd's requests on the control socket, and what they do to the
        // VM: pause, resume, stop (kicks, the ACPI power button), guest
        // tools' messages. Its guest watcher is started by the spawner
        // like every other thread: no clone here. A vmd that comes back is taken on a listening socket, its
        // credentials checked and its stderr received.
        ThreadKind::Control => {
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &irq_line.map(u64::from))?;
            allow(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_close,
                    libc::SYS_poll,
                    libc::SYS_ppoll,
                    libc::SYS_recvmsg,
                    libc::SYS_sendmsg,
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_shutdown,
                    libc::SYS_accept4,
                    libc::SYS_getsockopt,
                    libc::SYS_dup3,
                ],
            );
            allow_arg_in(&mut r, libc::SYS_fcntl, 1, &[dup, getfd])?;
            to_self(&mut r, &[abort, kick])?;
        }
        // Takes the stop signals; a stop asks the guest (its tools, the
        // ACPI power button) or powers the VM off (kicks).
        ThreadKind::Signals => {
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &irq_line.map(u64::from))?;
            allow(&mut r, &[libc::SYS_rt_sigtimedwait]);
            allow_arg_in(&mut r, libc::SYS_fcntl, 1, &[getfd])?;
            to_self(&mut r, &[abort, kick])?;
        }
        // Once the VM is built: starting and joining the vCPU threads
        // (a stop kicks them), and the guest resets: interrupt
        // controllers, devices back to power-on (their threads joined,
        // ioeventfds, MSI routes, offloads, interrupt lines), the kernel
        // and initial ramdisk read again from their descriptors, the
        // vCPUs' power-on state; then the last word to vmd.
        ThreadKind::Main => {
            let ioctls = [
                KVM_SET_IRQCHIP(),
                KVM_SET_PIT2(),
                KVM_GET_REGS(),
                KVM_SET_REGS(),
                KVM_GET_SREGS(),
                KVM_SET_SREGS(),
                KVM_SET_FPU(),
                KVM_SET_MSRS(),
                KVM_SET_LAPIC(),
                KVM_SET_MP_STATE(),
                KVM_IRQ_LINE(),
                KVM_IRQFD(),
                KVM_IOEVENTFD(),
                KVM_SET_GSI_ROUTING(),
                libc::TUNSETOFFLOAD,
            ];
            allow_arg_in(&mut r, libc::SYS_ioctl, 1, &ioctls.map(u64::from))?;
            allow(
                &mut r,
                &[
                    libc::SYS_read,
                    libc::SYS_pread64,
                    libc::SYS_readv,
                    libc::SYS_preadv,
                    libc::SYS_lseek,
                    libc::SYS_fstat,
                    libc::SYS_newfstatat,
                    libc::SYS_statx,
                    libc::SYS_eventfd2,
                    libc::SYS_close,
                ],
            );
            allow_arg_in(&mut r, libc::SYS_fcntl, 1, &[dup, getfd])?;
            to_self(&mut r, &[abort, kick])?;
        }
    }
    Ok(r)
}

/// Each kind's filter, compiled.
pub fn filters(on_violation: OnViolation) -> Result<HashMap<ThreadKind, BpfProgram>, String> {
    KINDS
        .iter()
        .map(|&k| Ok((k, compile(rules(k)?, on_violation)?)))
        .collect()
}

static FILTERS: OnceLock<HashMap<ThreadKind, BpfProgram>> = OnceLock::new();

/// From now on each thread the VM starts installs its kind's filter
/// (from `filters`) on itself first; the caller, the main thread, installs
/// its own now.
pub fn confine_each(filters: HashMap<ThreadKind, BpfProgram>) -> Result<(), String> {
    FILTERS
        .set(filters)
        .map_err(|_| "thread filters set twice".to_owned())?;
    vm::threads::confine_each(on_thread_start).map_err(|e| format!("the spawner thread: {e}"))?;
    // The spawner has the process's filter alone; the caller, the main
    // thread, narrows itself now (it starts no thread itself any more).
    let main = FILTERS.get().and_then(|f| f.get(&ThreadKind::Main));
    let main = main.ok_or("no filter for the main thread")?;
    seccompiler::apply_filter(main).map_err(|e| format!("seccomp for the main thread: {e}"))
}

/// The hook: a thread that cannot confine itself must not run, nor let
/// the VM run on without it.
fn on_thread_start(kind: ThreadKind) {
    let Some(filter) = FILTERS.get().and_then(|f| f.get(&kind)) else {
        let _ = writeln!(
            std::io::stderr(),
            "vmm: no seccomp filter for {kind:?} threads"
        );
        std::process::abort();
    };
    if let Err(e) = seccompiler::apply_filter(filter) {
        let _ = writeln!(std::io::stderr(), "vmm: seccomp for a {kind:?} thread: {e}");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for on in [OnViolation::Kill, OnViolation::Log] {
            let f = filters(on).unwrap();
            assert_eq!(f.len(), KINDS.len());
            assert!(f.values().all(|p| !p.is_empty()));
        }
    }

    /// A vCPU thread's rules, installed on a thread of this test process
    /// with EPERM for what they leave out (not the kill: the filter
    /// binds only that thread), against the calls themselves.
    #[test]
    fn a_vcpu_thread_is_refused_what_its_rules_leave_out() {
        use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
        let rules = rules(ThreadKind::Vcpu).unwrap();
        let filter: BpfProgram = SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .and_then(TryInto::try_into)
        .unwrap();
        let errno = || std::io::Error::last_os_error().raw_os_error();
        let seen = std::thread::spawn(move || {
            seccompiler::apply_filter(&filter).unwrap();
            let mut seen = Vec::new();
            // SAFETY: plain calls on nothing this test owns: a bad
            // descriptor, fresh anonymous mappings, no signal sent.
            unsafe {
                let map = |prot| {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        prot,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                let rw = map(libc::PROT_READ | libc::PROT_WRITE);
                seen.push(("mmap rw", rw != libc::MAP_FAILED));
                let rx = map(libc::PROT_READ | libc::PROT_EXEC);
                seen.push((
                    "mmap exec",
                    rx != libc::MAP_FAILED || errno() != Some(libc::EPERM),
                ));
                let mx = libc::mprotect(rw, 4096, libc::PROT_READ | libc::PROT_EXEC);
                seen.push(("mprotect exec", mx == 0 || errno() != Some(libc::EPERM)));
                libc::munmap(rw, 4096);
                let mut m: libc::msghdr = std::mem::zeroed();
                libc::recvmsg(-1, &mut m, 0);
                seen.push(("recvmsg", errno() != Some(libc::EPERM)));
                libc::ioctl(-1, KVM_RUN() as _);
                seen.push(("KVM_RUN", errno() != Some(libc::EPERM)));
                libc::ioctl(-1, libc::FIONBIO);
                seen.push(("FIONBIO", errno() != Some(libc::EPERM)));
                // Another process (one there cannot be: past pid_max):
                // the filter's EPERM, not the kernel's ESRCH.
                libc::syscall(libc::SYS_tgkill, 0x3fff_fff0, 0x3fff_fff0, libc::SIGABRT);
                seen.push(("tgkill another", errno() != Some(libc::EPERM)));
                let pid = libc::getpid();
                libc::syscall(libc::SYS_tgkill, pid, -1, libc::SIGTERM);
                seen.push(("tgkill SIGTERM", errno() != Some(libc::EPERM)));
            }
            seen
        })
        .join()
        .unwrap();
        let want = [
            ("mmap rw", true),
            ("mmap exec", false),
            ("mprotect exec", false),
            ("recvmsg", false),
            ("KVM_RUN", true),
            ("FIONBIO", false),
            ("tgkill another", false),
            ("tgkill SIGTERM", false),
        ];
        assert_eq!(seen, want);
    }

    /// What no thread may do: threads are started by the spawner alone.
    #[test]
    fn the_lists_leave_out_what_they_should() {
        for &k in KINDS {
            let r = rules(k).unwrap();
            for nr in [
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_prctl,
                libc::SYS_seccomp,
                libc::SYS_rt_sigaction,
            ] {
                assert!(!r.contains_key(&nr), "{k:?} allows call {nr}");
            }
            let spawns = r.contains_key(&libc::SYS_clone) || r.contains_key(&libc::SYS_clone3);
            assert!(!spawns, "{k:?} may start threads");
        }
        // A vCPU does no disk I/O and has no sockets.
        let v = rules(ThreadKind::Vcpu).unwrap();
        for nr in [
            libc::SYS_pwrite64,
            libc::SYS_pwritev,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_accept4,
            libc::SYS_epoll_wait,
        ] {
            assert!(!v.contains_key(&nr), "vCPU allows call {nr}");
        }
        // ioctl only with conditions, everywhere.
        for &k in KINDS {
            let r = rules(k).unwrap();
            assert!(!r[&libc::SYS_ioctl].is_empty(), "{k:?}");
        }
    }
}
