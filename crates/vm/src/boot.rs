//! Kernel loading and the boot information handed to the guest.
//!
//! Three ways in, chosen from the file itself:
//! - **bzImage** (Linux boot protocol 2.x): protected-mode part loaded at
//!   1 MiB, entered at its 64-bit entry (load address + 0x200) with a
//!   `boot_params` zero page.
//! - **ELF with a PVH note** (`XEN_ELFNOTE_PHYS32_ENTRY`): entered in 32-bit
//!   protected mode with an `hvm_start_info`.
//! - **ELF without one** (or PVH refused by the user): entered at `e_entry`
//!   in long mode with a zero page, like a 64-bit vmlinux.
//!
//! The loading is linux-loader's; what we add is the choice, the e820 map,
//! the zero page / start info contents, initrd placement and error text a
//! user can act on.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{KernelLoader, KernelLoaderResult};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;
use crate::regs::EntryMode;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const BOOT_FLAG: u16 = 0xaa55;
const HDRS: u32 = 0x5372_6448;
/// `xloadflags` bit: the kernel has a 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
const LOADFLAG_CAN_USE_HEAP: u8 = 0x80;
/// Linux's x86 COMMAND_LINE_SIZE, used when the header does not say.
const LINUX_CMDLINE_MAX: usize = 2048;

/// Which entry to use for an ELF kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH if the ELF has the note, else the 64-bit entry.
    #[default]
    Auto,
    /// Always the 64-bit entry with a zero page.
    Linux64,
    /// Require the PVH note.
    Pvh,
}

/// What was booted, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    BzImage,
    Elf64,
    ElfPvh,
    /// No kernel: firmware (SeaBIOS) from the reset vector.
    Firmware,
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelKind::BzImage => "bzImage",
            KernelKind::Elf64 => "ELF (64-bit entry)",
            KernelKind::ElfPvh => "ELF (PVH entry)",
            KernelKind::Firmware => "firmware (BIOS)",
        })
    }
}

#[derive(Debug)]
pub enum BootError {
    Open(PathBuf, std::io::Error),
    NotAKernel(PathBuf),
    Load(PathBuf, linux_loader::loader::Error),
    No64BitEntry(PathBuf),
    NoPvhNote(PathBuf),
    CmdlineTooLong { len: usize, max: usize },
    CmdlineNul,
    InitrdTooBig { path: PathBuf, size: u64, room: u64 },
    Memory(vm_memory::GuestMemoryError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::Open(p, e) => write!(f, "{}: {e}", p.display()),
            BootError::NotAKernel(p) => {
                write!(
                    f,
                    "{}: not a kernel (neither an ELF64 file nor a bzImage)",
                    p.display()
                )
            }
            BootError::Load(p, e) => write!(f, "{}: cannot load kernel: {e}", p.display()),
            BootError::No64BitEntry(p) => {
                write!(
                    f,
                    "{}: bzImage has no 64-bit entry point (too old a boot protocol)",
                    p.display()
                )
            }
            BootError::NoPvhNote(p) => write!(f, "{}: ELF has no PVH entry note", p.display()),
            BootError::CmdlineTooLong { len, max } => {
                write!(
                    f,
                    "kernel command line is {len} bytes, the kernel accepts at most {max}"
                )
            }
            BootError::CmdlineNul => write!(f, "kernel command line contains a NUL byte"),
            BootError::InitrdTooBig { path, size, room } => write!(
                f,
                "{}: initrd of {size} bytes does not fit in the {room} bytes of guest memory left",
                path.display()
            ),
            BootError::Memory(e) => write!(f, "cannot write boot data to guest memory: {e}"),
        }
    }
}

impl std::error::Error for BootError {}

impl From<vm_memory::GuestMemoryError> for BootError {
    fn from(e: vm_memory::GuestMemoryError) -> Self {
        BootError::Memory(e)
    }
}

/// What the VM needs to boot: the kernel and how to enter it.
#[derive(Clone, Debug, Default)]
pub struct BootConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub protocol: BootProtocol,
}

