//! Confinement of the VM process (`--confine`): what a guest that takes
//! over its VMM can reach afterwards.
//!
//! The VM process starts as root because it opens root's things (/dev/kvm,
//! images, the console pty; taps come from vmd as descriptors). Once the
//! VM is built it needs none of that again, only the descriptors it holds,
//! so it gives everything else up, in two steps:
//!
//! 1. [`enter_namespaces`], first thing, while the process has one thread
//!    (namespaces belong to threads; only a lone thread takes the whole
//!    process along): its own IPC and UTS namespaces, an empty network
//!    namespace (vmd's, shared by its VM processes), which is why every
//!    tap must come as a descriptor. The host's files stay visible until
//!    the VM is built. Then [`fork_into_pid_namespace`] (or vmd started
//!    the process as PID 1 of a PID namespace already): a PID
//!    namespace takes only the caller's children, so the process forks
//!    and the child, PID 1 of a namespace of its own, is the VM process:
//!    it sees no other process, so it can signal none.
//! 2. [`lock_down`], when the VM is built, before the guest runs: a mount
//!    namespace of its own, copied from one whose root is an empty
//!    read-only tmpfs (`jail`; vmd makes that once for all), the
//!    unprivileged uid and gid (glibc applies them to every thread; a
//!    non-root uid has no capabilities), no_new_privs, a landlock domain
//!    with no file system or network access, and a seccomp filter that
//!    allows the system calls a running VM makes and kills the process on
//!    any other. It runs while the process has one thread (the VM is
//!    built, nothing started yet), so every thread inherits all of it.
//! 3. Each thread the VM starts then narrows itself to what its kind
//!    needs (vCPU, disk, net, rng, console input, control, signals), with
//!    a second filter of its own, and so does the main thread
//!    ([`threads`]).
//!
//! The kernel is read again at every guest reset: from the descriptor its
//! path names (`/proc/self/fd/N`, see `vm::boot::open_regular`), as
//! /proc is gone too.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

mod screen;
mod threads;
mod tighten;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Allows `calls` whatever their arguments.
fn allow(rules: &mut Rules, calls: &[libc::c_long]) {
    for &nr in calls {
        rules.insert(nr, Vec::new());
    }
}

/// Allows `nr` when all of `args` (argument index, value; compared as the
/// kernel's 32-bit int, which is what ioctl requests, fcntl commands and
/// signal numbers are) hold; another call of `allow_if` for the same `nr`
/// adds an alternative.
fn allow_if(rules: &mut Rules, nr: libc::c_long, args: &[(u8, u64)]) -> Result<(), String> {
    let conditions = args
        .iter()
        .map(|&(i, v)| SeccompCondition::new(i, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v))
        .collect::<Result<Vec<_>, _>>()
        .and_then(SeccompRule::new)
        .map_err(|e| format!("seccomp rule for call {nr}: {e}"))?;
    rules.entry(nr).or_default().push(conditions);
    Ok(())
}

/// Allows `nr` when argument `arg` is one of `values`.
fn allow_arg_in(
    rules: &mut Rules,
    nr: libc::c_long,
    arg: u8,
    values: &[u64],
) -> Result<(), String> {
    for &v in values {
        allow_if(rules, nr, &[(arg, v)])?;
    }
    Ok(())
}

/// What a system call outside the allowlist does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnViolation {
    /// The process is killed (SIGSYS): the default.
    Kill,
    /// The call goes through and the kernel logs it (the audit log, dmesg):
    /// for finding what the allowlist misses, never for VMs one trusts.
    Log,
}

/// Who the VM process becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// `UID:GID`, neither 0.
pub fn parse_identity(s: &str) -> Result<Identity, String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: UID:GID expected"))?;
    let id = |v: &str| -> Result<u32, String> {
        match v.parse::<u32>() {
            Ok(0) => Err(format!("{s:?}: root is not a confinement")),
            Ok(n) if n != u32::MAX => Ok(n),
            _ => Err(format!("{s:?}: {v:?} is not an id")),
        }
    };
    Ok(Identity {
        uid: id(u)?,
        gid: id(g)?,
    })
}

fn check(rc: libc::c_int, what: &str) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", io::Error::last_os_error()))
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in a constant")
}

