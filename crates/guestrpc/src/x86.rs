//! The real backdoor: port I/O instructions, for code running inside a VM.
//!
//! Two registers the protocol needs cannot be named as inline-asm operands
//! on x86-64: LLVM reserves RBX, and RBP is the frame pointer. Both are
//! therefore passed in scratch registers and swapped in with `xchg` around the
//! port instruction, and swapped back before anything else can run in this
//! function, so the compiler never sees them change. No stack access happens
//! while RBP holds a cookie.

use core::arch::asm;

use crate::backdoor::Regs;
use crate::client::Backdoor;

/// Executes backdoor calls with `in`, `rep outsb` and `rep insb`.
#[derive(Debug)]
pub struct PortIo {
    _private: (),
}

impl PortIo {
    /// A handle for the port instructions.
    ///
    /// # Safety
    /// The caller must be allowed to access ports 0x5658 and 0x5659: running
    /// at CPL 0, or at CPL 3 with IOPL 3 (Linux: `iopl(3)`; our bare-metal
    /// guests set EFLAGS.IOPL), or in a VM whose host traps ring-3 backdoor
    /// access (`kvm.enable_vmware_backdoor=1`, real VMware). Otherwise every
    /// call faults (#GP, SIGSEGV in a Linux process). On bare metal, with no
    /// hypervisor, the ports may belong to real hardware: probe with
    /// [`crate::client::checkvm`] only where a hypervisor is known to exist
    /// (CPUID.1:ECX bit 31).
    pub unsafe fn new() -> Self {
        PortIo { _private: () }
    }
}

impl Backdoor for PortIo {
    fn lb(&mut self, regs: &mut Regs) {
        let mut bx = u64::from(regs.ebx);
        // SAFETY: `new`'s contract grants port access. The asm touches only
        // the named registers; RBX is swapped in and back out. RBP (our
        // frame pointer) is saved and restored around the `in`: no
        // low-bandwidth command outputs it, but a host that wrote it back
        // anyway (as ours once did, truncated to 32 bits) must not be able
        // to corrupt this process's stack frames.
        unsafe {
            asm!(
                "xchg {bx}, rbx",
                "mov {bp}, rbp",
                "in eax, dx",
                "mov rbp, {bp}",
                "xchg {bx}, rbx",
                bx = inout(reg) bx,
                bp = out(reg) _,
                inout("eax") regs.eax,
                inout("ecx") regs.ecx,
                inout("edx") regs.edx,
                inout("esi") regs.esi,
                inout("edi") regs.edi,
                options(nostack, preserves_flags),
            );
        }
        regs.ebx = bx as u32;
    }

    fn hb_out(&mut self, regs: &mut Regs, data: &[u8]) {
        let mut bx = u64::from(regs.ebx);
        let mut bp = u64::from(regs.ebp);
        let len = data.len();
        let left: usize;
        // SAFETY: port access per `new`; `rep outsb` reads exactly `len`
        // bytes from `data` (the direction flag is clear on asm entry, which
        // Rust guarantees). RBX and RBP are restored before the asm ends.
        unsafe {
            asm!(
                "xchg {bx}, rbx",
                "xchg {bp}, rbp",
                "rep outsb",
                "xchg {bp}, rbp",
                "xchg {bx}, rbx",
                bx = inout(reg) bx,
                bp = inout(reg) bp,
                inout("eax") regs.eax,
                inout("rcx") len => left,
                inout("edx") regs.edx,
                inout("rsi") data.as_ptr() => _,
                inout("edi") regs.edi,
                options(nostack, preserves_flags, readonly),
            );
        }
        regs.ebx = bx as u32;
        regs.ebp = bp as u32;
        regs.ecx = left as u32;
    }

    fn hb_in(&mut self, regs: &mut Regs, buf: &mut [u8]) {
        let mut bx = u64::from(regs.ebx);
        let mut bp = u64::from(regs.ebp);
        let len = buf.len();
        let left: usize;
        // SAFETY: port access per `new`; `rep insb` writes exactly `len`
        // bytes into `buf`, which we borrow mutably. RBX and RBP are
        // restored before the asm ends.
        unsafe {
            asm!(
                "xchg {bx}, rbx",
                "xchg {bp}, rbp",
                "rep insb",
                "xchg {bp}, rbp",
                "xchg {bx}, rbx",
                bx = inout(reg) bx,
                bp = inout(reg) bp,
                inout("eax") regs.eax,
                inout("rcx") len => left,
                inout("edx") regs.edx,
                inout("esi") regs.esi,
                inout("rdi") buf.as_mut_ptr() => _,
                options(nostack, preserves_flags),
            );
        }
        regs.ebx = bx as u32;
        regs.ebp = bp as u32;
        regs.ecx = left as u32;
    }
}
