//! Architectural state a vCPU starts in: page tables, GDT, segment and
//! control registers, FPU, MSRs and LAPIC.
//!
//! Two entry states exist. The 64-bit one is Linux's x86-64 boot protocol
//! (long mode, identity-mapped low 4 GiB, RSI = boot_params), used for
//! bzImage and ELF kernels. The PVH one is 32-bit protected mode without
//! paging, EBX = hvm_start_info, used for ELFs with a PVH note.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::*;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Where and how a vCPU enters the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol at this address.
    Long64 { entry: u64 },
    /// PVH 32-bit entry at this address.
    Pvh { entry: u64 },
    /// The x86 power-on state: real mode at the reset vector 0xfffffff0,
    /// where firmware (SeaBIOS) starts.
    Reset,
}

/// A real-mode segment as the processor has it after RESET: selector
/// `sel`, base `sel << 4` (or the given base), 64 KiB limit.
fn real_mode_segment(sel: u16, base: u64, code: bool) -> kvm_bindings::kvm_segment {
    kvm_bindings::kvm_segment {
        base,
        limit: 0xffff,
        selector: sel,
        // Code: execute/read, accessed (0xb); data: read/write, accessed (3).
        type_: if code { 0xb } else { 3 },
        present: 1,
        s: 1,
        ..Default::default()
    }
}

/// GDT descriptor from base, limit and the access/flags bits (the same
/// layout as Linux's GDT_ENTRY macro).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | (((limit as u64 & 0x000f_0000) >> 16) << 48)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The boot GDT: null, null, code at 0x10, data at 0x18, TSS at 0x20.
/// Selector values match Linux's __BOOT_CS / __BOOT_DS.
fn gdt(long_mode: bool) -> [u64; 5] {
    let code = if long_mode { 0xa09b } else { 0xc09b };
    [
        0,
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
    let limit = (entry & 0xffff) | (((entry >> 48) & 0xf) << 16);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages.
        limit: if g == 1 {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from((entry >> 47) & 1 == 0),
    }
}

/// Writes the boot GDT/IDT and, for long mode, the identity page tables
/// (low 4 GiB with 2 MiB pages) into guest memory.
pub fn write_boot_tables<M: GuestMemory>(
    mem: &M,
    mode: EntryMode,
) -> Result<(), vm_memory::GuestMemoryError> {
    let long = matches!(mode, EntryMode::Long64 { .. });
    for (i, e) in gdt(long).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    if long {
        mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))?;
        let mut pdpt = [0u64; 4];
        for (i, slot) in pdpt.iter_mut().enumerate() {
            *slot = (PD_ADDR + 0x1000 * i as u64) | 0x3;
        }
        mem.write_obj(pdpt, GuestAddress(PDPT_ADDR))?;
        // 2048 entries of 2 MiB (PS bit 7), present + writable.
        let mut pd = vec![0u8; 4 * 4096];
        for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
        }
        mem.write_slice(&pd, GuestAddress(PD_ADDR))?;
    }
    Ok(())
}

/// Special registers for the entry mode, on top of what KVM reports.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    if let EntryMode::Reset = mode {
        // CS 0xf000 with the base at 0xffff0000, so that the first fetch
        // (IP 0xfff0) reads the top of the 4 GiB space, as on hardware.
        sregs.cs = real_mode_segment(0xf000, 0xffff_0000, true);
        let data = real_mode_segment(0, 0, false);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.tr = kvm_bindings::kvm_segment {
            limit: 0xffff,
            type_: 0xb, // busy 32-bit TSS, as KVM's reset state has it
            present: 1,
            ..Default::default()
        };
        sregs.ldt = kvm_bindings::kvm_segment {
            limit: 0xffff,
            type_: 2,
            present: 1,
            ..Default::default()
        };
        sregs.gdt.base = 0;
        sregs.gdt.limit = 0xffff;
        sregs.idt.base = 0;
        sregs.idt.limit = 0xffff;
        sregs.cr0 = CR0_ET | 0x6000_0000; // CD and NW set at reset
        sregs.cr2 = 0;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
        return sregs;
    }
    let long = matches!(mode, EntryMode::Long64 { .. });
    let table = gdt(long);
    let code = segment_from_gdt(table[2], 2);
    let data = segment_from_gdt(table[3], 3);
    let tss = segment_from_gdt(table[4], 4);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    if long {
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
        sregs.cr3 = PML4_ADDR;
        // SSE on: 64-bit kernels and our test guests use it from the start.
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.efer = EFER_LME | EFER_LMA;
    } else {
        sregs.cr0 = CR0_PE | CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
    sregs
}