/// The e820 map for `mem_size` bytes of RAM (see `layout`), sorted by
/// address, with the PCI ECAM reserved where the VM has a PCI bus
/// (`pci`). Both the zero page and the PVH memmap carry it.
pub fn e820_map(mem_size: u64, pci: bool) -> Vec<(u64, u64, u32)> {
    // EBDA, VGA hole, option ROM and BIOS areas (our ACPI tables live in
    // the last) are one reserved range, as on PC firmware. Linux's PVH entry
    // adds 0xa0000-0x100000 as reserved itself; with one range here, the
    // map it prints is the map we built whichever way it was booted.
    let mut map = vec![
        (0, EBDA_ADDR, E820_RAM),
        (EBDA_ADDR, HIMEM_START - EBDA_ADDR, E820_RESERVED),
    ];
    for (base, len) in ram_regions(mem_size) {
        if base == 0 {
            map.push((HIMEM_START, len - HIMEM_START, E820_RAM));
            // The PCI ECAM the MCFG points at, in the MMIO hole: Linux
            // uses an MCFG region only if firmware reserves it (e820 or an
            // ACPI motherboard resource; the DSDT does both). Without a
            // bus there is none (see `acpi`), and Linux walks this map for
            // every page table entry past RAM it sets up: an entry less
            // is ~0.15M emulated instructions less at boot on PVM.
            if pci {
                map.push((PCI_ECAM_ADDR, PCI_ECAM_SIZE, E820_RESERVED));
            }
        } else {
            map.push((base, len, E820_RAM));
        }
    }
    map
}

/// The descriptor `/proc/self/fd/N` names, if `path` is that.
fn held_fd(path: &Path) -> Option<i32> {
    let n = path.to_str()?.strip_prefix("/proc/self/fd/")?;
    // Digits only: no sign, no "+", no leading junk.
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Opens a file the VM boots from (kernel, initrd, BIOS image) for
/// reading, refusing anything but a regular file: a FIFO would block the
/// open until a writer came (for ever: nothing could stop the VM process),
/// a device could be endless or have effects on open. The path is looked
/// at first, so such a file is never opened; it is then opened with
/// O_NONBLOCK and looked at again through the descriptor (it may have been
/// replaced in between), and only then made blocking.
///
/// `/proc/self/fd/N` names a descriptor the process holds (a file opened
/// with a user's rights, or kept for a confined process, which has no
/// /proc): it is duplicated, not opened again, and read from its start.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = |ft: std::fs::FileType| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("is a {}, not a regular file", disk::file_kind(ft)),
        )
    };
    if let Some(fd) = held_fd(path) {
        use std::io::{Seek, SeekFrom};
        use std::os::fd::FromRawFd;
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, ours to own.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor nobody else owns.
        let mut file = unsafe { File::from_raw_fd(dup) };
        let ft = file.metadata()?.file_type();
        if !ft.is_file() {
            return Err(not_regular(ft));
        }
        file.seek(SeekFrom::Start(0))?;
        return Ok(file);
    }
    let ft = std::fs::metadata(path)?.file_type();
    if !ft.is_file() {
        return Err(not_regular(ft));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let ft = file.metadata()?.file_type();
    if !ft.is_file() {
        return Err(not_regular(ft));
    }
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if fl < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    BzImage,
    Elf,
}

fn sniff(path: &Path, file: &mut File) -> Result<Format, BootError> {
    let mut head = [0u8; 0x210];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(BootError::Open(path.to_owned(), e)),
        }
    }
    if n >= 5 && head[..4] == *b"\x7fELF" && head[4] == 2 {
        return Ok(Format::Elf);
    }
    if n >= 0x206
        && u16::from_le_bytes([head[0x1fe], head[0x1ff]]) == BOOT_FLAG
        && u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]) == HDRS
    {
        return Ok(Format::BzImage);
    }
    Err(BootError::NotAKernel(path.to_owned()))
}

