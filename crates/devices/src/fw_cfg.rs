//! QEMU's firmware configuration interface (fw_cfg), legacy port I/O
//! form: a selector at port 0x510 and a data byte at 0x511 that reads the
//! selected item one byte at a time. SeaBIOS looks for it to learn what a
//! PC board would not tell it; without it SeaBIOS assumes a user at a
//! screen and waits 2.5 s at every boot for a boot-menu key.
//!
//! What we tell it: the "QEMU" signature and the traditional interface
//! (no DMA); the number of CPUs; no boot menu; no graphics (so SeaBIOS
//! puts its screen on COM1, where `vmctl console` shows it, as OpenBSD's
//! vmm-bios does); and an empty file directory, so that SeaBIOS builds its
//! own ACPI tables and takes the memory size from CMOS. Unknown items read
//! as zeroes, as on QEMU.

use std::collections::BTreeMap;

use crate::BusDevice;

/// Selector port; the data port follows it.
pub const FW_CFG_PORT: u16 = 0x510;
/// Ports the device answers: selector (2 bytes) and data (1 byte).
pub const FW_CFG_PORT_LEN: u64 = 2;

const KEY_SIGNATURE: u16 = 0x00;
const KEY_ID: u16 = 0x01;
const KEY_NOGRAPHIC: u16 = 0x04;
const KEY_NB_CPUS: u16 = 0x05;
const KEY_BOOT_MENU: u16 = 0x0e;
const KEY_MAX_CPUS: u16 = 0x0f;
const KEY_FILE_DIR: u16 = 0x19;

pub struct FwCfg {
    items: BTreeMap<u16, Vec<u8>>,
    selected: u16,
    offset: usize,
}

impl FwCfg {
    pub fn new(cpus: u16) -> Self {
        let mut items = BTreeMap::new();
        items.insert(KEY_SIGNATURE, b"QEMU".to_vec());
        // Bit 0: the traditional interface. No DMA (bit 1).
        items.insert(KEY_ID, 1u32.to_le_bytes().to_vec());
        items.insert(KEY_NOGRAPHIC, 1u16.to_le_bytes().to_vec());
        items.insert(KEY_NB_CPUS, cpus.to_le_bytes().to_vec());
        items.insert(KEY_MAX_CPUS, cpus.to_le_bytes().to_vec());
        items.insert(KEY_BOOT_MENU, 0u16.to_le_bytes().to_vec());
        // The file directory: a big-endian count of zero files.
        items.insert(KEY_FILE_DIR, 0u32.to_be_bytes().to_vec());
        FwCfg {
            items,
            selected: 0,
            offset: 0,
        }
    }

    fn next_byte(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.selected)
            .and_then(|v| v.get(self.offset))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            // The data port; wider reads take consecutive bytes (QEMU's
            // port is byte-wide; `insb` is how firmware reads it).
            1 => data.iter_mut().for_each(|b| *b = self.next_byte()),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 2 {
            self.selected = u16::from_le_bytes([data[0], data[1]]);
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(f: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        f.write(0, &key.to_le_bytes());
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                f.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn answers_what_seabios_asks() {
        let mut f = FwCfg::new(4);
        assert_eq!(read_item(&mut f, KEY_SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut f, KEY_ID, 4), [1, 0, 0, 0]);
        assert_eq!(read_item(&mut f, KEY_NB_CPUS, 2), [4, 0]);
        assert_eq!(read_item(&mut f, KEY_BOOT_MENU, 2), [0, 0]);
        assert_eq!(read_item(&mut f, KEY_FILE_DIR, 4), [0, 0, 0, 0]);
        // Past an item's end, and unknown items: zeroes.
        assert_eq!(read_item(&mut f, KEY_SIGNATURE, 6)[4..], [0, 0]);
        assert_eq!(read_item(&mut f, 0x8003, 4), [0; 4]);
    }
}
