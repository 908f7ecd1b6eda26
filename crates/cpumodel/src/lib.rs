//! What a guest may be told about its CPU, beyond what the host has: the CPU's identity
//! (vendor, family, model, stepping, as CPUID leaves 0 and 1 give them) and the features
//! that can be hidden, by the names Linux shows in `/proc/cpuinfo`.
//!
//! This crate has no dependencies, on purpose: the `vm` crate applies these to the CPUID it
//! gives KVM, and `vmconf` (which must not pull in KVM) checks vm.conf's `cpu` statements
//! against the same names, ranges and rules, so that `vmd -n` refuses exactly what `vmm`
//! would. Each layer's parser uses the functions here, so their messages agree too.
//!
//! # The signature in CPUID leaf 1, EAX
//!
//! | bits  | field |
//! |-------|-------|
//! | 3:0   | stepping |
//! | 7:4   | (base) model |
//! | 11:8  | (base) family |
//! | 13:12 | processor type (Intel; 0 on AMD) |
//! | 19:16 | extended model |
//! | 27:20 | extended family |
//!
//! How a CPU's family and model are read from it (Intel SDM vol. 2A, CPUID, "Version
//! Information"; AMD APM vol. 3, "CPUID Fn0000_0001_EAX"):
//! - family: the base family, unless it is 0xF; then 0xF plus the extended family. Both
//!   vendors agree. So families up to 14 are written as they are, with an extended family
//!   of 0, and family 15 and above as base 0xF plus `family - 15` (at most 0xF + 0xFF =
//!   0x10E).
//! - model: the base model, plus the extended model shifted left by 4 where the extended
//!   model counts: on Intel when the base family is 6 or 0xF; on AMD (and Hygon) only when
//!   the base family is 0xF (below it, AMD calls the field reserved). So a model above 15 is
//!   only visible in family 6 (not on AMD) and in families 15 and above; [`check_signature`]
//!   refuses the other combinations instead of writing a model no guest would read.
//!   (Linux itself adds the extended model from family 6 up, whatever the vendor.)

/// A register of a CPUID leaf that holds feature bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Ebx,
    Ecx,
    Edx,
}

/// A CPU feature bit that can be hidden from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Linux's `/proc/cpuinfo` name.
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
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

/// Features that can be hidden (`vmm --cpu-hide`, vm.conf's `cpu hide`).
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

/// The names of [`FEATURES`], space separated (for messages).
pub fn feature_names() -> String {
    let names: Vec<&str> = FEATURES.iter().map(|f| f.name).collect();
    names.join(" ")
}

/// A vendor identification string, CPUID leaf 0's EBX, EDX, ECX.
pub type Vendor = [u8; 12];

pub const INTEL: Vendor = *b"GenuineIntel";
pub const AMD: Vendor = *b"AuthenticAMD";
/// Hygon's CPUs are AMD's design and follow AMD's CPUID conventions.
pub const HYGON: Vendor = *b"HygonGenuine";

/// Why a vendor was refused (after "invalid cpu vendor: X").
pub const VENDOR_RULE: &str = "must be intel, amd or 12 printable ASCII characters";

/// `intel`, `amd` (any case) or a vendor string of exactly 12 printable ASCII characters
/// (spaces included: Zhaoxin's is "  Shanghai  "). Err: [`VENDOR_RULE`].
pub fn parse_vendor(s: &str) -> Result<Vendor, String> {
    if s.eq_ignore_ascii_case("intel") {
        return Ok(INTEL);
    }
    if s.eq_ignore_ascii_case("amd") {
        return Ok(AMD);
    }
    let b = s.as_bytes();
    match <Vendor>::try_from(b) {
        Ok(v) if b.iter().all(|c| (0x20..=0x7e).contains(c)) => Ok(v),
        _ => Err(VENDOR_RULE.into()),
    }
}

/// A vendor string as text (it is ASCII when it came from [`parse_vendor`]).
pub fn vendor_str(v: &Vendor) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Whether `v`'s CPUs follow AMD's CPUID conventions (see the crate's documentation).
pub fn is_amd_like(v: &Vendor) -> bool {
    *v == AMD || *v == HYGON
}

/// Whether real CPUs of vendor `v` repeat the vendor string in EBX, ECX, EDX of leaf
/// 0x80000000: AMD's (and Hygon's) do; Intel's return zeros there (reserved), and so, as
/// far as their manuals say, do the others, which follow Intel's layout.
pub fn echoes_vendor_in_extended_leaf(v: &Vendor) -> bool {
    is_amd_like(v)
}

pub const FAMILY_MIN: u32 = 1;
/// Base family 0xF plus the largest extended family, 0xFF.
pub const FAMILY_MAX: u32 = 0xF + 0xFF;
pub const MODEL_MAX: u32 = 0xFF;
pub const STEPPING_MAX: u32 = 0xF;

/// A decimal number, or a hexadecimal one with `0x` (Linux shows these in decimal, vendors'
/// documents often in hex).
pub fn parse_number(s: &str) -> Option<u32> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u32::from_str_radix(hex, 16).ok();
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn in_range(n: u32, lo: u32, hi: u32) -> Result<u32, String> {
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be {lo} to {hi}"))
    }
}

