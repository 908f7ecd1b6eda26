//! Each built guest must be something both our loader and qemu accept: an
//! x86-64 ELF64 `ET_EXEC` whose PT_LOAD segments sit at 1 MiB or above, with
//! its 64-bit entry and its PVH entry (Xen PHYS32_ENTRY note in a PT_NOTE
//! segment) inside executable PT_LOAD segments.

use std::fs;

const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

struct Phdr {
    kind: u32,
    flags: u32,
    offset: usize,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn phdrs(elf: &[u8]) -> Vec<Phdr> {
    let phoff = u64_at(elf, 0x20) as usize;
    let phentsize = u16_at(elf, 0x36) as usize;
    let phnum = u16_at(elf, 0x38) as usize;
    assert_eq!(phentsize, 56, "ELF64 program header size");
    (0..phnum)
        .map(|i| {
            let p = &elf[phoff + i * phentsize..][..phentsize];
            Phdr {
                kind: u32_at(p, 0),
                flags: u32_at(p, 4),
                offset: u64_at(p, 8) as usize,
                vaddr: u64_at(p, 16),
                paddr: u64_at(p, 24),
                filesz: u64_at(p, 32),
                memsz: u64_at(p, 40),
            }
        })
        .collect()
}

/// The notes in one PT_NOTE segment: (name without NULs, type, desc).
fn notes(seg: &[u8]) -> Vec<(Vec<u8>, u32, Vec<u8>)> {
    let align4 = |n: usize| (n + 3) & !3;
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= seg.len() {
        let namesz = u32_at(seg, at) as usize;
        let descsz = u32_at(seg, at + 4) as usize;
        let kind = u32_at(seg, at + 8);
        let name_at = at + 12;
        let desc_at = name_at + align4(namesz);
        assert!(desc_at + descsz <= seg.len(), "note overruns its segment");
        let name = seg[name_at..name_at + namesz]
            .iter()
            .copied()
            .filter(|&c| c != 0)
            .collect();
        out.push((name, kind, seg[desc_at..desc_at + descsz].to_vec()));
        at = desc_at + align4(descsz);
    }
    out
}

fn in_exec_load(phdrs: &[Phdr], addr: u64) -> bool {
    phdrs.iter().any(|p| {
        p.kind == PT_LOAD && p.flags & PF_X != 0 && (p.vaddr..p.vaddr + p.memsz).contains(&addr)
    })
}

fn check(name: &str) {
    let path = testguest::path(name).unwrap();
    let elf = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&elf[..4], b"\x7fELF", "{name}: ELF magic");
    assert_eq!(elf[4], 2, "{name}: ELFCLASS64");
    assert_eq!(elf[5], 1, "{name}: little endian");
    assert_eq!(u16_at(&elf, 0x10), ET_EXEC, "{name}: ET_EXEC");
    assert_eq!(u16_at(&elf, 0x12), EM_X86_64, "{name}: x86-64");

    let phdrs = phdrs(&elf);
    let loads: Vec<&Phdr> = phdrs.iter().filter(|p| p.kind == PT_LOAD).collect();
    assert!(!loads.is_empty(), "{name}: no PT_LOAD");
    for p in &loads {
        assert!(
            p.paddr >= 0x10_0000,
            "{name}: PT_LOAD below 1 MiB at {:#x}",
            p.paddr
        );
        assert_eq!(p.paddr, p.vaddr, "{name}: identity-mapped image");
        assert!(p.filesz <= p.memsz && p.offset as u64 + p.filesz <= elf.len() as u64);
    }
    let entry = u64_at(&elf, 0x18);
    assert!(
        in_exec_load(&phdrs, entry),
        "{name}: e_entry {entry:#x} not in code"
    );

    let pvh: Vec<u64> = phdrs
        .iter()
        .filter(|p| p.kind == PT_NOTE)
        .flat_map(|p| notes(&elf[p.offset..p.offset + p.filesz as usize]))
        .filter(|(owner, kind, _)| owner == b"Xen" && *kind == XEN_ELFNOTE_PHYS32_ENTRY)
        .map(|(_, _, desc)| {
            assert!(desc.len() >= 4, "{name}: PHYS32_ENTRY desc too short");
            u64::from(u32_at(&desc, 0))
        })
        .collect();
    assert_eq!(
        pvh.len(),
        1,
        "{name}: want exactly one Xen PHYS32_ENTRY note"
    );
    assert!(
        in_exec_load(&phdrs, pvh[0]),
        "{name}: PVH entry {:#x} not in code",
        pvh[0]
    );
    assert_ne!(pvh[0], entry, "{name}: the two entries are different code");
}

#[test]
fn guests_are_elf64_exec_with_pvh_note() {
    assert!(!testguest::NAMES.is_empty());
    for name in testguest::NAMES {
        check(name);
    }
}

#[test]
fn the_briefed_guests_exist() {
    for name in ["hello", "smp", "reset", "poweroff", "pio", "crash", "tools"] {
        assert!(testguest::path(name).is_some(), "{name}");
    }
}