/// Step 1: new IPC and UTS namespaces for the process, a network
/// namespace (`netns`, which vmd made for its VM processes to share, else
/// a new one), and, with `pid`, a new PID namespace for its next child
/// (see [`fork_into_pid_namespace`], which must follow; without, the
/// process is PID 1 of one already: see [`session_as_pid_1`]). Returns
/// the mount namespace whose empty root [`lock_down`] gives the process a
/// copy of: `root`, which vmd made for its VM processes to copy, else one
/// made now (`jail`). Must run while the process has a single thread.
pub fn enter_namespaces(
    netns: Option<BorrowedFd>,
    root: Option<OwnedFd>,
    pid: bool,
) -> Result<OwnedFd, String> {
    let root = match root {
        Some(r) => r,
        None => jail::make().map_err(|e| format!("the empty root: {e}"))?,
    };
    let mut flags = libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if pid {
        flags |= libc::CLONE_NEWPID;
    }
    match netns {
        // SAFETY: setns on a descriptor the caller holds open.
        Some(ns) => check(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            "joining vmd's network namespace",
        )?,
        None => flags |= libc::CLONE_NEWNET,
    }
    // SAFETY: unshare with valid flags, sethostname with a buffer of that
    // length.
    unsafe {
        check(libc::unshare(flags), "unshare")?;
        let host = cstr("vmm");
        check(libc::sethostname(host.as_ptr(), 3), "sethostname")?;
    }
    Ok(root)
}

/// Step 1b for a process vmd started as PID 1 of a PID namespace of its
/// own (`vmm --pid-ns`), instead of [`fork_into_pid_namespace`]: checks
/// that it is, and starts a session of its own, for the reason the
/// forked child does (see there).
pub fn session_as_pid_1() -> Result<(), String> {
    let pid = std::process::id();
    if pid != 1 {
        return Err(format!(
            "--pid-ns: this process is {pid}, not PID 1 of a PID namespace"
        ));
    }
    // SAFETY: a plain system call.
    if unsafe { libc::setsid() } < 0 {
        return Err(format!("setsid: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Signals the parent of a VM process run by hand passes on to it: it
/// stands for the VM process to whoever started it (SIGKILL, which it
/// cannot pass on, takes the child along through PR_SET_PDEATHSIG).
/// Faults and job control are its own.
fn forwarded() -> libc::sigset_t {
    // SAFETY: plain sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGTERM,
            libc::SIGCONT,
            libc::SIGWINCH,
            libc::SIGURG,
            libc::SIGPWR,
            libc::SIGXCPU,
            libc::SIGXFSZ,
            libc::SIGVTALRM,
            libc::SIGPROF,
            libc::SIGIO,
            libc::SIGCHLD,
        ] {
            libc::sigaddset(&mut set, s);
        }
        for s in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Writes all of `buf` to `fd`.
fn write_all(fd: libc::c_int, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writes from a live buffer of that length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Step 1b, after [`enter_namespaces`]: forks; returns in the child, PID
/// 1 of the new PID namespace, which goes on as the VM process with every
/// descriptor and setting the process had (it is still single-threaded:
/// nothing is lost in the fork, and no seccomp filter exists yet). The
/// parent never returns. Under vmd (`report_to`, the control socket) it
/// writes the child's pid, as vmd sees it, as the channel's first line
/// (`api::vmproc::Forked`) and exits with status 0: the child is then
/// vmd's (a child subreaper), which reaps it with its exit status. Run by
/// hand, it stays, passes signals on (see [`forwarded`]) and exits as the
/// child did. The child goes on only once the parent has done its part
/// (a byte on a pipe), so nothing precedes the pid on the channel and no
/// VM runs that its parent could not account for.
pub fn fork_into_pid_namespace(report_to: Option<libc::c_int>) -> Result<(), String> {
    let mut go = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `go`.
    check(
        unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe",
    )?;
    let set = forwarded();
    // SAFETY: a zeroed sigset is valid storage for the old mask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // Blocked before the fork so that none is lost (or kills the parent)
    // in between; the child gets its mask back.
    // SAFETY: valid sets.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    // SAFETY: the process has one thread: the child is a whole copy.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: as above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            libc::close(go[0]);
            libc::close(go[1]);
        }
        return Err(format!("fork: {e}"));
    }
    if pid == 0 {
        // SAFETY: restoring the mask, closing our copy of the write end,
        // reading one byte into a local.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            libc::close(go[1]);
            if report_to.is_none() {
                // Whoever kills the parent (SIGKILL included) kills the VM.
                check(
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
                    "PR_SET_PDEATHSIG",
                )?;
            }
            let mut b = 0u8;
            let n = loop {
                let n = libc::read(go[0], (&mut b as *mut u8).cast(), 1);
                if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break n;
                }
            };
            if n != 1 {
                return Err("the parent process exited before the VM could start".into());
            }
            match report_to {
                // Hangs up when the parent exits: see `rearm_parent_death`.
                None => PARENT.store(go[0], Ordering::Relaxed),
                Some(_) => {
                    libc::close(go[0]);
                    // A session of its own (it has no terminal; its pty's
                    // master is opened O_NOCTTY): when vmd dies while the
                    // VM process is stopped (SIGSTOP), its process group
                    // would be orphaned with a stopped member, and the
                    // kernel would send it SIGHUP (a stop signal: the
                    // guest would be shut down) and SIGCONT. Not across
                    // sessions.
                    if libc::setsid() < 0 {
                        return Err(format!("setsid: {}", io::Error::last_os_error()));
                    }
                }
            }
        }
        return Ok(());
    }
    // SAFETY: closing our copy of the read end.
    unsafe { libc::close(go[0]) };
    if let Some(fd) = report_to {
        let mut line = serde_json::to_vec(&api::vmproc::Forked { forked: pid as u32 })
            .expect("a number serialises");
        line.push(b'\n');
        let status = match write_all(fd, &line).and_then(|()| write_all(go[1], &[1])) {
            Ok(()) => 0,
            Err(e) => {
                // The child reads EOF and exits.
                crate::say(format_args!(
                    "--confine: telling vmd the VM process's pid: {e}"
                ));
                1
            }
        };
        std::process::exit(status);
    }
    // The write end stays open until the parent exits.
    if let Err(e) = write_all(go[1], &[1]) {
        // SAFETY: a signal to our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return Err(format!("starting the VM process: {e}"));
    }
    pass_signals_until_exit(pid, &set)
}

/// Run by hand, the VM process's end of a pipe whose other end its parent
/// holds until it exits (-1 under vmd).
static PARENT: AtomicI32 = AtomicI32::new(-1);

/// A change of uid or gid clears the parent-death signal: set again
/// after one, and the parent checked to be still there (it may have died
/// in between), by its pipe.
fn rearm_parent_death() -> Result<(), String> {
    let fd = PARENT.load(Ordering::Relaxed);
    if fd < 0 {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments; poll on a local.
    unsafe {
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
            "PR_SET_PDEATHSIG",
        )?;
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut p, 1, 0) != 0 {
            return Err("the parent process exited".into());
        }
    }
    Ok(())
}

