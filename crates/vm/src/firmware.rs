//! PC firmware (SeaBIOS's `bios.bin`) for VMs that boot from a disk or a
//! CD-ROM instead of a kernel, as OpenBSD's vmd boots them with vmm-bios.
//!
//! The image is mapped twice, as a PC chipset decodes it: read-only at the
//! top of the 32-bit space (where the reset vector 0xfffffff0 fetches
//! from), and its last 128 KiB copied into RAM at 0xe0000-0xfffff, the
//! legacy BIOS area where real-mode code runs and which firmware makes
//! writable for its own data (on an i440FX through the PAM registers; here
//! it is RAM from the start). Nothing else is prepared: the firmware finds
//! the RAM size in CMOS, builds its own tables, scans PCI, assigns BARs
//! and loads the boot sector of the device the CMOS boot order names.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, MmapRegion};

/// Debian's SeaBIOS (package `seabios`), the default firmware.
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios.bin";

/// The legacy BIOS area below 1 MiB: its last 128 KiB.
const LOW_BIOS_START: u64 = 0xe_0000;
const LOW_BIOS_LEN: usize = 0x2_0000;

/// Smallest and largest images accepted: SeaBIOS builds are 128 or 256
/// KiB; 16 MiB is the most a flash chip below 4 GiB conventionally holds.
const MIN_SIZE: usize = 64 << 10;
const MAX_SIZE: usize = 16 << 20;

/// Which device the firmware boots first (CMOS boot order, as QEMU's
/// `-boot` sets it for SeaBIOS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootDevice {
    #[default]
    Disk,
    Cdrom,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareConfig {
    pub bios: PathBuf,
    pub boot: BootDevice,
}

#[derive(Debug)]
pub enum FirmwareError {
    Open(PathBuf, std::io::Error),
    Size(PathBuf, usize),
    Map(String),
}

impl fmt::Display for FirmwareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirmwareError::Open(p, e) => write!(f, "firmware {}: {e}", p.display()),
            FirmwareError::Size(p, n) => write!(
                f,
                "firmware {}: {n} bytes; a BIOS image is a multiple of 64 KiB from 64 KiB to 16 MiB",
                p.display()
            ),
            FirmwareError::Map(e) => write!(f, "firmware mapping: {e}"),
        }
    }
}

impl std::error::Error for FirmwareError {}

/// A BIOS image read into memory of its own, mapped at the top of 4 GiB.
pub struct Firmware {
    image: Vec<u8>,
    rom: MmapRegion,
}

impl Firmware {
    pub fn load(path: &Path) -> Result<Firmware, FirmwareError> {
        let open = |e| FirmwareError::Open(path.to_owned(), e);
        let mut f = crate::boot::open_regular(path).map_err(open)?;
        let mut image = Vec::new();
        // Read at most one byte past the limit to tell "too big" apart.
        f.by_ref()
            .take(MAX_SIZE as u64 + 1)
            .read_to_end(&mut image)
            .map_err(open)?;
        let n = image.len();
        if !(MIN_SIZE..=MAX_SIZE).contains(&n) || n % MIN_SIZE != 0 {
            return Err(FirmwareError::Size(path.to_owned(), n));
        }
        let rom = MmapRegion::new(n).map_err(|e| FirmwareError::Map(e.to_string()))?;
        // SAFETY: the region was just mapped with `n` bytes; nothing else
        // refers to it yet.
        unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), rom.as_ptr(), n) };
        Ok(Firmware { image, rom })
    }

    /// Guest address of the high mapping: it ends at 4 GiB.
    pub fn rom_base(&self) -> u64 {
        (1u64 << 32) - self.image.len() as u64
    }

    pub fn rom_len(&self) -> u64 {
        self.image.len() as u64
    }

    /// Host address of the high mapping, for KVM_SET_USER_MEMORY_REGION.
    pub fn rom_host_addr(&self) -> u64 {
        self.rom.as_ptr() as u64
    }

    /// Puts the image's last 128 KiB at 0xe0000 in RAM: at power-on and
    /// again at every reset, since the firmware writes its data there.
    pub fn copy_low(&self, mem: &GuestMemoryMmap) -> Result<(), FirmwareError> {
        let n = self.image.len().min(LOW_BIOS_LEN);
        let tail = &self.image[self.image.len() - n..];
        let at = LOW_BIOS_START + (LOW_BIOS_LEN - n) as u64;
        mem.write_slice(tail, GuestAddress(at))
            .map_err(|e| FirmwareError::Map(e.to_string()))
    }
}

/// Whether the file at `path` looks like a BIOS image rather than a
/// kernel: a whole number of 64 KiB, and a jump at the reset vector (16
/// bytes before the end), as OpenBSD's vm.conf lets `boot` name either.
pub fn looks_like_bios(path: &Path) -> bool {
    use std::io::{Seek, SeekFrom};
    // Not a regular file: not a BIOS (and not opened, so not waited on).
    let Ok(mut f) = crate::boot::open_regular(path) else {
        return false;
    };
    let Ok(md) = f.metadata() else { return false };
    let n = md.len();
    if !md.is_file() || n < MIN_SIZE as u64 || n > MAX_SIZE as u64 || n % MIN_SIZE as u64 != 0 {
        return false;
    }
    let mut b = [0u8; 1];
    // 0xea: jmp far (SeaBIOS, most BIOSes); 0xe9: jmp near.
    f.seek(SeekFrom::Start(n - 16)).is_ok()
        && f.read_exact(&mut b).is_ok()
        && matches!(b[0], 0xea | 0xe9)
}

/// CMOS bytes SeaBIOS reads on an emulator without fw_cfg: the boot order
/// (0x3d: first and second device, 0x38 high nibble: third; 1 floppy, 2
/// hard disk, 3 CD-ROM) with bit 0 of 0x38 set to skip the floppy boot
/// signature check, and the number of CPUs less one (0x5f).
pub fn cmos_settings(boot: BootDevice, vcpus: u32) -> [(u8, u8); 3] {
    let order: u8 = match boot {
        BootDevice::Disk => 0x32,  // disk, then CD-ROM
        BootDevice::Cdrom => 0x23, // CD-ROM, then disk
    };
    [
        (0x3d, order),
        (0x38, 0x01),
        (0x5f, vcpus.saturating_sub(1).min(255) as u8),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_checks_sizes() {
        let dir = std::env::temp_dir();
        let p = dir.join(format!("fw-test-{}.bin", std::process::id()));
        let mut img = vec![0u8; 128 << 10];
        img[(128 << 10) - 16] = 0xea; // reset vector
        std::fs::write(&p, &img).unwrap();
        let fw = Firmware::load(&p).unwrap();
        assert_eq!(fw.rom_base(), 0xfffe_0000);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        fw.copy_low(&mem).unwrap();
        let b: u8 = mem.read_obj(GuestAddress(0xffff0)).unwrap();
        assert_eq!(b, 0xea);
        std::fs::write(&p, vec![0u8; 1000]).unwrap();
        let e = Firmware::load(&p).err().unwrap();
        assert!(e.to_string().contains("1000 bytes"), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = Firmware::load(Path::new("/nonexistent/bios.bin"))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("firmware /nonexistent/bios.bin: "),
            "{e}"
        );
    }

    #[test]
    fn boot_order_in_cmos() {
        assert_eq!(cmos_settings(BootDevice::Cdrom, 2)[0], (0x3d, 0x23));
        assert_eq!(cmos_settings(BootDevice::Disk, 1)[2], (0x5f, 0));
    }
}
