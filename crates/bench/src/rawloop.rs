//! The reference for P1: the thinnest possible `KVM_RUN` loop.
//!
//! It boots the same guest ELF the same way our VMM does (same memory
//! layout, page tables, CPUID, ACPI tables, in-kernel irqchip) so the guest
//! runs identical code, then handles exits with nothing but a `match`: the
//! serial data port collects bytes, the line status register says "ready",
//! a write to the ACPI PM1a control port ends the run, everything else is
//! ignored. The difference between this and `vmm` is what our exit path
//! (bus lookup, device locks, run-state check) costs.

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit};
use vm::acpi::{create_acpi_tables, AcpiConfig};
use vm::boot::{self, BootConfig};
use vm::cpuid::{vcpu_cpuid, CpuidConfig};
use vm::layout::{ram_regions, PM1A_CNT_PORT};
use vm::regs::{setup_vcpu, write_boot_tables};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Boots `kernel` with `cmdline` on one vCPU; returns the console output
/// and the guest TSC frequency in kHz.
pub fn run(
    kernel: &std::path::Path,
    cmdline: &str,
    mem_size: u64,
) -> Result<(String, u32), String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: kvm_ioctls::Error| format!("{what}: {err}")
    };
    let kvm = Kvm::new().map_err(e("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(e("create vm"))?;
    vm.set_tss_address(0xfffb_d000).map_err(e("tss"))?;
    vm.create_irq_chip().map_err(e("irqchip"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(e("pit"))?;
    let ranges: Vec<_> = ram_regions(mem_size)
        .into_iter()
        .map(|(a, l)| (GuestAddress(a), l as usize))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(|x| x.to_string())?;
    for (slot, r) in mem.iter().enumerate() {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: r.start_addr().0,
            memory_size: r.len(),
            userspace_addr: r.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `mem` outlives the VM within this function.
        unsafe { vm.set_user_memory_region(region) }.map_err(e("memory region"))?;
    }
    let rsdp = create_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus: 1,
            mem_size,
            pci_slots: Vec::new(),
        },
    )
    .map_err(|x| x.to_string())?;
    let cfg = BootConfig {
        kernel: kernel.to_owned(),
        cmdline: cmdline.to_owned(),
        ..Default::default()
    };
    let (entry, _) =
        boot::load(&mem, mem_size, false, &cfg, rsdp, true).map_err(|x| x.to_string())?;
    write_boot_tables(&mem, entry).map_err(|x| x.to_string())?;
    let mut vcpu = vm.create_vcpu(0).map_err(e("vcpu"))?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(e("cpuid"))?;
    let tsc_khz = vcpu.get_tsc_khz().map_err(e("KVM_GET_TSC_KHZ"))?;
    vcpu.set_cpuid2(&vcpu_cpuid(
        &supported,
        0,
        1,
        tsc_khz,
        &CpuidConfig::default(),
    ))
    .map_err(e("set cpuid"))?;
    let lapic = vcpu.get_lapic().map_err(e("KVM_GET_LAPIC"))?;
    setup_vcpu(&vcpu, Some(entry), &lapic).map_err(e("vcpu setup"))?;

    let mut out = Vec::new();
    loop {
        match vcpu.run().map_err(e("KVM_RUN"))? {
            VcpuExit::IoOut(0x3f8, data) => out.push(data[0]),
            VcpuExit::IoOut(port, _) if port == PM1A_CNT_PORT => break,
            VcpuExit::IoOut(..) => {}
            VcpuExit::IoIn(0x3fd, data) => data[0] = 0x60,
            VcpuExit::IoIn(_, data) => data.fill(0xff),
            VcpuExit::MmioRead(_, data) => data.fill(0xff),
            VcpuExit::MmioWrite(..) => {}
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), tsc_khz))
}