/// The parent of a VM process run by hand: passes on the signals in `set`
/// that a process sent (those of the terminal reach the child as well:
/// they go to the process group) until `child` exits, then exits as it
/// did, by the same signal if it was killed.
fn pass_signals_until_exit(child: libc::pid_t, set: &libc::sigset_t) -> ! {
    loop {
        // SAFETY: a zeroed siginfo is valid storage; `set` is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sig = unsafe { libc::sigwaitinfo(set, &mut info) };
        if sig < 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            if matches!(
                info.si_code,
                libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL
            ) {
                // SAFETY: our child, not reaped yet: the pid is its own.
                unsafe { libc::kill(child, sig) };
            }
            continue;
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } != child {
            continue;
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            // SAFETY: the default action of the signal that ended the
            // child (without a core: the child's was the one), unblocked,
            // raised on ourselves.
            unsafe {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                libc::signal(sig, libc::SIG_DFL);
                let mut one: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut one);
                libc::sigaddset(&mut one, sig);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
                libc::raise(sig);
            }
            std::process::exit(128 + sig);
        }
        std::process::exit(libc::WEXITSTATUS(status));
    }
}

/// Step 2: a mount namespace of its own with `root`'s empty root (from
/// [`enter_namespaces`]), `who`'s ids, no_new_privs and the filter.
pub fn lock_down(who: Identity, root: OwnedFd, on_violation: OnViolation) -> Result<(), String> {
    // Landlock binds only the thread that asks and those it starts later:
    // every other thread would escape it. A thread that was just joined
    // may still be listed for a moment: the join returns once it has let
    // go of its stack, before the kernel has taken it off the list.
    let count = || std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    let mut threads = count();
    let since = std::time::Instant::now();
    while threads > 1 && since.elapsed() < std::time::Duration::from_millis(500) {
        std::thread::sleep(std::time::Duration::from_micros(100));
        threads = count();
    }
    if threads != 1 {
        return Err(format!(
            "{threads} threads: confinement must begin with one (landlock binds only the caller)"
        ));
    }
    // Built before anything is taken away (it allocates).
    let filter = filter(on_violation)?;
    let each = threads::filters(on_violation)?;
    // glibc's malloc reads /sys/devices/system/cpu/online the first time
    // a thread needs an arena beyond the first few, to bound how many it
    // makes (8 per CPU): a device thread started later would be killed
    // for that open. The same bound, given now, spares it the reading.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = libc::c_int::try_from(cpus * 8).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets a malloc parameter.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
        return Err("mallopt(M_ARENA_MAX) failed".into());
    }
    jail::join(root.as_fd()).map_err(|e| format!("the empty root: {e}"))?;
    drop(root);
    // SAFETY: plain credential calls; glibc runs them on every thread.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(who.gid, who.gid, who.gid), "setresgid")?;
        check(libc::setresuid(who.uid, who.uid, who.uid), "setresuid")?;
        // No way back: a uid of 0 in any slot would be one.
        if libc::setresuid(0, 0, 0) == 0 {
            return Err("setresuid: root could be regained".into());
        }
    }
    rearm_parent_death()?;
    landlock()?;
    // seccompiler sets no_new_privs (landlock did already); TSYNC carries
    // the filter to every thread there may be.
    seccompiler::apply_filter_all_threads(&filter).map_err(|e| format!("seccomp: {e}"))?;
    // Then each thread the VM starts narrows itself to its kind's.
    threads::confine_each(each)
}