/// Zeroes the bytes of each loadable segment past its file image
/// (`p_memsz` beyond `p_filesz`: .bss), which the ELF spec defines as 0 and
/// linux-loader leaves as they are. Fresh guest RAM is zero already, so
/// only a reload over a used guest's memory needs it; guests then need not
/// clear .bss themselves (each page they clear is a fault on PVM).
fn zero_elf_bss(mem: &GuestMemoryMmap, file: &mut File) -> std::io::Result<()> {
    use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
    use std::io::{Seek, SeekFrom};
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut ehdr = Elf64_Ehdr::default();
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(ehdr.as_mut_slice())?;
    file.seek(SeekFrom::Start(ehdr.e_phoff))?;
    for _ in 0..ehdr.e_phnum {
        let mut ph = Elf64_Phdr::default();
        file.read_exact(ph.as_mut_slice())?;
        if ph.p_type != PT_LOAD || ph.p_memsz <= ph.p_filesz {
            continue;
        }
        let start = ph
            .p_paddr
            .checked_add(ph.p_filesz)
            .ok_or_else(|| bad("segment address overflows"))?;
        let len =
            usize::try_from(ph.p_memsz - ph.p_filesz).map_err(|_| bad("segment too large"))?;
        // The loader has already checked that the segment fits in RAM.
        let zeros = vec![0u8; len];
        mem.write_slice(&zeros, GuestAddress(start))
            .map_err(|_| bad("segment past guest memory"))?;
    }
    Ok(())
}

/// Loads kernel, initrd and command line into `mem` and writes the boot
/// information for the chosen entry. Returns the entry and what was booted.
/// `pci`: the VM has a PCI bus (see [`e820_map`]). `ram_is_zero`: `mem`
/// is fresh (all zero), as at power-on; a reload after a guest reset
/// passes false.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    pci: bool,
    cfg: &BootConfig,
    rsdp: GuestAddress,
    ram_is_zero: bool,
) -> Result<(EntryMode, KernelKind), BootError> {
    let path = &cfg.kernel;
    let mut file = open_regular(path).map_err(|e| BootError::Open(path.clone(), e))?;
    let format = sniff(path, &mut file)?;
    let load_err = |e| BootError::Load(path.clone(), e);
    let himem = Some(GuestAddress(HIMEM_START));

    let (result, kind): (KernelLoaderResult, KernelKind) = match format {
        Format::BzImage => {
            let r = BzImage::load(mem, None, &mut file, himem).map_err(load_err)?;
            (r, KernelKind::BzImage)
        }
        Format::Elf => {
            let r = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
            if !ram_is_zero {
                zero_elf_bss(mem, &mut file).map_err(|e| BootError::Open(path.clone(), e))?;
            }
            let pvh = matches!(r.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(_));
            match (cfg.protocol, pvh) {
                (BootProtocol::Pvh, false) => return Err(BootError::NoPvhNote(path.clone())),
                (BootProtocol::Linux64, _) | (BootProtocol::Auto, false) => (r, KernelKind::Elf64),
                _ => (r, KernelKind::ElfPvh),
            }
        }
    };

    let low_end = mem_size.min(MMIO_HOLE_START);
    let cmdline_max = match &result.setup_header {
        Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize).min(CMDLINE_MAX - 1),
        Some(_) => LINUX_CMDLINE_MAX - 1,
        None => CMDLINE_MAX - 1,
    };
    if cfg.cmdline.len() > cmdline_max {
        return Err(BootError::CmdlineTooLong {
            len: cfg.cmdline.len(),
            max: cmdline_max,
        });
    }
    if cfg.cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let mut cmdline = cfg.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_ADDR))?;

    // The initrd goes as high as the kernel allows, below the MMIO hole.
    let initrd_max = match &result.setup_header {
        Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max) + 1,
        _ => u64::MAX,
    };
    let initrd = match &cfg.initrd {
        Some(p) => Some(load_initrd(
            mem,
            p,
            result.kernel_end,
            low_end.min(initrd_max),
        )?),
        None => None,
    };

    let entry = match kind {
        KernelKind::ElfPvh => {
            let PvhBootCapability::PvhEntryPresent(addr) = result.pvh_boot_cap else {
                unreachable!("ElfPvh is only chosen when the note is present")
            };
            write_pvh_info(mem, &e820_map(mem_size, pci), rsdp, initrd)?;
            EntryMode::Pvh {
                entry: addr.raw_value(),
            }
        }
        KernelKind::Elf64 => {
            let hdr = setup_header {
                boot_flag: BOOT_FLAG,
                header: HDRS,
                type_of_loader: 0xff,
                kernel_alignment: 0x0100_0000,
                ..Default::default()
            };
            write_zero_page(mem, &e820_map(mem_size, pci), rsdp, hdr, initrd)?;
            EntryMode::Long64 {
                entry: result.kernel_load.raw_value(),
            }
        }
        KernelKind::BzImage => {
            let mut hdr = result
                .setup_header
                .expect("bzImage loader returns its header");
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry(path.clone()));
            }
            hdr.type_of_loader = 0xff;
            hdr.loadflags |= LOADFLAG_CAN_USE_HEAP;
            write_zero_page(mem, &e820_map(mem_size, pci), rsdp, hdr, initrd)?;
            EntryMode::Long64 {
                entry: result.kernel_load.raw_value() + 0x200,
            }
        }
        KernelKind::Firmware => unreachable!("a kernel file is never firmware"),
    };
    Ok((entry, kind))
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), BootError> {
    let mut f = open_regular(path).map_err(|e| BootError::Open(path.to_owned(), e))?;
    let size = f
        .metadata()
        .map_err(|e| BootError::Open(path.to_owned(), e))?
        .len();
    let floor = kernel_end.next_multiple_of(0x1000);
    let room = limit.saturating_sub(floor);
    if size > room {
        return Err(BootError::InitrdTooBig {
            path: path.to_owned(),
            size,
            room,
        });
    }
    let addr = (limit - size) & !0xfff;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(BootError::Memory)?;
    Ok((addr, size))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    map: &[(u64, u64, u32)],
    rsdp: GuestAddress,
    mut hdr: setup_header,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = CMDLINE_MAX as u32;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    params.hdr = hdr;
    params.acpi_rsdp_addr = rsdp.raw_value();
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;
    Ok(())
}

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct PvhInfo(hvm_start_info);
// SAFETY: plain old data, no padding-dependent invariants.
unsafe impl ByteValued for PvhInfo {}
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct PvhMemmap(hvm_memmap_table_entry);
// SAFETY: as above.
unsafe impl ByteValued for PvhMemmap {}
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct PvhModule(hvm_modlist_entry);
// SAFETY: as above.
unsafe impl ByteValued for PvhModule {}

