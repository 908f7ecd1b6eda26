//! CPUID presented to the guest.
//!
//! Built from `KVM_GET_SUPPORTED_CPUID` (what this host and KVM can run),
//! then adjusted per vCPU: APIC ids and topology so the guest counts its
//! CPUs right, the hypervisor leaves, and features the user asked to hide.
//! Hiding matters on this project's PVM hosts, where the CPL0 instruction
//! emulator lacks `cmpxchg16b` and `xsave` (see DESIGN.md).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// A CPU feature bit that can be hidden from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    leaf: u32,
    subleaf: u32,
    reg: Reg,
    bit: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Ebx,
    Ecx,
    Edx,
}

const fn feat(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// Features that can be named in `--cpu-hide` (Linux `/proc/cpuinfo` names).
pub const FEATURES: &[Feature] = &[
    feat("sse3", 1, 0, Reg::Ecx, 0),
    feat("pclmulqdq", 1, 0, Reg::Ecx, 1),
    feat("monitor", 1, 0, Reg::Ecx, 3),
    feat("ssse3", 1, 0, Reg::Ecx, 9),
    feat("fma", 1, 0, Reg::Ecx, 12),
    feat("cx16", 1, 0, Reg::Ecx, 13),
    feat("pcid", 1, 0, Reg::Ecx, 17),
    feat("sse4_1", 1, 0, Reg::Ecx, 19),
    feat("sse4_2", 1, 0, Reg::Ecx, 20),
    feat("x2apic", 1, 0, Reg::Ecx, 21),
    feat("movbe", 1, 0, Reg::Ecx, 22),
    feat("popcnt", 1, 0, Reg::Ecx, 23),
    feat("tsc_deadline_timer", 1, 0, Reg::Ecx, 24),
    feat("aes", 1, 0, Reg::Ecx, 25),
    feat("xsave", 1, 0, Reg::Ecx, 26),
    feat("avx", 1, 0, Reg::Ecx, 28),
    feat("f16c", 1, 0, Reg::Ecx, 29),
    feat("rdrand", 1, 0, Reg::Ecx, 30),
    feat("fsgsbase", 7, 0, Reg::Ebx, 0),
    feat("bmi1", 7, 0, Reg::Ebx, 3),
    feat("avx2", 7, 0, Reg::Ebx, 5),
    feat("smep", 7, 0, Reg::Ebx, 7),
    feat("bmi2", 7, 0, Reg::Ebx, 8),
    feat("erms", 7, 0, Reg::Ebx, 9),
    feat("invpcid", 7, 0, Reg::Ebx, 10),
    feat("avx512f", 7, 0, Reg::Ebx, 16),
    feat("rdseed", 7, 0, Reg::Ebx, 18),
    feat("smap", 7, 0, Reg::Ebx, 20),
    feat("umip", 7, 0, Reg::Ecx, 2),
    feat("pku", 7, 0, Reg::Ecx, 3),
    feat("la57", 7, 0, Reg::Ecx, 16),
    feat("rdpid", 7, 0, Reg::Ecx, 22),
    feat("fsrm", 7, 0, Reg::Edx, 4),
    feat("pdpe1gb", 0x8000_0001, 0, Reg::Edx, 26),
    feat("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
    feat("lahf_lm", 0x8000_0001, 0, Reg::Ecx, 0),
    feat("abm", 0x8000_0001, 0, Reg::Ecx, 5),
];

/// Looks a feature up by name.
pub fn feature(name: &str) -> Option<Feature> {
    FEATURES.iter().copied().find(|f| f.name == name)
}

/// How the guest's CPUID is shaped, beyond what the host supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuidConfig {
    /// Features cleared in every vCPU's CPUID.
    pub hide: Vec<Feature>,
    /// Advertise the VMware hypervisor signature at 0x40000000 (with the
    /// timing leaf 0x40000010) and move KVM's leaves to 0x40000100.
    ///
    /// On by default: VMware guest tools (open-vm-tools, OpenBSD/NetBSD
    /// vmt(4)) only attach when they find "VMwareVMware", while Linux scans
    /// every 0x100 base, prefers the highest one with the KVM signature
    /// and so keeps kvm-clock and KVM's paravirt features. Off gives the
    /// plain KVM layout.
    pub vmware: bool,
}

impl Default for CpuidConfig {
    fn default() -> Self {
        CpuidConfig {
            hide: Vec::new(),
            vmware: true,
        }
    }
}

const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
const VMWARE_SIGNATURE: &[u8; 12] = b"VMwareVMware";
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// KVM's feature leaf, relative to the base where its signature sits.
const KVM_FEATURES_OFFSET: u32 = 1;
/// KVM's base when VMware's signature takes 0x40000000.
const KVM_BASE_BEHIND_VMWARE: u32 = 0x4000_0100;
/// VMware's timing leaf: EAX = TSC kHz, EBX = APIC bus kHz.
const LEAF_VMWARE_TIMING: u32 = 0x4000_0010;
/// KVM's LAPIC timer ticks at 1 GHz (one bus cycle per ns).
const APIC_BUS_KHZ: u32 = 1_000_000;

const fn sig_regs(sig: &[u8; 12]) -> (u32, u32, u32) {
    (
        u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]),
        u32::from_le_bytes([sig[4], sig[5], sig[6], sig[7]]),
        u32::from_le_bytes([sig[8], sig[9], sig[10], sig[11]]),
    )
}