/// A family, 1 to 270 (0x10E). Err: why not, e.g. "must be 1 to 270".
pub fn parse_family(s: &str) -> Result<u32, String> {
    check_family(parse_number(s).unwrap_or(u32::MAX))
}

/// A model, 0 to 255. Err: why not.
pub fn parse_model(s: &str) -> Result<u32, String> {
    check_model(parse_number(s).unwrap_or(u32::MAX))
}

/// A stepping, 0 to 15. Err: why not.
pub fn parse_stepping(s: &str) -> Result<u32, String> {
    check_stepping(parse_number(s).unwrap_or(u32::MAX))
}

/// [`parse_family`] for a number that is already one.
pub fn check_family(n: u32) -> Result<u32, String> {
    in_range(n, FAMILY_MIN, FAMILY_MAX)
}

/// [`parse_model`] for a number that is already one.
pub fn check_model(n: u32) -> Result<u32, String> {
    in_range(n, 0, MODEL_MAX)
}

/// [`parse_stepping`] for a number that is already one.
pub fn check_stepping(n: u32) -> Result<u32, String> {
    in_range(n, 0, STEPPING_MAX)
}

/// Whether CPUs of vendor `v` read the extended model field in `family` (crate docs).
pub fn reads_extended_model(v: &Vendor, family: u32) -> bool {
    if is_amd_like(v) {
        family >= 0xF
    } else {
        family == 6 || family >= 0xF
    }
}

/// Refuses a model above 15 in a family where the guest would not read the extended model
/// field, for vendor `v` (None: not known yet, so only what no vendor reads is refused).
/// Err: a message starting with "cpu family".
pub fn check_signature(v: Option<&Vendor>, family: u32, model: u32) -> Result<(), String> {
    if model <= 0xF {
        return Ok(());
    }
    match v {
        Some(v) if is_amd_like(v) && !reads_extended_model(v, family) => Err(format!(
            "cpu family {family} cannot have model {model} with vendor {}: \
             AMD CPUs read the extended model field only from family 15 on",
            vendor_str(v)
        )),
        _ if family != 6 && family < 0xF => Err(format!(
            "cpu family {family} cannot have model {model}: \
             the extended model field counts only in family 6 and from family 15 on"
        )),
        _ => Ok(()),
    }
}

/// Family, model and stepping, as a person reads them (Linux's "cpu family", "model",
/// "stepping").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
}

/// The bits of leaf 1's EAX that [`Signature::encode`] writes: stepping, model, family,
/// extended model, extended family. The processor type (13:12) and the reserved bits
/// (15:14, 31:28) are not part of it.
pub const SIGNATURE_BITS: u32 = 0x0fff_0fff;

impl Signature {
    /// Reads leaf 1's EAX as a CPU of vendor `v` does (crate docs).
    pub fn decode(eax: u32, v: &Vendor) -> Signature {
        let base_family = (eax >> 8) & 0xf;
        let ext_family = (eax >> 20) & 0xff;
        let base_model = (eax >> 4) & 0xf;
        let ext_model = (eax >> 16) & 0xf;
        let family = if base_family == 0xf {
            base_family + ext_family
        } else {
            base_family
        };
        let ext_counts = if is_amd_like(v) {
            base_family == 0xf
        } else {
            base_family == 6 || base_family == 0xf
        };
        Signature {
            family,
            model: if ext_counts {
                (ext_model << 4) | base_model
            } else {
                base_model
            },
            stepping: eax & 0xf,
        }
    }