/// hvm_start_info at PVH_INFO_ADDR, followed by the module list (the
/// initrd) and the memory map.
fn write_pvh_info(
    mem: &GuestMemoryMmap,
    map: &[(u64, u64, u32)],
    rsdp: GuestAddress,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let info_size = std::mem::size_of::<hvm_start_info>() as u64;
    let modlist = PVH_INFO_ADDR + info_size;
    let mut memmap = modlist;
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp.raw_value(),
        ..Default::default()
    };
    if let Some((addr, size)) = initrd {
        let m = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(PvhModule(m), GuestAddress(modlist))?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist;
        memmap += std::mem::size_of::<hvm_modlist_entry>() as u64;
    }
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *kind,
            reserved: 0,
        };
        let at = memmap + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(PvhMemmap(e), GuestAddress(at))?;
    }
    info.memmap_paddr = memmap;
    info.memmap_entries = map.len() as u32;
    mem.write_obj(PvhInfo(info), GuestAddress(PVH_INFO_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_low_and_high_ram() {
        let m = e820_map(256 << 20, true);
        assert_eq!(m[0], (0, 0x9fc00, E820_RAM));
        assert_eq!(m[1], (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED));
        assert_eq!(m[2], (0x100000, (256 << 20) - 0x100000, E820_RAM));
        assert_eq!(m.len(), 4);
        let m = e820_map(4 << 30, true);
        assert_eq!(m.last().unwrap(), &(1 << 32, 1 << 30, E820_RAM));
        assert_eq!(m[2], (0x100000, 0xc000_0000 - 0x100000, E820_RAM));
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn e820_reserves_the_pci_ecam_of_a_bus() {
        for (mem, pci) in [MIN_MEM, 256 << 20, MMIO_HOLE_START, 4 << 30, 64 << 30]
            .into_iter()
            .flat_map(|m| [(m, true), (m, false)])
        {
            let m = e820_map(mem, pci);
            assert_eq!(
                m.contains(&(0xe000_0000, 1 << 20, E820_RESERVED)),
                pci,
                "{mem:#x}: {m:x?}"
            );
            // Sorted, and no RAM overlaps anything.
            for w in m.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "{mem:#x}: {m:x?}");
            }
            let ram: u64 = m.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
            assert_eq!(ram, mem - (HIMEM_START - EBDA_ADDR), "{mem:#x}");
        }
    }

    /// The PVH memmap a PVH kernel gets carries the same map, the ECAM
    /// reservation included.
    #[test]
    fn pvh_memmap_is_the_e820_map() {
        let size = 16 << 20;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let map = e820_map(size, true);
        write_pvh_info(&mem, &map, GuestAddress(ACPI_ADDR), None).unwrap();
        let info: PvhInfo = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        let info = info.0;
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        let n = info.memmap_entries as usize;
        let got: Vec<(u64, u64, u32)> = (0..n)
            .map(|i| {
                let at =
                    info.memmap_paddr + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
                let e: PvhMemmap = mem.read_obj(GuestAddress(at)).unwrap();
                (e.0.addr, e.0.size, e.0.type_)
            })
            .collect();
        assert_eq!(got, map);
        assert!(got.contains(&(PCI_ECAM_ADDR, PCI_ECAM_SIZE, E820_RESERVED)));
    }

    /// So does the zero page a Linux kernel gets.
    #[test]
    fn zero_page_e820_is_the_e820_map() {
        let size = 16 << 20;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let map = e820_map(size, true);
        write_zero_page(
            &mem,
            &map,
            GuestAddress(ACPI_ADDR),
            setup_header::default(),
            None,
        )
        .unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let n = params.e820_entries as usize;
        let got: Vec<(u64, u64, u32)> = params.e820_table[..n]
            .iter()
            .map(|e| (e.addr, e.size, e.r#type))
            .collect();
        assert_eq!(got, map);
        assert!(got.contains(&(PCI_ECAM_ADDR, PCI_ECAM_SIZE, E820_RESERVED)));
    }

    #[test]
    fn rejects_files_that_are_no_kernel() {
        let dir = std::env::temp_dir().join(format!("vm-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("junk");
        std::fs::write(&p, b"#!/bin/sh\necho not a kernel\n").unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let cfg = BootConfig {
            kernel: p.clone(),
            ..Default::default()
        };
        let err = load(&mem, 16 << 20, false, &cfg, GuestAddress(ACPI_ADDR), true).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel(_)), "{err}");
        assert!(err.to_string().contains("not a kernel"));
        let cfg = BootConfig {
            kernel: dir.join("missing"),
            ..Default::default()
        };
        let err = load(&mem, 16 << 20, false, &cfg, GuestAddress(ACPI_ADDR), true).unwrap_err();
        assert!(err.to_string().contains("No such file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reload_zeroes_bss_as_elf_says() {
        let kernel = testguest::path("hello").expect("testguest hello");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        // A used guest's memory: nothing is zero.
        mem.write_slice(&vec![0xa5u8; 16 << 20], GuestAddress(0))
            .unwrap();
        let cfg = BootConfig {
            kernel: kernel.clone(),
            ..Default::default()
        };
        // The segments past their file images, from the program headers.
        let mut bss = Vec::new();
        let mut f = File::open(&kernel).unwrap();
        let mut ehdr = linux_loader::elf::Elf64_Ehdr::default();
        f.read_exact(ehdr.as_mut_slice()).unwrap();
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(ehdr.e_phoff)).unwrap();
        for _ in 0..ehdr.e_phnum {
            let mut ph = linux_loader::elf::Elf64_Phdr::default();
            f.read_exact(ph.as_mut_slice()).unwrap();
            if ph.p_type == linux_loader::elf::PT_LOAD && ph.p_memsz > ph.p_filesz {
                bss.push((ph.p_paddr + ph.p_filesz, ph.p_memsz - ph.p_filesz));
            }
        }
        assert!(!bss.is_empty(), "the test guest has a .bss");
        let read = |(at, len): (u64, u64)| {
            let mut v = vec![0u8; len as usize];
            mem.read_slice(&mut v, GuestAddress(at)).unwrap();
            v
        };
        // Told RAM is fresh, the loader leaves it alone...
        load(&mem, 16 << 20, false, &cfg, GuestAddress(ACPI_ADDR), true).unwrap();
        assert!(read(bss[0]).iter().all(|&b| b == 0xa5));
        // ...on a reload it clears every byte past the file images.
        load(&mem, 16 << 20, false, &cfg, GuestAddress(ACPI_ADDR), false).unwrap();
        for &seg in &bss {
            assert!(read(seg).iter().all(|&b| b == 0), "segment at {:#x}", seg.0);
        }
    }
}
