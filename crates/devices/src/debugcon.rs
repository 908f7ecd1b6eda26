//! The firmware debug console: port 0x402, where SeaBIOS (and OVMF) write
//! their debug log one byte at a time, as on QEMU's `isa-debugcon`. Lines
//! go to this process's log at debug level, so `vmm -vv` shows how far the
//! firmware got. Reads answer 0xe9, the value QEMU's device reads back,
//! by which firmware detects that the port exists.

use crate::BusDevice;

/// Port of the debug console.
pub const DEBUGCON_PORT: u16 = 0x402;
/// Longest line kept; the rest of a longer one is cut.
const MAX_LINE: usize = 512;

#[derive(Default)]
pub struct DebugCon {
    line: Vec<u8>,
}

impl DebugCon {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, b: u8) {
        match b {
            b'\n' => self.flush(),
            b'\r' => {}
            _ if self.line.len() < MAX_LINE => self.line.push(b),
            _ => {}
        }
    }

    fn flush(&mut self) {
        // Control bytes from the guest never reach a terminal or the log.
        let text: String = String::from_utf8_lossy(&self.line)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        log::debug!("firmware: {text}");
        self.line.clear();
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xe9);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        for &b in data {
            self.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_bounds_them() {
        let mut d = DebugCon::new();
        for &b in b"SeaBIOS\r\nx" {
            d.write(0, &[b]);
        }
        assert_eq!(d.line, b"x");
        d.write(0, &vec![b'a'; 2000]);
        assert_eq!(d.line.len(), MAX_LINE);
        let mut r = [0u8];
        d.read(0, &mut r);
        assert_eq!(r[0], 0xe9);
    }
}
