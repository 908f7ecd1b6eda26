//! Everything that runs at CPL0: the two boot entries, the AP start-up
//! trampoline, the GDT/IDT/TSS set-up, the exception stubs, the interrupt
//! handler and the "system calls" (halt, triple fault, idle: wait for an
//! interrupt). It is all hand-written assembly on purpose:
//!
//! * On this project's KVM (PVM) guest CPL0 code is instruction-emulated and
//!   about 4000x slower than CPL3 code, so the CPL0 path is kept to some
//!   sixty instructions per CPU: no loops, no `rep stos` (emulated one
//!   iteration at a time). The page tables, GDT, IDT and TSSs are prebuilt
//!   constants in .data that the loader copies in with the image; .bss is
//!   the loader's to zero, as the ELF spec says.
//! * The CPL0 emulator handles what an OS kernel uses, not what a compiler may
//!   emit for Rust (SSE moves for struct copies, say). Assembly keeps the CPL0
//!   instruction set under our control; all Rust code runs at CPL3.
//!
//! Two more facts of PVM shape this file: it keeps the guest's IOPL at 0 even
//! when `iretq` asks for 3, so CPL3 port I/O is granted by an all-zero I/O
//! permission bitmap in the TSS instead (its emulator checks it like a CPU);
//! and a software interrupt (`int n`) from CPL3 arrives as #UD, so CPL3 asks
//! for CPL0 services by executing the `ud2` at `tg_sys_gate`.
//!
//! Boot flow (both entries end in `tg_long_common`):
//!
//! ```text
//! _start64 (ELF e_entry, long mode)   _start32 (PVH note, 32-bit, no paging)
//!   save boot_params ptr                save hvm_start_info ptr
//!   load CR3 (our tables), SSE on       |
//!   |                                   tg_enter_long32: CR3, PAE, SSE on,
//!   |                                   EFER.LME, PG      ^
//!   +---------------> tg_long_common <--+                 |
//!                     our GDT, TSS, IDT       APs: tg_ap_tramp (real mode,
//!                     iretq to CPL3           copied to 0x3000) ->
//!                     tg_user_entry           tg_ap_start32 (slot, stack)
//!                     user_start(slot)
//! ```
//!
//! Memory map of the image: linked at 1 MiB (see link.ld); page tables, IDT,
//! GDT, TSSs and what the CPL0 boot writes (BOOT_INFO, BOOT_KIND) live in
//! .data, the rest of the runtime's state in .bss (zero from the loader:
//! untouched pages stay unmapped, which on PVM saves a fault each), stacks
//! in `.stacks` (never read before written). The
//! page tables identity-map 0..4 GiB with 2 MiB pages that are present,
//! writable and USER, so CPL3 code reaches all RAM and MMIO.
//!
//! Interrupts: the prebuilt IDT has vectors 0..31 only and CPL3 runs
//! with IF=0. The first sleep (rt::timer) fills vectors 32..255 and moves
//! #UD to a shorter path for the idle request, from CPL3
//! ([`install_irq_gates`]). The idle request is the one place interrupts
//! are enabled: `sti; hlt` at CPL0; the interrupt's handler returns
//! straight to CPL3.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

/// Most CPUs the runtime sets up (slots 0..MAX_CPUS, slot 0 is the BSP).
pub const MAX_CPUS: usize = 32;
/// Physical address the AP trampoline is copied to; the SIPI vector is its
/// page number. (0x1000..0x5fff is free low memory in our VMM's layout.)
pub const AP_TRAMPOLINE: u64 = 0x3000;

/// Per-CPU kernel stack: only exception frames use it.
const KSTACK_SIZE: usize = 4096;
const BSP_STACK_SIZE: usize = 64 * 1024;
const AP_STACK_SIZE: usize = 16 * 1024;
/// CPL3 stack the exception reporter runs on.
const EXC_STACK_SIZE: usize = 16 * 1024;
/// One 64-bit TSS is 104 bytes; space them 128 apart.
const TSS_STRIDE: usize = 128;

/// Values of `BOOT_KIND`.
pub(crate) const BOOT_ELF64: u8 = 1;
pub(crate) const BOOT_PVH: u8 = 2;

