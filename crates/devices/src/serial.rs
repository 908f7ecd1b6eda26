//! 8250/16550A UART, as found at COM1 (0x3f8, 8 ports, ISA IRQ 4).
//!
//! The register model is `vm_superio::Serial`; this file adapts it to the
//! bus, the guest's interrupt line and the VMM's console plumbing. The
//! guest's output goes to whatever `Write` the VMM opened (stdout, a log
//! file, a pty); console input is pushed in with [`Serial::enqueue_input`].

use std::convert::Infallible;
use std::io::Write;

use vm_superio::serial::{Error as UartError, NoEvents};
use vm_superio::Trigger;

use crate::{BusDevice, SharedIrq};

/// Number of I/O ports the UART decodes (THR/RBR .. SCR).
pub const SERIAL_PORT_LEN: u64 = 8;

/// Raises the UART's interrupt. The 8250 IRQ is an ISA edge-triggered
/// line, and vm-superio calls the trigger once per new interrupt
/// condition, so one call is one pulse.
struct IrqTrigger(SharedIrq);

impl Trigger for IrqTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.pulse();
        Ok(())
    }
}

type Uart = vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>;

/// A COM port. Insert it on the port I/O bus with length
/// [`SERIAL_PORT_LEN`].
pub struct Serial {
    uart: Uart,
    /// Guest bytes the output refused (e.g. a pty with no reader). The
    /// guest is never blocked or told: a real UART does not know whether
    /// anyone listens on the wire either.
    lost_bytes: u64,
}

impl Serial {
    /// A UART raising `irq` and writing the guest's output to `out`.
    ///
    /// Each byte is written and flushed as the guest sends it, because the
    /// console is interactive (prompts do not end in a newline); buffer in
    /// `out` only if that is what the caller wants.
    pub fn new(irq: SharedIrq, out: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(IrqTrigger(irq), out),
            lost_bytes: 0,
        }
    }

    /// Queue console input for the guest to read. Returns how many bytes of
    /// `bytes` fit in the receive FIFO; the caller keeps the rest and
    /// offers it again once the guest has read some (the FIFO is 64 bytes).
    /// Nothing is accepted while the guest has the UART in loopback mode.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        // The only error left is FullFifo (the trigger cannot fail): none
        // of the bytes fit.
        self.uart.enqueue_raw_bytes(bytes).unwrap_or_default()
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Guest output bytes that could not be written to the output.
    pub fn lost_bytes(&self) -> u64 {
        self.lost_bytes
    }

    fn read_byte(&mut self, offset: u64) -> u8 {
        match u8::try_from(offset) {
            Ok(off) if offset < SERIAL_PORT_LEN => self.uart.read(off),
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, offset: u64, value: u8) {
        let Ok(off) = u8::try_from(offset) else {
            return;
        };
        if offset >= SERIAL_PORT_LEN {
            return;
        }
        match self.uart.write(off, value) {
            Ok(()) => {}
            Err(UartError::IOError(_)) => self.lost_bytes += 1,
            Err(UartError::Trigger(never)) => match never {},
            // Only `enqueue_raw_bytes` reports a full FIFO; a guest write
            // to the transmitter never does.
            Err(UartError::FullFifo) => {}
        }
    }
}

