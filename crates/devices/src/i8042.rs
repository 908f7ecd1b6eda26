//! i8042 PS/2 controller, reduced to what a VM without a keyboard needs:
//! the "pulse reset line" command that guests use to reboot.
//!
//! Ports 0x60 (data) and 0x64 (status on read, command on write). The VM
//! inserts the device at base 0x60 with length [`I8042_PORT_LEN`], so
//! offset 0 is 0x60 and offset 4 is 0x64 — the numbering
//! `vm_superio::I8042Device` uses, so offsets pass through unchanged.
//! Port 0x61 (NMI status / speaker gate) sits inside that range but KVM's
//! in-kernel PIT claims it, so it never reaches us.
//!
//! Every read returns 0: status 0 says "output buffer empty, input buffer
//! empty", which lets a guest's reset path (wait for the input buffer to
//! drain, then write 0xFE) proceed, and lets a PS/2 driver's probe time
//! out instead of seeing phantom devices.

use std::convert::Infallible;

use vm_superio::{I8042Device, Trigger};

use crate::{BusDevice, SharedEvents, VmEvent};

/// Ports the VM maps to the controller: 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// Turns the controller's CPU reset pulse into a VM reset request.
struct ResetTrigger(SharedEvents);

impl Trigger for ResetTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.request(VmEvent::Reset);
        Ok(())
    }
}

pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller that asks `events` for [`VmEvent::Reset`] when the
    /// guest pulses the CPU reset line (command 0xFE on port 0x64).
    pub fn new(events: SharedEvents) -> Self {
        I8042 {
            dev: I8042Device::new(ResetTrigger(events)),
        }
    }
}

/// An 8-bit ISA device: wider accesses are split into byte accesses to
/// consecutive ports.
impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match u8::try_from(offset + i as u64) {
                Ok(off) if u64::from(off) < I8042_PORT_LEN => self.dev.read(off),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if let Ok(off) = u8::try_from(offset + i as u64) {
                if u64::from(off) < I8042_PORT_LEN {
                    // The trigger is infallible.
                    let Ok(()) = self.dev.write(off, b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestEvents;

    const DATA: u64 = 0;
    const COMMAND: u64 = 4;
    const CMD_PULSE_RESET: u8 = 0xfe;

    #[test]
    fn reset_command_requests_vm_reset() {
        let events = TestEvents::new();
        let mut kbd = I8042::new(events.clone());
        kbd.write(COMMAND, &[CMD_PULSE_RESET]);
        assert_eq!(events.events(), vec![VmEvent::Reset]);
    }

    #[test]
    fn other_commands_and_ports_do_nothing() {
        let events = TestEvents::new();
        let mut kbd = I8042::new(events.clone());
        // Read-config-byte command, a data byte equal to the reset
        // command, and the reset command on a port that is not 0x64.
        kbd.write(COMMAND, &[0x20]);
        kbd.write(DATA, &[CMD_PULSE_RESET]);
        kbd.write(3, &[CMD_PULSE_RESET]);
        assert!(events.events().is_empty());
    }

    #[test]
    fn status_reads_idle() {
        let events = TestEvents::new();
        let mut kbd = I8042::new(events);
        let mut b = [0xaa];
        kbd.read(COMMAND, &mut b);
        assert_eq!(b, [0]);
        kbd.read(DATA, &mut b);
        assert_eq!(b, [0]);
        // A word read at 0x64 runs past the device.
        let mut w = [0xaa; 2];
        kbd.read(COMMAND, &mut w);
        assert_eq!(w, [0, 0xff]);
    }

    #[test]
    fn word_write_reaching_the_command_port_resets() {
        let events = TestEvents::new();
        let mut kbd = I8042::new(events.clone());
        kbd.write(3, &[0x00, CMD_PULSE_RESET]);
        assert_eq!(events.events(), vec![VmEvent::Reset]);
    }
}