/// A landlock domain that allows no file system access, no TCP bind or
/// connect, no signals to processes outside it and no abstract Unix
/// sockets outside it: under the empty root and the seccomp filter, a
/// third wall, which holds even for a call the filter lets through.
/// Descriptors opened before keep working (landlock checks at open). A
/// kernel without landlock (or with an older ABI) enforces what it can;
/// that is logged, not refused: the other walls stand.
fn landlock() -> Result<(), String> {
    use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};
    let abi = ABI::V6;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("landlock: {e}"))?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => {}
        RulesetStatus::PartiallyEnforced => log::warn!("landlock: partly enforced by this kernel"),
        RulesetStatus::NotEnforced => log::warn!("landlock: not supported by this kernel"),
    }
    Ok(())
}

/// The system calls a built VM makes, from every thread: vCPUs (KVM
/// ioctls, signals that kick them), device threads (disk and tap I/O,
/// eventfds, epoll), the control, console and signal threads, threads
/// that start later (a device the driver enables), and the allocator.
/// Found with strace over the test guests (boot, disks raw and qcow2,
/// network, guest tools, reset, power-off) and a log-mode run of the test
/// suite. No open, no exec, no socket, no connect, no ptrace, no mount.
const ALLOWED: &[libc::c_long] = &[
    // KVM, disks' block ioctls, taps' offload settings.
    libc::SYS_ioctl,
    // Descriptors held: console, control socket, taps, images, eventfds.
    libc::SYS_read,
    libc::SYS_write,
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
    libc::SYS_fstatfs,
    libc::SYS_fcntl,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    // The control thread, re-attaching to a new vmd (control::accept_vmd):
    // a connection on the socket vmd handed over, its peer's uid, the new
    // stderr put in place.
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_dup3,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    // Memory.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    // Threads and their synchronisation.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_prctl,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Signals: stop signals, vCPU kicks.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_restart_syscall,
    // Time and entropy.
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
];

/// What a call the filter does not allow does.
fn mismatch(on_violation: OnViolation) -> SeccompAction {
    match on_violation {
        OnViolation::Kill => SeccompAction::KillProcess,
        OnViolation::Log => SeccompAction::Log,
    }
}

/// `rules` as a filter: a screen (see `screen`) that allows the calls
/// they allow whatever the arguments, in front of seccompiler's filter of
/// the others (tightened, see `tighten`); seccompiler's filter of them all
/// where the screen would not fit.
fn compile(rules: Rules, on_violation: OnViolation) -> Result<BpfProgram, String> {
    let allowed: Vec<i64> = rules
        .iter()
        .filter(|(_, r)| r.is_empty())
        .map(|(&nr, _)| nr)
        .collect();
    let checked: Vec<i64> = rules
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(&nr, _)| nr)
        .collect();
    match screen::screen(&checked, &allowed, mismatch(on_violation).into()) {
        Some(mut screened) => {
            let rest = rules.into_iter().filter(|(_, r)| !r.is_empty()).collect();
            screened.extend(chain(rest, on_violation)?);
            Ok(screened)
        }
        None => chain(rules, on_violation),
    }
}