/// Physical address of the boot_params (64-bit entry) or hvm_start_info
/// (PVH entry) handed over by the loader. Written at CPL0, in .data like
/// everything the CPL0 boot touches.
#[unsafe(link_section = ".data.tg_boot_info")]
pub(crate) static BOOT_INFO: AtomicU64 = AtomicU64::new(0);
/// Which entry ran: `BOOT_ELF64` or `BOOT_PVH`. In .data like BOOT_INFO.
#[unsafe(link_section = ".data.tg_boot_kind")]
pub(crate) static BOOT_KIND: AtomicU8 = AtomicU8::new(0);
/// APs take slots 1.. from this counter as they arrive.
static AP_NEXT: AtomicU32 = AtomicU32::new(0);
/// Set by the first exception; a second one triple-faults.
static EXC_BUSY: AtomicU32 = AtomicU32::new(0);
/// The first exception's vector, error code, rip, cs, rflags, rsp, ss, cr2.
pub(crate) static EXC_FRAME: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

// Start of the AP trampoline (16-bit code) and its end, for copying.
extern "C" {
    static tg_ap_tramp_start: u8;
    static tg_ap_tramp_end: u8;
}

/// The AP trampoline's bytes, position independent: copy them to
/// `AP_TRAMPOLINE` and send SIPI vector `AP_TRAMPOLINE >> 12`.
pub(crate) fn ap_trampoline() -> &'static [u8] {
    // SAFETY: both symbols are labels in the same section of this image,
    // start before end; the bytes between them are never written.
    unsafe {
        let start = &raw const tg_ap_tramp_start;
        let end = &raw const tg_ap_tramp_end;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

global_asm!(
    r#"
    .pushsection .text.entry, "ax"

// ---------------------------------------------------------------------------
// 64-bit entry (ELF e_entry): long mode, CPL0, the loader's identity map,
// RSI = boot_params. RSP is somewhere in low memory; we do not use it.
    .code64
    .global _start64
_start64:
    cli
    cld
    // A guest built with an early mark writes it to COM1 first thing: the
    // P2 benchmark times VMM start to the guest's first port I/O.
    cmpb $0, tg_early_mark(%rip)
    je 1f
    mov $0x3f8, %dx
    movb tg_early_mark(%rip), %al
    out %al, %dx
1:
    mov %rsi, {boot_info}(%rip)
    movb ${boot_elf64}, {boot_kind}(%rip)
    lea tg_pml4(%rip), %rax         // our page tables (prebuilt, in .data)
    mov %rax, %cr3
    // What tg_enter_long32 does for the 32-bit paths.
    mov %cr0, %rax
    and $~4, %rax                   // EM off: Rust code uses SSE
    or $2, %rax                     // MP on
    mov %rax, %cr0
    mov %cr4, %rax
    or $0x620, %rax                 // PAE | OSFXSR | OSXMMEXCPT
    and $~0x300000, %rax            // SMEP, SMAP off: all our pages are USER
    mov %rax, %cr4
    xor %edi, %edi                  // slot 0: the BSP
    lea tg_kstacks + {kstack}(%rip), %rsp
    jmp tg_long_common

// ---------------------------------------------------------------------------
// PVH entry (Xen PHYS32_ENTRY note): 32-bit protected mode, paging off,
// flat CS/DS, EBX = hvm_start_info. No stack.
    .code32
    .global _start32
_start32:
    cli
    cld
    cmpb $0, tg_early_mark
    je 1f
    mov $0x3f8, %dx
    movb tg_early_mark, %al
    out %al, %dx
1:
    mov %ebx, {boot_info}
    movl $0, {boot_info} + 4
    movb ${boot_pvh}, {boot_kind}
    xor %edi, %edi                  // slot 0: the BSP
    mov $tg_kstacks + {kstack}, %esp
    mov $tg_long_common, %esi
    jmp tg_enter_long32

// An AP arrives here from the trampoline in 32-bit protected mode with our
// GDT loaded. It takes the next free slot and that slot's kernel stack.
tg_ap_start32:
    mov $0x10, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %edi
    lock xadd %edi, {ap_next}
    inc %edi                        // slots 1.. (0 is the BSP)
    cmp ${max_cpus}, %edi
    jae tg_park32                   // more CPUs than we have stacks for
    lea 1(%edi), %esp
    imul ${kstack}, %esp, %esp
    add $tg_kstacks, %esp
    mov $tg_long_common, %esi
    jmp tg_enter_long32
tg_park32:
    cli
    hlt
    jmp tg_park32

// 32-bit protected mode -> long mode with our page tables, then a far return
// to the 64-bit address in ESI. Needs a stack; keeps EDI.
tg_enter_long32:
    lgdtl tg_gdtr
    mov $0x10, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x620, %eax                 // PAE | OSFXSR | OSXMMEXCPT
    and $~0x300000, %eax            // SMEP, SMAP off: all our pages are USER
    mov %eax, %cr4
    mov $tg_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           // EFER
    rdmsr
    or $0x100, %eax                 // LME
    wrmsr
    mov %cr0, %eax
    and $~4, %eax                   // EM off: Rust code uses SSE
    or $0x80000003, %eax            // PG | MP | PE
    mov %eax, %cr0
    push $0x08
    push %esi
    lret

// ---------------------------------------------------------------------------
// Common long-mode path of the BSP (either entry) and of every AP, with
// CR0, CR3 and CR4 set. EDI = slot, RSP = top of this slot's kernel stack
// (below 4 GiB).
    .code64
tg_long_common:
    mov %edi, %edi                  // upper halves are undefined after
    mov %esp, %esp                  // a 32-bit -> 64-bit switch
    lgdt tg_gdtr(%rip)
    lea 4f(%rip), %rax
    pushq $0x08
    push %rax
    lretq
4:  mov $0x10, %eax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs

    // This slot's TSS (prebuilt: rsp0 = this kernel stack, the shared I/O
    // bitmap) and its GDT descriptor at 0x30 + 16 * slot (prebuilt too).
    // The descriptor is marked available again first: `ltr` marks it busy,
    // and a VM reset need not reload the image.
    mov %edi, %eax
    shl $4, %eax
    lea tg_gdt_tss(%rip), %rdx
    movb $0x89, 5(%rdx,%rax)        // present, available 64-bit TSS
    add $0x30, %eax
    ltr %ax
    lidt tg_idtr(%rip)

    // iretq to tg_user_entry(slot) at CPL3 on this slot's stack, interrupts
    // off. The stack tops are tg_bsp_stack_top + slot * AP stack size (the
    // AP stacks follow the BSP's).
    imul ${ap_stack}, %rdi, %rax
    lea tg_bsp_stack_top(%rip), %rcx
    add %rcx, %rax
    sub $8, %rax                    // a fake return address keeps the
    movq $0, (%rax)                 // ABI's stack alignment at entry
    mov $0x1b, %ecx
    mov %cx, %ds
    mov %cx, %es
    pushq $0x1b                     // SS: user data | RPL 3
    push %rax                       // RSP
    pushq $0x3002                   // RFLAGS: IOPL 3 (not under PVM), IF 0
    pushq $0x23                     // CS: user code | RPL 3
    lea tg_user_entry(%rip), %rax
    push %rax
    iretq

// Where every CPU arrives at CPL3, EDI = slot. .bss is zero because the ELF
// spec says so and loaders do it (QEMU's, and our VMM's on a reload): not
// clearing it here leaves the pages the guest never uses untouched, and on
// PVM every page first touched is a fault. Then user_start(slot), with the
// stack as the iretq left it.
tg_user_entry:
    jmp {user_start}

// Exception stubs, 16 bytes apart: push a zero error code where the CPU
// pushes none (all but 8, 10-14, 17, 21, 29, 30), then the vector. The
// prebuilt IDT gates point here (see tg_idt): aligned so that the 32 stubs
// share their address bits 16 and up.
    .balign 512
    .global tg_isr_stubs
tg_isr_stubs:
    .set tg_vec, 0
    .rept 32
    .balign 16
    .if ((0x60227d00 >> tg_vec) & 1) == 0
    pushq $0
    .endif
    pushq $tg_vec
    jmp tg_isr_common
    .set tg_vec, tg_vec + 1
    .endr

// A #UD at tg_sys_gate is a request from CPL3 (tg_syscall). Any other
// exception: copy the frame (vector, error, rip, cs, rflags, rsp, ss) and
// CR2 to EXC_FRAME and report it from CPL3, where printing and ACPI parsing
// run at native speed. An exception while one is being reported
// triple-faults.
tg_isr_common:
    cld
    cmpq $6, (%rsp)
    jne 9f
    lea tg_sys_gate(%rip), %rax
    cmp %rax, 16(%rsp)
    je tg_syscall
9:  lock btsl $0, {exc_busy}(%rip)
    jc tg_triple_fault
    mov %rsp, %rsi
    lea {exc_frame}(%rip), %rdi
    mov $7, %ecx
    rep movsq
    mov %cr2, %rax
    mov %rax, (%rdi)
    mov $0x1b, %eax
    mov %ax, %ds
    mov %ax, %es
    lea tg_exc_stack_top - 8(%rip), %rax
    pushq $0x1b
    push %rax
    pushq $0x3002
    pushq $0x23
    lea {exception_report}(%rip), %rax
    push %rax
    iretq

// CPL3 calls this as `extern "C" fn(request: u32)`; the #UD takes it to
// CPL0, where tg_syscall (from tg_isr_common) or tg_ud_gate (IDT vector 6
// once install_irq_gates ran) serves the request in EDI. A request that
// returns resumes CPL3 at the `ret` after the `ud2`; CPL0 clobbers nothing
// (but RAX on the tg_isr_common path, which the C ABI allows).
    .global tg_sys_gate
tg_sys_gate:
    ud2
    ret
// Request 0: halt this CPU for good; 1: triple fault; 2: idle (tg_idle).
// From tg_isr_common, vector and error code on the stack.
tg_syscall:
    cmp $2, %edi
    jne tg_syscall_end
    add $16, %rsp
    jmp tg_idle

// The #UD handler once install_irq_gates ran: the generic stub unless it
// is the gate, where the idle request goes straight to tg_idle. This is
// the path every sleep takes, and CPL0 code is emulated: keep it short.
    .global tg_ud_gate
tg_ud_gate:
    cmpq $tg_sys_gate, (%rsp)
    jne tg_isr_stubs + 6 * 16
    cmp $2, %edi
    je tg_idle
tg_syscall_end:
    cmp $1, %edi
    je tg_triple_fault
tg_halt:
    cli
    hlt
    jmp tg_halt

// Request 2: wait for an interrupt, any interrupt (CPL3 started the LAPIC
// timer), and return to CPL3 with interrupts off again. RSP points at the
// #UD frame. The handler of every external vector (tg_irq) returns to
// CPL3 from that frame: interrupts are enabled only here. The EOI is CPL3's
// (rt::timer): an MMIO write costs about the same there and keeps this
// path short.
tg_idle:
    addq $2, (%rsp)                 // return past the ud2, to the ret
    sti                             // the interrupt shadow covers the hlt:
    hlt                             // an interrupt already due wakes it
    cli                             // (woken without one: not expected)
    iretq

// External interrupts, vectors 32..255 (install_irq_gates): only taken in
// tg_idle's hlt. The interrupted RSP (in this frame, which the CPU may
// have placed lower to align it) is tg_idle's: the #UD frame.
    .global tg_irq
tg_irq:
    mov 24(%rsp), %rsp
    iretq
// An IDT with limit 0: the #UD cannot be delivered, nor the #GP that
// follows, nor the #DF: the CPU shuts down (KVM_EXIT_SHUTDOWN).
tg_triple_fault:
    lidt tg_null_idtr(%rip)
    ud2

// ---------------------------------------------------------------------------
// AP trampoline, copied to AP_TRAMPOLINE (page aligned) and started there by
// SIPI in real mode with CS = AP_TRAMPOLINE >> 4, IP = 0. Position
// independent: data is addressed relative to CS. It only gets to 32-bit
// protected mode (its GDT pointer is a copy of tg_gdtr) and jumps into the
// image, which is linked below 4 GiB, so a 32-bit offset reaches it.
    .balign 16
    .global tg_ap_tramp_start
    .global tg_ap_tramp_end
tg_ap_tramp_start:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tg_ap_tramp_gdtr - tg_ap_tramp_start)
    mov %cr0, %eax
    or $1, %eax                     // PE
    mov %eax, %cr0
    ljmpl $0x28, $tg_ap_start32     // 32-bit kernel code segment
    .balign 4
tg_ap_tramp_gdtr:
    .word tg_gdt_end - tg_gdt - 1
    .long tg_gdt
tg_ap_tramp_end:
    .code64

    .popsection

// ---------------------------------------------------------------------------
// GDT, prebuilt with one 16-byte TSS descriptor per CPU slot: base
// tg_tss + TSS_STRIDE * slot, limit = that TSS's I/O bitmap offset + 8192
// (the bitmap and its terminating byte), present, available 64-bit TSS.
// Its fields are bit ranges of tg_tss's address, which only the linker can
// take apart: tg_tss_desc0 (link.ld) is slot 0's low quadword. Slot n's
// adds n * TSS_STRIDE to the base (bits 16..39) and takes it off the
// limit (bits 0..15); link.ld checks that neither carries out of its field.
// `ltr` marks a descriptor busy: tg_long_common marks it available again.
    .pushsection .data.tg_gdt, "aw"
    .balign 16
tg_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        // 0x08 kernel code, 64-bit
    .quad 0x00cf92000000ffff        // 0x10 kernel data
    .quad 0x00cff2000000ffff        // 0x18 user data (DPL 3)
    .quad 0x00affa000000ffff        // 0x20 user code, 64-bit (DPL 3)
    .quad 0x00cf9a000000ffff        // 0x28 kernel code, 32-bit (APs, PVH)
tg_gdt_tss:                         // 0x30 + 16 * slot: TSS of that slot
    .set tg_slot, 0
    .rept {max_cpus}
    .quad tg_tss_desc0 + tg_slot * (({tss_stride} << 16) - {tss_stride})
    .quad 0                         // base 63:32: the image is below 4 GiB
    .set tg_slot, tg_slot + 1
    .endr
tg_gdt_end:
    .balign 8
tg_gdtr:
    .word tg_gdt_end - tg_gdt - 1
    .quad tg_gdt
    .popsection

    .pushsection .rodata.tg_idtr, "a"
    .balign 8
tg_idtr:
    .word 256 * 16 - 1
    .quad tg_idt
tg_null_idtr:
    .word 0
    .quad 0
    .popsection

// Page tables, IDT, TSSs and the I/O permission bitmap: constants, built
// here rather than at run time, so that the loader copies them in with the
// image and the (emulated) CPL0 boot neither zeroes nor fills anything.
    .pushsection .data.tg_tables, "aw"
    .balign 4096
// Identity map of 0..4 GiB: PML4[0] -> PDPT, PDPT[0..4] -> 4 PDs, each PD
// entry a 2 MiB page. Flags: 7 = present|writable|user, 0x87 = that plus PS
// (2 MiB page).
tg_pml4:
    .quad tg_pdpt + 7
    .fill 511, 8, 0
tg_pdpt:
    .quad tg_pd + 7, tg_pd + 0x1000 + 7, tg_pd + 0x2000 + 7, tg_pd + 0x3000 + 7
    .fill 508, 8, 0
tg_pd:
    .set tg_page, 0
    .rept 4 * 512
    .quad tg_page * 0x200000 + 0x87
    .set tg_page, tg_page + 1
    .endr

// IDT: vectors 0..31 -> the exception stubs, DPL 0 64-bit interrupt gates;
// tg_idt_gate0 (link.ld) is vector 0's low quadword, vector n's adds
// 16 * n to the handler's bits 0..15 (tg_isr_stubs' alignment: no carry).
// Vectors 32..255 stay empty until install_irq_gates (from CPL3).
    .global tg_idt
tg_idt:
    .set tg_gate, 0
    .rept 32
    .quad tg_idt_gate0 + tg_gate * 16
    .quad 0                         // handler 63:32: below 4 GiB
    .set tg_gate, tg_gate + 1
    .endr
    .fill (256 - 32) * 2, 8, 0

// One 64-bit TSS (104 bytes) per slot, TSS_STRIDE apart: rsp0 = top of
// that slot's kernel stack, so exceptions from CPL3 land there, and the
// offset of the I/O permission bitmap. All of them share one all-zero
// bitmap right after the array: it is what lets CPL3 code do port I/O
// under PVM, which keeps the guest's IOPL at 0 whatever iretq asks for
// (its emulator then checks the bitmap, like a CPU does).
    .global tg_tss
tg_tss:
    .set tg_slot, 0
    .rept {max_cpus}
    .long 0
    .quad tg_kstacks + (tg_slot + 1) * {kstack} // rsp0
    .fill 90, 1, 0                  // rsp1, rsp2, IST1-7, reserved
    .word tg_iobitmap - tg_tss - tg_slot * {tss_stride} // I/O bitmap offset
    .fill {tss_stride} - 104, 1, 0
    .set tg_slot, tg_slot + 1
    .endr
    .global tg_iobitmap
tg_iobitmap:                        // must follow tg_tss (see tg_gdt)
    .fill 8192, 1, 0
    .byte 0xff                      // the bitmap's terminating byte
    .popsection

    .pushsection .stacks, "aw", @nobits
    .balign 4096
tg_kstacks:
    .skip {max_cpus} * {kstack}
tg_bsp_stack:
    .skip {bsp_stack}
tg_bsp_stack_top:
tg_ap_stacks:
    .skip ({max_cpus} - 1) * {ap_stack}
tg_exc_stack:
    .skip {exc_stack}
tg_exc_stack_top:
    .popsection

// ---------------------------------------------------------------------------
// The PVH entry point for loaders (qemu -kernel, linux-loader):
// XEN_ELFNOTE_PHYS32_ENTRY (type 18), name "Xen", desc = 32-bit address.
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long _start32
    .balign 4
    .popsection
"#,
    boot_info = sym BOOT_INFO,
    boot_kind = sym BOOT_KIND,
    ap_next = sym AP_NEXT,
    exc_busy = sym EXC_BUSY,
    exc_frame = sym EXC_FRAME,
    user_start = sym crate::user_start,
    exception_report = sym crate::exception_report,
    boot_elf64 = const BOOT_ELF64,
    boot_pvh = const BOOT_PVH,
    max_cpus = const MAX_CPUS,
    kstack = const KSTACK_SIZE,
    bsp_stack = const BSP_STACK_SIZE,
    ap_stack = const AP_STACK_SIZE,
    exc_stack = const EXC_STACK_SIZE,
    tss_stride = const TSS_STRIDE,
    options(att_syntax)
);

