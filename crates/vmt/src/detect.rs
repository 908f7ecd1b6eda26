//! Is this a VMware-compatible VM? The CPUID hypervisor signature first,
//! then the backdoor's GETVERSION.

use guestrpc::client::Backdoor;

use crate::ops::{self, Version};

/// The signature a VMware-compatible host puts at CPUID 0x40000000.
pub const VMWARE_SIGNATURE: &[u8; 12] = b"VMwareVMware";

/// How the host was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// CPUID 0x40000000 says "VMwareVMware" (and GETVERSION answered).
    Cpuid,
    /// No VMware signature, but GETVERSION answered.
    Backdoor,
}

/// A host that answers the backdoor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    /// What GETVERSION returned.
    pub version: Version,
    /// How it was found.
    pub via: Via,
}

/// Why this is not taken for a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotVm {
    /// The CPUID signature seen, if the hypervisor bit was set.
    pub signature: Option<[u8; 12]>,
}

impl std::fmt::Display for NotVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not running in a VMware virtual machine")?;
        match &self.signature {
            Some(sig) if sig == VMWARE_SIGNATURE => {
                f.write_str(" (CPUID says VMware, but the backdoor does not answer)")
            }
            Some(sig) => write!(
                f,
                " (hypervisor '{}', no VMware backdoor)",
                String::from_utf8_lossy(sig).trim_end_matches('\0')
            ),
            None => f.write_str(" (no hypervisor, no VMware backdoor)"),
        }
    }
}

impl std::error::Error for NotVm {}

/// The hypervisor signature at CPUID 0x40000000 (EBX, ECX, EDX), or `None`
/// when CPUID.1:ECX bit 31 (hypervisor present) is clear.
#[cfg(target_arch = "x86_64")]
pub fn cpuid_signature() -> Option<[u8; 12]> {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86-64 CPU. (`__cpuid` is a safe
    // function from Rust 1.87 on; the workspace supports older ones.)
    #[allow(unused_unsafe)]
    let leaf1 = unsafe { __cpuid(1) };
    if leaf1.ecx & (1 << 31) == 0 {
        return None;
    }
    #[allow(unused_unsafe)]
    let r = unsafe { __cpuid(0x4000_0000) };
    let mut sig = [0u8; 12];
    for (dst, word) in sig.chunks_exact_mut(4).zip([r.ebx, r.ecx, r.edx]) {
        dst.copy_from_slice(&word.to_le_bytes());
    }
    Some(sig)
}

/// Decides from the CPUID `signature` ([`cpuid_signature`]) and a
/// GETVERSION on `bd`, which must already be usable (I/O permission
/// taken).
///
/// The backdoor is asked even when the signature is absent or another
/// hypervisor's: on this project's PVM hosts CPUID at CPL 3 is not
/// intercepted and shows the *host machine's* leaves, not the ones our VMM
/// sets, so a user-space process there never sees "VMwareVMware". NetBSD's
/// vmt(4) also probes without a signature. On bare metal the port read
/// returns all ones, which GETVERSION does not take for an answer.
pub fn host(signature: Option<[u8; 12]>, bd: &mut impl Backdoor) -> Result<Host, NotVm> {
    let Some(version) = ops::checkvm(bd) else {
        return Err(NotVm { signature });
    };
    let via = if signature.as_ref() == Some(VMWARE_SIGNATURE) {
        Via::Cpuid
    } else {
        Via::Backdoor
    };
    Ok(Host { version, via })
}