    /// `eax` with this signature in it (crate docs), its other bits kept. The values must
    /// be in range (`parse_*`); out-of-range bits are cut off.
    pub fn encode(self, eax: u32) -> u32 {
        let family = self.family.min(FAMILY_MAX);
        let (base_family, ext_family) = if family < 0xf {
            (family, 0)
        } else {
            (0xf, family - 0xf)
        };
        let fields = (self.stepping & 0xf)
            | ((self.model & 0xf) << 4)
            | (base_family << 8)
            | (((self.model >> 4) & 0xf) << 16)
            | (ext_family << 20);
        (eax & !SIGNATURE_BITS) | fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(family: u32, model: u32, stepping: u32) -> Signature {
        Signature {
            family,
            model,
            stepping,
        }
    }

    #[test]
    fn encodings_from_the_manuals() {
        // Intel Westmere-EP (family 6 model 44 = 0x2c): extended model 2, base model 0xc.
        assert_eq!(sig(6, 44, 0).encode(0), 0x0002_06c0);
        assert_eq!(sig(6, 44, 2).encode(0), 0x0002_06c2);
        // AMD Zen 3 (family 25 = 0xF + 0xA, model 1).
        assert_eq!(sig(25, 1, 0).encode(0), 0x00a0_0f10);
        // Family 15 itself: base 0xF, extended 0.
        assert_eq!(sig(15, 0x41, 3).encode(0), 0x0004_0f13);
        // The largest family; a small one.
        assert_eq!(sig(FAMILY_MAX, 0xff, 0xf).encode(0), 0x0fff_0fff);
        assert_eq!(sig(5, 4, 3).encode(0), 0x0000_0543);
    }

    #[test]
    fn encode_keeps_the_other_bits() {
        // Processor type 2 (bits 13:12) and the reserved bits survive; the old fields go.
        let old = 0xf000_f000 | 0x0fff_0fff;
        assert_eq!(sig(6, 44, 0).encode(old), 0xf000_f000 | 0x0002_06c0);
    }

    #[test]
    fn decode_is_encode_reversed() {
        for (f, m, s) in [
            (6, 44, 0),
            (25, 1, 0),
            (15, 0x41, 3),
            (270, 255, 15),
            (5, 4, 3),
        ] {
            let v = if f == 6 { &INTEL } else { &AMD };
            assert_eq!(Signature::decode(sig(f, m, s).encode(0), v), sig(f, m, s));
        }
        // AMD does not read the extended model below family 15; Intel does in family 6.
        assert_eq!(Signature::decode(0x0002_06c0, &AMD).model, 0xc);
        assert_eq!(Signature::decode(0x0002_06c0, &INTEL).model, 44);
        assert_eq!(Signature::decode(0x0002_05c0, &INTEL).model, 0xc);
        // This project's dev hosts: AMD EPYC, family 25 model 1.
        assert_eq!(Signature::decode(0x00a0_0f11, &AMD), sig(25, 1, 1));
    }

    #[test]
    fn models_above_15_need_a_family_that_reads_them() {
        assert!(check_signature(None, 6, 44).is_ok());
        assert!(check_signature(Some(&INTEL), 6, 44).is_ok());
        assert!(check_signature(Some(&AMD), 25, 0x21).is_ok());
        assert!(check_signature(None, 5, 15).is_ok());
        assert_eq!(
            check_signature(None, 5, 16).unwrap_err(),
            "cpu family 5 cannot have model 16: \
             the extended model field counts only in family 6 and from family 15 on"
        );
        assert!(check_signature(Some(&INTEL), 14, 16).is_err());
        assert_eq!(
            check_signature(Some(&AMD), 6, 44).unwrap_err(),
            "cpu family 6 cannot have model 44 with vendor AuthenticAMD: \
             AMD CPUs read the extended model field only from family 15 on"
        );
        assert!(check_signature(Some(&HYGON), 6, 44).is_err());
    }

    #[test]
    fn vendors() {
        assert_eq!(parse_vendor("intel"), Ok(INTEL));
        assert_eq!(parse_vendor("Intel"), Ok(INTEL));
        assert_eq!(parse_vendor("amd"), Ok(AMD));
        assert_eq!(parse_vendor("GenuineIntel"), Ok(INTEL));
        assert_eq!(parse_vendor("  Shanghai  "), Ok(*b"  Shanghai  "));
        for bad in [
            "",
            "via",
            "GenuineIntel!",
            "GenuineInte",
            "Genuine\tntel",
            "GenuineIntél",
        ] {
            assert_eq!(parse_vendor(bad), Err(VENDOR_RULE.into()), "{bad:?}");
        }
        assert!(echoes_vendor_in_extended_leaf(&AMD));
        assert!(echoes_vendor_in_extended_leaf(&HYGON));
        assert!(!echoes_vendor_in_extended_leaf(&INTEL));
        assert!(!echoes_vendor_in_extended_leaf(b"CentaurHauls"));
    }

    #[test]
    fn numbers_and_ranges() {
        assert_eq!(parse_number("44"), Some(44));
        assert_eq!(parse_number("0x2c"), Some(44));
        assert_eq!(parse_number("0X2C"), Some(44));
        for bad in ["", "0x", "-1", "+1", "1e3", "0x-1", "44 ", "99999999999"] {
            assert_eq!(parse_number(bad), None, "{bad:?}");
        }
        assert_eq!(parse_family("1"), Ok(1));
        assert_eq!(parse_family("0x10e"), Ok(270));
        assert_eq!(parse_family("0"), Err("must be 1 to 270".into()));
        assert_eq!(parse_family("271"), Err("must be 1 to 270".into()));
        assert_eq!(parse_model("255"), Ok(255));
        assert_eq!(parse_model("256"), Err("must be 0 to 255".into()));
        assert_eq!(parse_stepping("15"), Ok(15));
        assert_eq!(parse_stepping("x"), Err("must be 0 to 15".into()));
    }

    #[test]
    fn feature_table() {
        assert_eq!(
            feature("cx16").map(|f| (f.leaf, f.reg, f.bit)),
            Some((1, Reg::Ecx, 13))
        );
        assert!(feature("warp-drive").is_none());
        // Names are unique, and so are the bits they stand for.
        for (i, a) in FEATURES.iter().enumerate() {
            for b in &FEATURES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(
                    (a.leaf, a.subleaf, a.reg, a.bit),
                    (b.leaf, b.subleaf, b.reg, b.bit)
                );
            }
        }
        assert!(feature_names().starts_with("sse3 pclmulqdq "));
    }
}