extern "C" {
    /// The CPL0 service gate (see the assembly).
    fn tg_sys_gate(request: u32);
    /// The #UD handler with the gate's fast path.
    fn tg_ud_gate();
    /// The handler of every external interrupt vector.
    fn tg_irq();
    /// The IDT (256 16-byte gates).
    static mut tg_idt: [u64; 512];
}

/// Stops this CPU for good (`cli; hlt` at CPL0).
pub fn halt() -> ! {
    // SAFETY: request 0 is valid from any CPU at any time and never returns.
    unsafe {
        tg_sys_gate(0);
        core::hint::unreachable_unchecked()
    }
}

/// Triple-faults the machine: an IDT with limit 0, then `ud2`, at CPL0.
/// A hypervisor sees a shutdown (KVM_EXIT_SHUTDOWN), i.e. a crash.
pub fn triple_fault() -> ! {
    // SAFETY: request 1 is valid from any CPU at any time and never returns.
    unsafe {
        tg_sys_gate(1);
        core::hint::unreachable_unchecked()
    }
}

/// IDT gate for `handler`: (low, high) quadword. Selector 0x08, type 0x8e
/// (present, DPL 0, 64-bit interrupt gate).
fn gate(handler: unsafe extern "C" fn()) -> (u64, u64) {
    let h = handler as usize as u64;
    let lo = (h & 0xffff) | 0x08 << 16 | 0x8e00 << 32 | (h >> 16 & 0xffff) << 48;
    (lo, h >> 32)
}

