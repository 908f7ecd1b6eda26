//! `ioperm-exec PROGRAM [ARG...]`: runs PROGRAM with access to the VMware
//! backdoor ports from user space.
//!
//! On real VMware, and on KVM hosts with `kvm.enable_vmware_backdoor=1`,
//! the hypervisor lets ring 3 reach those ports without any I/O privilege,
//! and open-vm-tools relies on it. This project's CI hosts run with
//! `enable_vmware_backdoor=N`, so inside the Linux fixture a user-space
//! `in`/`rep outsb` on them faults unless the process holds I/O permission
//! for them. This wrapper takes exactly that permission (`ioperm(2)`,
//! which Linux keeps across `execve`) and execs the program unchanged.
//! Nothing in the tools is patched or preloaded.
//!
//! The permission covers 0x5658..=0x565b: the CPU checks every port an
//! access touches, and the low-bandwidth call is a 4-byte `in` at 0x5658;
//! the high-bandwidth port 0x5659 is used a byte at a time.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

/// The backdoor's low-bandwidth port; the high-bandwidth one follows it.
const BACKDOOR_PORT: libc::c_ulong = 0x5658;
/// Ports a 32-bit access at the low-bandwidth port touches.
const BACKDOOR_PORTS: libc::c_ulong = 4;

fn main() {
    let args: Vec<CString> = std::env::args_os()
        .skip(1)
        .map(|a| CString::new(a.as_bytes()).expect("no NUL in an argument"))
        .collect();
    if args.is_empty() {
        eprintln!("usage: ioperm-exec PROGRAM [ARG...]");
        std::process::exit(2);
    }
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(BACKDOOR_PORT, BACKDOOR_PORTS, 1) } != 0 {
        eprintln!(
            "ioperm-exec: ioperm(0x5658, 4): {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(126);
    }
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: argv is a NULL-terminated array of NUL-terminated strings
    // that outlive the call; execvp returns only on failure.
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    eprintln!(
        "ioperm-exec: {}: {}",
        args[0].to_string_lossy(),
        std::io::Error::last_os_error()
    );
    std::process::exit(127);
}