pub fn boot_regs(mode: EntryMode) -> kvm_regs {
    match mode {
        EntryMode::Long64 { entry } => kvm_regs {
            rip: entry,
            rsp: BOOT_STACK_TOP,
            rbp: BOOT_STACK_TOP,
            rsi: ZERO_PAGE_ADDR,
            rflags: 0x2,
            ..Default::default()
        },
        EntryMode::Pvh { entry } => kvm_regs {
            rip: entry,
            rbx: PVH_INFO_ADDR,
            rflags: 0x2,
            ..Default::default()
        },
        EntryMode::Reset => kvm_regs {
            rip: 0xfff0,
            rflags: 0x2,
            ..Default::default()
        },
    }
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;

/// MSRs written at every boot. The KVM paravirt ones are cleared so that a
/// rebooted guest does not inherit kvm-clock pages its previous kernel set.
pub fn boot_msrs() -> Msrs {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        // Fast string operations enabled, as firmware leaves it.
        e(MSR_IA32_MISC_ENABLE, 1),
        // MTRRs enabled, default type write-back.
        e(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
        e(MSR_KVM_WALL_CLOCK_NEW, 0),
        e(MSR_KVM_SYSTEM_TIME_NEW, 0),
        e(MSR_KVM_ASYNC_PF_EN, 0),
        e(MSR_KVM_STEAL_TIME, 0),
        e(MSR_KVM_PV_EOI_EN, 0),
    ])
    .expect("boot MSR list fits")
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

/// LINT0 as ExtINT (the 8259 PIC's output) and LINT1 as NMI, the wiring
/// firmware sets up and that the MADT's LAPIC NMI entry describes.
pub fn boot_lapic(mut l: kvm_lapic_state) -> kvm_lapic_state {
    let delivery = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(&l, APIC_LVT0);
    set_lapic_reg(&mut l, APIC_LVT0, delivery(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&l, APIC_LVT1);
    set_lapic_reg(&mut l, APIC_LVT1, delivery(lvt1, APIC_MODE_NMI));
    l
}

/// Puts a vCPU into its power-on state for `mode`, its LAPIC into
/// `power_on_lapic` with our LINT wiring. Only the boot vCPU gets an entry
/// point; the others wait for INIT/SIPI in the in-kernel LAPIC.
///
/// Every vCPU ioctl costs two traps to the hypervisor below on this
/// machine's PVM host (~30 µs): hence no KVM_GET_LAPIC here.
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    boot: Option<EntryMode>,
    power_on_lapic: &kvm_lapic_state,
) -> Result<(), kvm_ioctls::Error> {
    vcpu.set_fpu(&boot_fpu())?;
    let msrs = boot_msrs();
    let n = vcpu.set_msrs(&msrs)?;
    if n != msrs.as_slice().len() {
        // KVM stops at the first MSR it refuses; the rest are optional.
        log::debug!("KVM accepted {n} of {} boot MSRs", msrs.as_slice().len());
    }
    vcpu.set_lapic(&boot_lapic(*power_on_lapic))?;
    if let Some(mode) = boot {
        vcpu.set_sregs(&boot_sregs(vcpu.get_sregs()?, mode))?;
        vcpu.set_regs(&boot_regs(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let t = gdt(true);
        assert_eq!(t[2], 0x00af_9b00_0000_ffff);
        assert_eq!(t[3], 0x00cf_9300_0000_ffff);
        let cs = segment_from_gdt(t[2], 2);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.limit, cs.type_),
            (0x10, 1, 0, 0xffff_ffff, 0xb)
        );
        let cs32 = segment_from_gdt(gdt(false)[2], 2);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        assert_eq!(segment_from_gdt(t[0], 0).unusable, 1);
    }

    #[test]
    fn lapic_lint_wiring() {
        let l = boot_lapic(kvm_lapic_state::default());
        assert_eq!((lapic_reg(&l, APIC_LVT0) >> 8) & 7, APIC_MODE_EXTINT);
        assert_eq!((lapic_reg(&l, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