/// seccompiler's filter of `rules`, tightened.
fn chain(rules: Rules, on_violation: OnViolation) -> Result<BpfProgram, String> {
    SeccompFilter::new(
        rules,
        mismatch(on_violation),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .and_then(TryInto::<BpfProgram>::try_into)
    .map(tighten::tighten)
    .map_err(|e| format!("seccomp filter: {e}"))
}

/// The process-wide filter's list.
fn process_rules() -> Result<Rules, String> {
    let mut rules = Rules::new();
    allow(&mut rules, ALLOWED);
    // A thread narrows itself (see `threads`): a new filter, no flags
    // (no TSYNC, no listener), which can only take away.
    allow_if(
        &mut rules,
        libc::SYS_seccomp,
        &[(0, libc::SECCOMP_SET_MODE_FILTER.into()), (1, 0)],
    )?;
    Ok(rules)
}

/// The process-wide filter: the ceiling of every thread, those nobody
/// thought of included.
fn filter(on_violation: OnViolation) -> Result<BpfProgram, String> {
    compile(process_rules()?, on_violation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        assert_eq!(
            parse_identity("2130706433:2130706433"),
            Ok(Identity {
                uid: 2130706433,
                gid: 2130706433
            })
        );
        for bad in ["0:5", "5:0", "5", "x:5", "5:4294967295", ""] {
            assert!(parse_identity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_filter_compiles() {
        assert!(!filter(OnViolation::Kill).unwrap().is_empty());
        assert!(!filter(OnViolation::Log).unwrap().is_empty());
    }

    /// Tightened, and screened as installed, every filter decides as
    /// seccompiler's own output does: for every call number, and for the
    /// calls it lists, with argument values around those it compares with.
    #[test]
    fn tightened_and_screened_filters_decide_the_same() {
        use tighten::tests::{probes, run};
        let mut all = Vec::new();
        for on in [OnViolation::Kill, OnViolation::Log] {
            all.push(("process", on, process_rules().unwrap()));
            for &k in threads::KINDS {
                all.push(("kind", on, threads::rules_of(k).unwrap()));
            }
        }
        for (what, on, rules) in all {
            let listed: Vec<u32> = rules.keys().map(|&n| n as u32).collect();
            let screened = compile(rules.clone(), on).unwrap();
            let raw: BpfProgram = SeccompFilter::new(
                rules,
                mismatch(on),
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .and_then(TryInto::try_into)
            .unwrap();
            let tight = tighten::tighten(raw.clone());
            assert!(
                tight.len() < raw.len(),
                "{what}: {} of {}",
                tight.len(),
                raw.len()
            );
            eprintln!(
                "LEN {what} raw {} tight {} screened {}",
                raw.len(),
                tight.len(),
                screened.len()
            );
            let arch = 0xc000_003e;
            for nr in 0..600 {
                let args = [0; 6];
                let want = run(&raw, arch, nr, &args);
                assert_eq!(run(&tight, arch, nr, &args), want, "{what} {nr}");
                assert_eq!(run(&screened, arch, nr, &args), want, "{what} {nr}");
            }
            for p in [&tight, &screened] {
                assert_eq!(
                    run(p, 0x4000_0003, 1, &[0; 6]),
                    run(&raw, 0x4000_0003, 1, &[0; 6])
                );
            }
            let values = probes(&raw);
            for nr in listed {
                for &v in &values {
                    let mut tries = vec![[v; 6]];
                    for pos in 0..6 {
                        let mut a = [0; 6];
                        a[pos] = v;
                        tries.push(a);
                    }
                    for a in tries {
                        let want = run(&raw, arch, nr, &a);
                        assert_eq!(run(&tight, arch, nr, &a), want, "{what} {nr} {a:?}");
                        assert_eq!(run(&screened, arch, nr, &a), want, "{what} {nr} {a:?}");
                    }
                }
            }
        }
    }

    /// The screen fits in front of every filter (its jumps reach): what
    /// is installed ends with the chain of the calls whose arguments are
    /// checked, not of them all.
    #[test]
    fn every_filter_is_screened() {
        let mut all = vec![process_rules().unwrap()];
        all.extend(
            threads::KINDS
                .iter()
                .map(|&k| threads::rules_of(k).unwrap()),
        );
        for rules in all {
            let checked: Rules = rules
                .iter()
                .filter(|(_, r)| !r.is_empty())
                .map(|(&n, r)| (n, r.clone()))
                .collect();
            let bare = chain(checked, OnViolation::Kill).unwrap();
            let screened = compile(rules, OnViolation::Kill).unwrap();
            assert!(screened.len() > bare.len(), "no screen");
            assert!(screened.ends_with(&bare));
        }
    }
}