/// Bits needed to number `n` items (the x2APIC topology shift width).
fn shift_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// CPUID for vCPU `index` of `count`, derived from the host's supported set;
/// `tsc_khz` fills VMware's timing leaf.
pub fn vcpu_cpuid(
    supported: &CpuId,
    index: u32,
    count: u32,
    tsc_khz: u32,
    cfg: &CpuidConfig,
) -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    // KVM's supported list carries its own hypervisor leaves; we rebuild them.
    entries.retain(|e| !(0x4000_0000..0x4000_ffff).contains(&e.function));

    let core_shift = shift_for(count);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC id, [23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | ((count.min(255)) << 16);
                // EDX bit 28 (HTT) says EBX[23:16] is valid.
                if count > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
                // ECX bit 31: running under a hypervisor.
                e.ecx |= 1 << 31;
            }
            // EAX[31:26]: cores per package - 1 (deterministic cache leaf);
            // EAX[25:14]: logical processors sharing the cache - 1. Each
            // vCPU is its own core, with no SMT siblings.
            4 if e.eax & 0x1f != 0 => {
                e.eax = (e.eax & 0x03ff_ffff) | ((count.clamp(1, 64) - 1) << 26);
                e.eax &= !(0xfff << 14);
            }
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (1 thread), level 1 = cores.
                e.edx = index;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_shift;
                        e.ebx = count;
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: ECX[7:0] number of cores - 1, [15:12] APIC id size.
                e.ecx = (e.ecx & !0xf0ff) | (count - 1) | (core_shift << 12);
            }
            _ => {}
        }
    }

    // Hypervisor leaves. KVM's signature and feature leaf keep kvm-clock
    // and KVM's other paravirt features reachable; see `CpuidConfig::vmware`.
    let (kvm_feat_eax, kvm_feat_edx) = supported
        .as_slice()
        .iter()
        .find(|e| e.function == LEAF_HYPERVISOR + KVM_FEATURES_OFFSET)
        .map(|e| (e.eax, e.edx))
        .unwrap_or((0, 0));
    let leaf = |function, eax, sig: Option<&[u8; 12]>| {
        let (ebx, ecx, edx) = sig.map(sig_regs).unwrap_or((0, 0, 0));
        kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    };
    let kvm_base = if cfg.vmware {
        // EAX = highest leaf of the VMware range. 0x40000010's ECX stays 0:
        // its bits 0-1 would make Linux use VMCALL/VMMCALL, which KVM keeps
        // to itself instead of passing to us.
        entries.push(leaf(
            LEAF_HYPERVISOR,
            LEAF_VMWARE_TIMING,
            Some(VMWARE_SIGNATURE),
        ));
        let mut timing = leaf(LEAF_VMWARE_TIMING, tsc_khz, None);
        timing.ebx = APIC_BUS_KHZ;
        entries.push(timing);
        KVM_BASE_BEHIND_VMWARE
    } else {
        LEAF_HYPERVISOR
    };
    let features = kvm_base + KVM_FEATURES_OFFSET;
    entries.push(leaf(kvm_base, features, Some(KVM_SIGNATURE)));
    let mut kvm_features = leaf(features, kvm_feat_eax, None);
    kvm_features.edx = kvm_feat_edx;
    entries.push(kvm_features);

    for f in &cfg.hide {
        for e in entries
            .iter_mut()
            .filter(|e| e.function == f.leaf && e.index == f.subleaf)
        {
            let r = match f.reg {
                Reg::Ebx => &mut e.ebx,
                Reg::Ecx => &mut e.ecx,
                Reg::Edx => &mut e.edx,
            };
            *r &= !(1u32 << f.bit);
        }
        // Without XSAVE the OS cannot enable it either.
        if f.name == "xsave" {
            for e in entries.iter_mut().filter(|e| e.function == 1) {
                e.ecx &= !(1 << 27); // OSXSAVE
                e.ecx &= !(1 << 28); // AVX needs XSAVE
            }
            entries.retain(|e| e.function != 0xd);
        }
    }

    for e in entries.iter_mut() {
        if matches!(e.function, 0xb | 0x1f | 4 | 7 | 0xd) {
            e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        }
    }
    CpuId::from_entries(&entries).expect("CPUID entry count stays within KVM_MAX_CPUID_ENTRIES")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> CpuId {
        let e = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        CpuId::from_entries(&[
            e(0, 0, 0xd, 0, 0, 0),
            e(
                1,
                0,
                0x906ea,
                0xff_0800,
                (1 << 13) | (1 << 26) | (1 << 27) | (1 << 28),
                0,
            ),
            e(0xb, 0, 1, 2, 0x100, 7),
            e(0xb, 1, 4, 8, 0x201, 7),
            e(0xd, 0, 7, 0, 0, 0),
            e(0x4000_0000, 0, 0x4000_0001, 0, 0, 0),
            e(0x4000_0001, 0, 0x1234, 0, 0, 0),
        ])
        .unwrap()
    }

    fn get(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn topology_and_apic_ids() {
        let c = vcpu_cpuid(&host(), 2, 4, 1000, &CpuidConfig::default());
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.edx & (1 << 28), 0);
        assert_ne!(l1.ecx & (1 << 31), 0);
        let smt = get(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.edx), (0, 1, 2));
        let core = get(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 2));
    }

    #[test]
    fn kvm_leaves_are_present() {
        let cfg = CpuidConfig {
            vmware: false,
            ..Default::default()
        };
        let c = vcpu_cpuid(&host(), 0, 1, 1000, &cfg);
        assert_eq!(signature(&c, 0x4000_0000), KVM_SIGNATURE);
        assert_eq!(get(&c, 0x4000_0000, 0).eax, 0x4000_0001);
        assert_eq!(get(&c, 0x4000_0001, 0).eax, 0x1234);
        assert!(c.as_slice().iter().all(|e| e.function != 0x4000_0010));
    }

    fn signature(c: &CpuId, leaf: u32) -> Vec<u8> {
        let h = get(c, leaf, 0);
        let mut sig = Vec::new();
        for r in [h.ebx, h.ecx, h.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        sig
    }

    #[test]
    fn vmware_signature_first_kvm_behind_it() {
        let c = vcpu_cpuid(&host(), 0, 1, 2_445_428, &CpuidConfig::default());
        assert_eq!(signature(&c, 0x4000_0000), VMWARE_SIGNATURE);
        assert_eq!(get(&c, 0x4000_0000, 0).eax, 0x4000_0010);
        let t = get(&c, 0x4000_0010, 0);
        assert_eq!((t.eax, t.ebx, t.ecx, t.edx), (2_445_428, 1_000_000, 0, 0));
        assert_eq!(signature(&c, 0x4000_0100), KVM_SIGNATURE);
        assert_eq!(get(&c, 0x4000_0100, 0).eax, 0x4000_0101);
        assert_eq!(get(&c, 0x4000_0101, 0).eax, 0x1234);
        // Exactly one entry per hypervisor leaf.
        let n = c
            .as_slice()
            .iter()
            .filter(|e| e.function >= 0x4000_0000 && e.function < 0x5000_0000)
            .count();
        assert_eq!(n, 4);
    }

    #[test]
    fn hiding_features_clears_bits() {
        let cfg = CpuidConfig {
            hide: vec![feature("cx16").unwrap(), feature("xsave").unwrap()],
            ..Default::default()
        };
        let c = vcpu_cpuid(&host(), 0, 1, 1000, &cfg);
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ecx & ((1 << 13) | (1 << 26) | (1 << 27) | (1 << 28)), 0);
        assert!(c.as_slice().iter().all(|e| e.function != 0xd));
        assert!(feature("nonsense").is_none());
    }
}
