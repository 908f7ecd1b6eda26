//! CPUID presented to the guest.
//!
//! Built from `KVM_GET_SUPPORTED_CPUID` (what this host and KVM can run),
//! then adjusted per vCPU: APIC ids and topology so the guest counts its
//! CPUs right, the hypervisor leaves, features the user asked to hide, and
//! the CPU identity (vendor, family, model, stepping) the user asked for.
//! Hiding matters on this project's PVM hosts, where the CPL0 instruction
//! emulator lacks `cmpxchg16b` and `xsave` (see DESIGN.md).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

// The table of hideable features and the CPU identity rules live in the
// dependency-free `cpumodel` crate, so that vmconf checks vm.conf against the
// very names and ranges applied here without depending on KVM.
pub use cpumodel::{feature, Feature, Reg, Vendor, FEATURES};

use cpumodel::Signature;

/// Who the guest's CPU says it is: CPUID leaf 0's vendor, leaf 1's family,
/// model and stepping. Each one left out is the host's.
///
/// Setting them lets a guest kernel take another vendor's code paths: on
/// this project's AMD PVM hosts, Linux's AMD-only FPU workaround runs
/// instructions KVM's emulator cannot, so the test kernel is shown an
/// Intel CPU. It also keeps a guest's view stable across hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuIdentity {
    pub vendor: Option<Vendor>,
    pub family: Option<u32>,
    pub model: Option<u32>,
    pub stepping: Option<u32>,
}

impl CpuIdentity {
    /// Nothing set: the guest sees the host's identity.
    pub fn is_host(&self) -> bool {
        *self == CpuIdentity::default()
    }
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
    /// Vendor, family, model and stepping shown to the guest.
    pub identity: CpuIdentity,
}

impl Default for CpuidConfig {
    fn default() -> Self {
        CpuidConfig {
            hide: Vec::new(),
            vmware: true,
            identity: CpuIdentity::default(),
        }
    }
}

