//! The system calls the backdoor needs from user space.

/// The low-bandwidth port; the high-bandwidth one (0x5659) follows it.
pub const BACKDOOR_PORT: u16 = guestrpc::backdoor::PORT_LB;
/// Ports granted: the CPU checks every port an access touches, and the
/// low-bandwidth call is a 4-byte `in` at 0x5658, so 0x5658..=0x565b
/// (which covers the byte-wise high-bandwidth port 0x5659 too).
pub const BACKDOOR_PORTS: u16 = 4;

/// Takes I/O permission for the backdoor ports (`ioperm(2)`): needed on
/// KVM hosts without `kvm.enable_vmware_backdoor=1` (this project's), where
/// a ring-3 `in` on them otherwise faults. Real VMware lets ring 3 through
/// without it, but asking costs nothing. Needs root (CAP_SYS_RAWIO).
pub fn ioperm_backdoor() -> Result<(), String> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    let rc = unsafe {
        libc::ioperm(
            libc::c_ulong::from(BACKDOOR_PORT),
            libc::c_ulong::from(BACKDOOR_PORTS),
            1,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    let hint = if e.raw_os_error() == Some(libc::EPERM) {
        " (vmt must run as root)"
    } else {
        ""
    };
    Err(format!(
        "ioperm(0x{BACKDOOR_PORT:x}, {BACKDOOR_PORTS}): {e}{hint}"
    ))
}