/// The UART is an 8-bit device. A wider access is split into byte accesses
/// to consecutive registers, as the ISA bus does for 8-bit peripherals.
impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_byte(offset + i as u64);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.write_byte(offset + i as u64, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{BrokenPipe, SharedBuf, TestIrq};

    // Register offsets and bits, from the 16550A data sheet.
    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LCR_DLAB: u8 = 0x80;
    const MCR_LOOP: u8 = 0x10;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE: u8 = 0x20;
    const IIR_NONE: u8 = 0x01;
    const IIR_ID_MASK: u8 = 0x0f;
    const IIR_THRE: u8 = 0x02;
    const IIR_RDA: u8 = 0x04;

    fn serial() -> (Serial, std::sync::Arc<TestIrq>, SharedBuf) {
        let irq = TestIrq::new();
        let out = SharedBuf::default();
        (Serial::new(irq.clone(), Box::new(out.clone())), irq, out)
    }

    fn inb(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    fn outb(s: &mut Serial, off: u64, v: u8) {
        s.write(off, &[v]);
    }

    #[test]
    fn guest_output_is_written_and_flushed_per_byte() {
        let (mut s, irq, out) = serial();
        for &c in b"login: " {
            outb(&mut s, THR, c);
        }
        assert_eq!(out.contents(), b"login: ");
        assert_eq!(out.flushes(), 7);
        // No interrupt: the guest has not enabled any.
        assert_eq!(irq.pulses(), 0);
        assert_ne!(inb(&mut s, LSR) & LSR_THRE, 0);
        assert_eq!(s.lost_bytes(), 0);
    }

    #[test]
    fn transmitter_empty_interrupt_when_enabled() {
        let (mut s, irq, _out) = serial();
        outb(&mut s, IER, IER_THRE);
        // Enabling THRE with an empty transmitter interrupts at once.
        assert_eq!(irq.pulses(), 1);
        assert_eq!(inb(&mut s, IIR) & IIR_ID_MASK, IIR_THRE);
        // Reading IIR acknowledged it.
        assert_eq!(inb(&mut s, IIR) & IIR_ID_MASK, IIR_NONE);
        outb(&mut s, THR, b'x');
        assert_eq!(irq.pulses(), 2);
    }

    #[test]
    fn input_is_queued_and_read_back_with_an_interrupt() {
        let (mut s, irq, _out) = serial();
        outb(&mut s, IER, IER_RDA);
        assert_eq!(irq.pulses(), 0);
        assert_eq!(inb(&mut s, LSR) & LSR_DR, 0);

        assert_eq!(s.enqueue_input(b"ok\n"), 3);
        assert_eq!(irq.pulses(), 1);
        assert_ne!(inb(&mut s, LSR) & LSR_DR, 0);
        assert_eq!(inb(&mut s, IIR) & IIR_ID_MASK, IIR_RDA);
        assert_eq!(inb(&mut s, RBR), b'o');
        assert_eq!(inb(&mut s, RBR), b'k');
        assert_eq!(inb(&mut s, RBR), b'\n');
        assert_eq!(inb(&mut s, LSR) & LSR_DR, 0);
        assert_eq!(s.enqueue_input(b""), 0);
    }

    #[test]
    fn input_beyond_the_fifo_is_refused() {
        let (mut s, _irq, _out) = serial();
        let cap = s.fifo_capacity();
        assert_eq!(cap, 64);
        let big = vec![b'a'; cap + 10];
        assert_eq!(s.enqueue_input(&big), cap);
        assert_eq!(s.fifo_capacity(), 0);
        assert_eq!(s.enqueue_input(b"more"), 0);
        inb(&mut s, RBR);
        assert_eq!(s.enqueue_input(b"more"), 1);
    }

    #[test]
    fn loopback_mode_takes_no_console_input() {
        let (mut s, _irq, out) = serial();
        outb(&mut s, MCR, MCR_LOOP);
        assert_eq!(s.enqueue_input(b"abc"), 0);
        // In loopback the transmitted byte comes back on the receiver and
        // never reaches the output.
        outb(&mut s, THR, b'z');
        assert_eq!(inb(&mut s, RBR), b'z');
        assert!(out.contents().is_empty());
    }

    #[test]
    fn divisor_latch_does_not_transmit() {
        let (mut s, _irq, out) = serial();
        outb(&mut s, LCR, LCR_DLAB | 0x03);
        outb(&mut s, 0, 0x01); // 115200 baud
        outb(&mut s, 1, 0x00);
        assert_eq!(inb(&mut s, 0), 0x01);
        outb(&mut s, LCR, 0x03);
        assert!(out.contents().is_empty());
    }

    #[test]
    fn output_errors_are_counted_not_fatal() {
        let irq = TestIrq::new();
        let mut s = Serial::new(irq.clone(), Box::new(BrokenPipe));
        outb(&mut s, IER, IER_THRE);
        inb(&mut s, IIR);
        outb(&mut s, THR, b'a');
        inb(&mut s, IIR);
        outb(&mut s, THR, b'b');
        assert_eq!(s.lost_bytes(), 2);
        // The guest still sees its transmitter drain, so it never hangs
        // waiting on a console nobody reads.
        assert_eq!(irq.pulses(), 3);
        assert_ne!(inb(&mut s, LSR) & LSR_THRE, 0);
    }

    #[test]
    fn wide_accesses_split_into_bytes() {
        let (mut s, _irq, out) = serial();
        // A word write at SCR-1 (MSR, read-only) + SCR stores the high byte
        // in the scratch register.
        s.write(SCR - 1, &[0x00, 0x5a]);
        assert_eq!(inb(&mut s, SCR), 0x5a);
        let mut w = [0u8; 2];
        s.read(SCR, &mut w);
        // The second byte falls past the device.
        assert_eq!(w, [0x5a, 0xff]);
        s.write(THR, &[b'h', 0x00]);
        assert_eq!(out.contents(), b"h");
    }
}