impl CpuidConfig {
    /// Refuses an identity whose model the guest could not read (see
    /// `cpumodel::check_signature`), with the host's vendor, family and model
    /// standing in for those not given.
    pub fn check(&self, supported: &CpuId) -> Result<(), String> {
        let id = &self.identity;
        if id.is_host() {
            return Ok(());
        }
        let entries = supported.as_slice();
        let host_vendor = vendor_of(entries).unwrap_or_default();
        let vendor = id.vendor.unwrap_or(host_vendor);
        let host = signature_of(entries, &host_vendor);
        let family = id.family.or(host.map(|s| s.family));
        let model = id.model.or(host.map(|s| s.model));
        let (Some(family), Some(model)) = (family, model) else {
            return Ok(());
        };
        cpumodel::check_signature(Some(&vendor), family, model).map_err(|e| {
            let mut taken = Vec::new();
            if id.vendor.is_none() {
                taken.push("vendor");
            }
            if id.family.is_none() {
                taken.push("family");
            }
            if id.model.is_none() {
                taken.push("model");
            }
            if taken.is_empty() {
                e
            } else {
                format!("{e} ({} from the host)", taken.join(" and "))
            }
        })
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

/// Leaf 0's vendor string, which is in EBX, EDX, ECX (in that order).
fn vendor_of(entries: &[kvm_cpuid_entry2]) -> Option<Vendor> {
    let e = entries.iter().find(|e| e.function == 0)?;
    let mut v = [0u8; 12];
    for (i, r) in [e.ebx, e.edx, e.ecx].into_iter().enumerate() {
        v[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
    }
    Some(v)
}

/// Leaf 1's family, model and stepping, read as a CPU of vendor `v` reads them.
fn signature_of(entries: &[kvm_cpuid_entry2], v: &Vendor) -> Option<Signature> {
    let e = entries.iter().find(|e| e.function == 1)?;
    Some(Signature::decode(e.eax, v))
}

/// Puts `id` into leaves 0, 1 and 0x80000000; everything else stays.
fn apply_identity(entries: &mut [kvm_cpuid_entry2], id: &CpuIdentity) {
    if id.is_host() {
        return;
    }
    let host_vendor = vendor_of(entries).unwrap_or_default();
    let host = signature_of(entries, &host_vendor);
    for e in entries.iter_mut() {
        match (e.function, id.vendor, host) {
            // Leaf 0 (and 0x80000000) hold the string in EBX, EDX, ECX.
            (0, Some(v), _) => (e.ebx, e.edx, e.ecx) = sig_regs(&v),
            (1, _, Some(host)) => {
                let sig = Signature {
                    family: id.family.unwrap_or(host.family),
                    model: id.model.unwrap_or(host.model),
                    stepping: id.stepping.unwrap_or(host.stepping),
                };
                e.eax = sig.encode(e.eax);
            }
            // EAX (the highest extended leaf) stays. AMD's CPUs repeat
            // the vendor in EBX, EDX, ECX here, Intel's have zeros:
            // a guest may look, so show what the chosen vendor's CPUs do.
            (0x8000_0000, Some(v), _) => {
                (e.ebx, e.edx, e.ecx) = if cpumodel::echoes_vendor_in_extended_leaf(&v) {
                    sig_regs(&v)
                } else {
                    (0, 0, 0)
                };
            }
            _ => {}
        }
    }
}

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

    apply_identity(&mut entries, &cfg.identity);

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
        // An AMD EPYC (family 25 model 1 stepping 1), as on the dev hosts.
        let (b, c, d) = sig_regs(&cpumodel::AMD);
        CpuId::from_entries(&[
            e(0, 0, 0xd, b, d, c),
            e(
                1,
                0,
                0x00a0_0f11 | (2 << 12),
                0xff_0800,
                (1 << 13) | (1 << 26) | (1 << 27) | (1 << 28),
                0,
            ),
            e(0xb, 0, 1, 2, 0x100, 7),
            e(0xb, 1, 4, 8, 0x201, 7),
            e(0xd, 0, 7, 0, 0, 0),
            e(0x4000_0000, 0, 0x4000_0001, 0, 0, 0),
            e(0x4000_0001, 0, 0x1234, 0, 0, 0),
            e(0x8000_0000, 0, 0x8000_0021, b, d, c),
            e(0x8000_0001, 0, 0x00a0_0f11, 0x2000_0000, 0x21, 1 << 27),
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

    fn vendor(c: &CpuId, leaf: u32) -> Vec<u8> {
        let e = get(c, leaf, 0);
        [e.ebx, e.edx, e.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect()
    }

    fn identity(vendor: Option<Vendor>, family: u32, model: u32, stepping: u32) -> CpuidConfig {
        CpuidConfig {
            identity: CpuIdentity {
                vendor,
                family: Some(family),
                model: Some(model),
                stepping: Some(stepping),
            },
            ..Default::default()
        }
    }

    #[test]
    fn host_identity_by_default() {
        let c = vcpu_cpuid(&host(), 0, 1, 1000, &CpuidConfig::default());
        assert_eq!(vendor(&c, 0), b"AuthenticAMD");
        assert_eq!(vendor(&c, 0x8000_0000), b"AuthenticAMD");
        assert_eq!(get(&c, 1, 0).eax, 0x00a0_0f11 | (2 << 12));
    }

    #[test]
    fn intel_family_6_model_44_on_an_amd_host() {
        let c = vcpu_cpuid(
            &host(),
            0,
            1,
            1000,
            &identity(Some(cpumodel::INTEL), 6, 44, 0),
        );
        assert_eq!(vendor(&c, 0), b"GenuineIntel");
        assert_eq!(get(&c, 0, 0).eax, 0xd);
        // The processor type (bits 13:12) is not part of the signature.
        assert_eq!(get(&c, 1, 0).eax, 0x0002_06c0 | (2 << 12));
        // Intel's CPUs have zeros where AMD's repeat the vendor.
        let ext = get(&c, 0x8000_0000, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx, ext.edx), (0x8000_0021, 0, 0, 0));
    }

    #[test]
    fn amd_on_an_intel_host_repeats_the_vendor() {
        let mut entries = host().as_slice().to_vec();
        let (b, c, d) = sig_regs(&cpumodel::INTEL);
        for e in &mut entries {
            match e.function {
                0 => (e.ebx, e.edx, e.ecx) = (b, d, c),
                0x8000_0000 => (e.ebx, e.edx, e.ecx) = (0, 0, 0),
                1 => e.eax = 0x0005_0654,
                _ => {}
            }
        }
        let intel_host = CpuId::from_entries(&entries).unwrap();
        let cfg = identity(Some(cpumodel::AMD), 25, 1, 0);
        let c = vcpu_cpuid(&intel_host, 0, 1, 1000, &cfg);
        assert_eq!(vendor(&c, 0), b"AuthenticAMD");
        assert_eq!(vendor(&c, 0x8000_0000), b"AuthenticAMD");
        assert_eq!(get(&c, 1, 0).eax, 0x00a0_0f10);
        assert_eq!(cfg.check(&intel_host), Ok(()));
    }

    #[test]
    fn identity_changes_only_its_own_bits() {
        let plain = vcpu_cpuid(&host(), 1, 2, 1000, &CpuidConfig::default());
        let cfg = identity(Some(cpumodel::INTEL), 6, 44, 0);
        let changed = vcpu_cpuid(&host(), 1, 2, 1000, &cfg);
        assert_eq!(plain.as_slice().len(), changed.as_slice().len());
        for (a, b) in plain.as_slice().iter().zip(changed.as_slice()) {
            assert_eq!(
                (a.function, a.index, a.flags),
                (b.function, b.index, b.flags)
            );
            let regs = |e: &kvm_cpuid_entry2| [e.eax, e.ebx, e.ecx, e.edx];
            let diff: Vec<u32> = regs(a).iter().zip(regs(b)).map(|(x, y)| x ^ y).collect();
            let allowed = match a.function {
                0 => [0, !0, !0, !0],
                1 => [cpumodel::SIGNATURE_BITS, 0, 0, 0],
                0x8000_0000 => [0, !0, !0, !0],
                _ => [0; 4],
            };
            for (d, m) in diff.iter().zip(allowed) {
                assert_eq!(d & !m, 0, "leaf {:#x}: {a:x?} -> {b:x?}", a.function);
            }
        }
    }

    #[test]
    fn what_is_not_given_stays_the_hosts() {
        let cfg = CpuidConfig {
            identity: CpuIdentity {
                stepping: Some(7),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = vcpu_cpuid(&host(), 0, 1, 1000, &cfg);
        assert_eq!(get(&c, 1, 0).eax, 0x00a0_0f17 | (2 << 12));
        assert_eq!(vendor(&c, 0), b"AuthenticAMD");
        assert_eq!(vendor(&c, 0x8000_0000), b"AuthenticAMD");
        // Only the family: the host's model 1 stays model 1.
        let cfg = CpuidConfig {
            identity: CpuIdentity {
                family: Some(6),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = vcpu_cpuid(&host(), 0, 1, 1000, &cfg);
        assert_eq!(get(&c, 1, 0).eax & cpumodel::SIGNATURE_BITS, 0x0000_0611);
    }

    #[test]
    fn check_refuses_a_model_the_guest_cannot_read() {
        let h = host();
        assert_eq!(CpuidConfig::default().check(&h), Ok(()));
        assert_eq!(identity(Some(cpumodel::INTEL), 6, 44, 0).check(&h), Ok(()));
        // Without a vendor, this AMD host's: AMD reads no extended model in family 6.
        assert_eq!(
            identity(None, 6, 44, 0).check(&h),
            Err(
                "cpu family 6 cannot have model 44 with vendor AuthenticAMD: \
                 AMD CPUs read the extended model field only from family 15 on \
                 (vendor from the host)"
                    .into()
            )
        );
        let cfg = CpuidConfig {
            identity: CpuIdentity {
                family: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(cfg.check(&h), Ok(()), "the host's model 1 fits family 5");
        let cfg = CpuidConfig {
            identity: CpuIdentity {
                vendor: Some(cpumodel::INTEL),
                model: Some(44),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(cfg.check(&h), Ok(()), "family 25 reads the extended model");
    }
}
