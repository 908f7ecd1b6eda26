//! The root confined VM processes see: an empty, read-only tmpfs, made
//! once when vmd starts ([`make`]), alone in a mount namespace that each
//! VM process then copies ([`join`]: setns(2) into it, unshare(2) out of
//! it) instead of building its own root. A VM process run by hand makes
//! its own the same way.
//!
//! A VM process needs no file system: vmd opens what it needs and hands
//! it over. Built per VM, the empty root cost the kernel a copy of every
//! host mount (unshare), a walk of every task on the host (pivot_root), a
//! tmpfs instance and, at the VM's end, the teardown of all of those
//! again; copied from here, each VM's namespace has two mounts (the
//! namespace's root and this tmpfs over it), read-only and empty: nothing
//! one VM process could leave there for another. Each still has a mount
//! namespace of its own (`vmm` unshares one after joining this).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

fn check(r: libc::c_int, what: &str) -> Result<(), String> {
    match r {
        0 => Ok(()),
        _ => Err(format!("{what}: {}", io::Error::last_os_error())),
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in a constant")
}

/// Makes the namespace ([`namespace`]), the empty root in it.
pub fn make() -> Result<OwnedFd, String> {
    namespace("mntns", libc::CLONE_NEWNS, "mnt", empty_root)
}

/// A new namespace of kind `flag` (`kind` its name under
/// /proc/thread-self/ns), made by a thread `name` of its own, which does
/// `then` in it before it ends: unshare(2) moves only the calling thread
/// (of a mount namespace, with a file system context of its own), so the
/// caller's other threads stay where they are. The namespace lives while
/// the returned descriptor (opened before `then`: it names the namespace
/// whatever `then` mounts or unmounts in it) or a process in it does.
pub fn namespace(
    name: &str,
    flag: libc::c_int,
    kind: &str,
    then: fn() -> Result<(), String>,
) -> Result<OwnedFd, String> {
    let path = format!("/proc/thread-self/ns/{kind}");
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // SAFETY: unshare with a valid flag; it changes this thread
            // only, which ends below.
            check(unsafe { libc::unshare(flag) }, "unshare")?;
            let ns = std::fs::File::open(&path)
                .map(OwnedFd::from)
                .map_err(|e| format!("{path}: {e}"))?;
            then()?;
            Ok(ns)
        })
        .map_err(|e| format!("a thread: {e}"))?
        .join()
        .map_err(|_| "the thread panicked".to_string())?
}

/// Step 2 of a VM process's confinement: the process (which must have a
/// single thread: the kernel moves no process whose file system context
/// is shared) enters a mount namespace of its own, a copy of `template`'s
/// (from [`make`]), its root and working directory that empty root.
pub fn join(template: BorrowedFd) -> Result<(), String> {
    let slash = cstr("/");
    // SAFETY: setns on a descriptor the caller holds open, then unshare
    // and chdir with valid arguments.
    unsafe {
        check(
            libc::setns(template.as_raw_fd(), libc::CLONE_NEWNS),
            "joining the empty root's mount namespace",
        )?;
        check(libc::unshare(libc::CLONE_NEWNS), "unshare")?;
        check(libc::chdir(slash.as_ptr()), "chdir /")?;
    }
    Ok(())
}

/// In this thread's new namespace: the mounts made private (nothing done
/// here reaches the host), a tmpfs as the root, the host's detached from
/// it, the tmpfs made read-only.
fn empty_root() -> Result<(), String> {
    let new_root = cstr("/tmp");
    let dot = cstr(".");
    let slash = cstr("/");
    let tmpfs = cstr("tmpfs");
    let opts = cstr("size=4k,mode=0555");
    let none = std::ptr::null();
    // SAFETY: mount, chdir, pivot_root and umount2 with NUL-terminated
    // strings; all of it happens in this thread's own mount namespace.
    unsafe {
        check(
            libc::mount(
                none,
                slash.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            ),
            "making mounts private",
        )?;
        check(
            libc::mount(
                tmpfs.as_ptr(),
                new_root.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                opts.as_ptr().cast(),
            ),
            "mounting the empty root",
        )?;
        check(libc::chdir(new_root.as_ptr()), "chdir")?;
        // pivot_root(".", "."): the old root ends up stacked on the new
        // one, and is detached at once; no directory for it is needed.
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0 {
            return Err(format!("pivot_root: {}", io::Error::last_os_error()));
        }
        check(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
            "detaching the old root",
        )?;
        check(libc::chdir(slash.as_ptr()), "chdir /")?;
        check(
            libc::mount(
                none,
                slash.as_ptr(),
                none,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                none.cast(),
            ),
            "making the empty root read-only",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    /// Needs root (CAP_SYS_ADMIN), as vmd does. A thread with a file
    /// system context of its own joins a copy of the namespace, as a VM
    /// process does, and finds an empty root it cannot write to; this
    /// thread and the host are as they were.
    #[test]
    fn an_empty_read_only_root_apart_from_ours() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let ns = make().unwrap();
        let ours = std::fs::metadata("/proc/self/ns/mnt").unwrap().ino();
        let template = std::fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd()))
            .unwrap()
            .ino();
        assert_ne!(ours, template);
        let seen = std::thread::spawn(move || {
            // A file system context of its own, as a single-threaded
            // process has; then what a VM process does.
            // SAFETY: a plain call that changes this thread only.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_FS) }, 0);
            join(ns.as_fd()).unwrap();
            let copy = std::fs::metadata("/proc/thread-self/ns/mnt").map(|m| m.ino());
            let listed: Vec<_> = std::fs::read_dir("/").unwrap().collect();
            let write = std::fs::File::create("/x").map_err(|e| e.raw_os_error());
            (copy, listed.len(), write.err())
        })
        .join()
        .unwrap();
        // /proc is gone with the host's root: the copy cannot name itself.
        assert!(seen.0.is_err(), "{seen:?}");
        assert_eq!(seen.1, 0, "the root holds something");
        assert_eq!(seen.2, Some(Some(libc::EROFS)));
        let again = std::fs::metadata("/proc/thread-self/ns/mnt").unwrap().ino();
        assert_eq!(again, ours);
        assert!(std::fs::read_dir("/proc").unwrap().next().is_some());
    }
}