/// Points IDT vector 6 (#UD) at `tg_ud_gate` and vectors 32..=255 at
/// `tg_irq`; the boot code leaves them to keep the emulated CPL0 start
/// short. Done at CPL3 (the IDT, like all memory, is mapped USER) before
/// the first [`idle`]; idempotent, and each vector 6 change is one aligned
/// 8-byte write of the gate's low half (the high half, the handler's
/// address bits 63:32, is 0 for both).
pub(crate) fn install_irq_gates() {
    let idt = (&raw mut tg_idt).cast::<u64>();
    let set = |vector: usize, (lo, hi): (u64, u64)| {
        // SAFETY: vector < 256 stays inside the IDT. Nothing delivers
        // vectors 32.. before the first idle request (interrupts are off
        // until then), every writer writes the same values, and a #UD on
        // another CPU sees the old or the new vector 6 gate, both valid.
        unsafe {
            idt.add(2 * vector + 1).write_volatile(hi);
            idt.add(2 * vector).write_volatile(lo);
        }
    };
    for vector in 32..256 {
        set(vector, gate(tg_irq));
    }
    set(6, gate(tg_ud_gate));
}

/// Waits at CPL0 (`sti; hlt`) for the next interrupt on this CPU, and
/// returns with interrupts off and the interrupt not acknowledged (EOI is
/// the caller's). [`install_irq_gates`] must have run.
pub(crate) fn idle() {
    // SAFETY: request 2 returns, clobbering at most what a C callee may.
    unsafe { tg_sys_gate(2) }
}
