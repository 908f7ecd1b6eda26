//! i8042 PS/2 keyboard controller ("8042"), with a keyboard that has no
//! keys and an empty aux (mouse) port.
//!
//! Ports 0x60 (data) and 0x64 (status on read, command on write). The VM
//! inserts the device at base 0x60 with length [`I8042_PORT_LEN`], so
//! offset 0 is 0x60 and offset 4 is 0x64. Port 0x61 (NMI status / speaker
//! gate) sits inside that range but KVM's in-kernel PIT claims it, so it
//! never reaches us; 0x62 and 0x63 read as an empty bus (0xff).
//!
//! The model follows the controller as Linux drives it
//! (drivers/input/serio/i8042.c, libps2, atkbd) and as the IBM PS/2
//! technical reference describes it:
//!
//! * The controller has one output buffer register. Bytes from the
//!   controller (command answers), from the devices and from the loopback
//!   commands wait in a bounded queue ([`QUEUE_LEN`]) and enter the
//!   output buffer one at a time; reading port 0x60 takes the byte and the
//!   next one moves in.
//! * The keyboard/aux interrupt lines follow "output buffer full with a
//!   keyboard (aux) byte and CTR interrupt enable for that port", as the
//!   8042's IRQ1/IRQ12 output pins do; each rising edge is one
//!   [`crate::IrqLine::pulse`] on the ISA edge-triggered line.
//! * The keyboard answers what atkbd sends, so a guest finds a working
//!   keyboard at once instead of waiting for timeouts. It never produces
//!   a key code.
//! * Nothing is plugged into the aux port: a byte sent to it with 0xD4
//!   comes back as a transmit timeout (see [`NO_AUX_DEVICE`]).
//!
//! All state is plain data in [`I8042State`]; the I/O side (interrupt
//! lines, VM reset requests) lives beside it in [`I8042`].

use std::collections::VecDeque;

use crate::{BusDevice, SharedEvents, SharedIrq, VmEvent};

/// Ports the VM maps to the controller: 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// ISA IRQ of the aux (PS/2 mouse) port. The keyboard's is IRQ 1.
pub const I8042_AUX_IRQ: u32 = 12;

/// Output bytes that may wait for the output buffer, the one in it
/// included. Linux's `i8042_flush` reads at most 16 bytes
/// (`I8042_BUFFER_SIZE`) before declaring the controller broken, so the
/// whole backlog must fit in that.
pub const QUEUE_LEN: usize = 16;

/// What a 0xD4 byte gets back with no aux device attached: 0xFE in the
/// output buffer with the aux and timeout status bits set. This is what a
/// PS/2 controller reports when the device never clocks the byte in, and
/// what Linux's interrupt handler turns into `SERIO_TIMEOUT`: psmouse
/// then aborts the command at once (`ps2_cmd_aborted`) rather than waiting
/// out libps2's per-byte and per-command timeouts. With
/// `i8042.notimeout`, the same 0xFE reads as a NAK, on which libps2
/// sends the byte once more and then gives up. Answering nothing at all
/// would work too, but costs the guest a libps2 timeout (200 ms) per
/// probe byte; real controllers answer like this one.
pub const NO_AUX_DEVICE: u8 = 0xfe;

/// Status register bits (port 0x64, read).
pub mod status {
    /// Output buffer full: port 0x60 has a byte.
    pub const OBF: u8 = 0x01;
    /// Input buffer full. Always clear: writes are processed at once.
    pub const IBF: u8 = 0x02;
    /// System flag: the controller passed its self-test (mirrors CTR bit 2).
    pub const SYS: u8 = 0x04;
    /// The last write went to the command port (0x64), not 0x60.
    pub const CMD: u8 = 0x08;
    /// Keyboard not inhibited (the keylock switch is open).
    pub const UNLOCKED: u8 = 0x10;
    /// The output buffer holds a byte from the aux port.
    pub const AUXDATA: u8 = 0x20;
    /// The byte in the output buffer reports a timeout.
    pub const TIMEOUT: u8 = 0x40;
    /// The byte in the output buffer had a parity error (never set here).
    pub const PARITY: u8 = 0x80;
}

/// Controller configuration byte (CTR, "command byte") bits.
pub mod ctr {
    /// Raise IRQ 1 when a keyboard byte lands in the output buffer.
    pub const KBDINT: u8 = 0x01;
    /// Raise IRQ 12 when an aux byte lands in the output buffer.
    pub const AUXINT: u8 = 0x02;
    /// System flag, copied to status bit 2.
    pub const SYS: u8 = 0x04;
    /// Ignore the keylock switch.
    pub const IGNKEYLOCK: u8 = 0x08;
    /// Keyboard port disabled (clock held low).
    pub const KBDDIS: u8 = 0x10;
    /// Aux port disabled.
    pub const AUXDIS: u8 = 0x20;
    /// Translate keyboard bytes from scan code set 2 to set 1.
    pub const XLATE: u8 = 0x40;

    /// The CTR as a PC BIOS leaves it after POST, which is what a guest
    /// booted without firmware expects to find: keyboard interrupt on
    /// (the BIOS's own INT 9 handler needed it), system flag set (POST
    /// ran the self-test), translation on (the BIOS and DOS-era software
    /// expect set 1 codes; Linux keeps whatever it finds), and the aux
    /// port disabled with its interrupt off, as a BIOS leaves it when it
    /// found no mouse. Linux reads this once at probe and writes it back
    /// at shutdown.
    pub const POWER_ON: u8 = XLATE | AUXDIS | SYS | KBDINT;
}

/// Output port bits (command 0xD0 reads it, 0xD1 writes it).
pub mod outport {
    /// CPU reset line, active low.
    pub const RESET_N: u8 = 0x01;
    /// A20 gate. Stored only: KVM guests always see all address lines.
    pub const A20: u8 = 0x02;
    /// IRQ 1 output: output buffer full with a keyboard byte.
    pub const KBD_IRQ: u8 = 0x10;
    /// IRQ 12 output: output buffer full with an aux byte.
    pub const AUX_IRQ: u8 = 0x20;
    /// Reset released, A20 on, aux and keyboard clock/data lines idle high.
    pub const POWER_ON: u8 = 0xcf;
}

/// Controller commands (port 0x64, write).
mod cmd {
    pub const READ_CTR: u8 = 0x20;
    pub const WRITE_CTR: u8 = 0x60;
    pub const AUX_DISABLE: u8 = 0xa7;
    pub const AUX_ENABLE: u8 = 0xa8;
    pub const AUX_TEST: u8 = 0xa9;
    pub const SELF_TEST: u8 = 0xaa;
    pub const KBD_TEST: u8 = 0xab;
    pub const KBD_DISABLE: u8 = 0xad;
    pub const KBD_ENABLE: u8 = 0xae;
    pub const READ_OUTPORT: u8 = 0xd0;
    pub const WRITE_OUTPORT: u8 = 0xd1;
    pub const KBD_LOOP: u8 = 0xd2;
    pub const AUX_LOOP: u8 = 0xd3;
    pub const AUX_SEND: u8 = 0xd4;
    /// 0xF0..=0xFF pulse output port bits 0-3 low for each clear bit of
    /// the low nibble; 0xFE pulses the CPU reset line.
    pub const PULSE_BASE: u8 = 0xf0;
}

/// Answer to the self-test command.
const SELF_TEST_OK: u8 = 0x55;
/// Answer to the interface tests: no clock or data line stuck.
const INTERFACE_OK: u8 = 0x00;

/// Keyboard commands and answers.
mod kbd {
    pub const SET_LEDS: u8 = 0xed;
    pub const ECHO: u8 = 0xee;
    pub const SCANCODE_SET: u8 = 0xf0;
    pub const GET_ID: u8 = 0xf2;
    pub const TYPEMATIC: u8 = 0xf3;
    pub const ENABLE: u8 = 0xf4;
    pub const DISABLE: u8 = 0xf5;
    pub const DEFAULTS: u8 = 0xf6;
    /// 0xF7..=0xFA: set-3 "all keys typematic/make/break" commands.
    pub const SET_ALL_FIRST: u8 = 0xf7;
    pub const SET_ALL_LAST: u8 = 0xfa;
    pub const RESEND: u8 = 0xfe;
    pub const RESET: u8 = 0xff;

    pub const ACK: u8 = 0xfa;
    pub const BAT_OK: u8 = 0xaa;
    pub const NAK: u8 = 0xfe;
    /// MF2 keyboard ID, sent after the ACK to 0xF2.
    pub const ID: [u8; 2] = [0xab, 0x83];
    /// Default typematic byte: 10.9 characters/s after 500 ms.
    pub const DEFAULT_TYPEMATIC: u8 = 0x2b;
}

/// Where a byte in the output queue came from; decides the status bits
/// it shows and the interrupt it raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The controller's answer to a command: keyboard-side, IRQ 1.
    Controller,
    /// The keyboard: waits while the keyboard port is disabled, and is
    /// translated to set 1 if the CTR says so when it enters the output
    /// buffer.
    Keyboard,
    /// Written with 0xD2: shows as keyboard data, untranslated.
    KbdLoopback,
    /// Written with 0xD3: shows as aux data (AUXDATA), IRQ 12.
    AuxLoopback,
    /// The controller's timeout report for a byte the aux port could not
    /// deliver: AUXDATA | TIMEOUT, IRQ 12.
    AuxTimeout,
}

impl Source {
    fn is_aux(self) -> bool {
        matches!(self, Source::AuxLoopback | Source::AuxTimeout)
    }
}

/// One byte waiting for, or sitting in, the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutByte {
    pub byte: u8,
    pub source: Source,
}

/// What the next byte written to port 0x60 means when a controller
/// command takes a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataTarget {
    /// Internal RAM byte `n` (0x60..=0x7F); byte 0 is the CTR.
    Ram(u8),
    OutputPort,
    KbdLoopback,
    AuxLoopback,
    Aux,
}

/// The keyboard behind the keyboard port: state only, no keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyboardState {
    /// A command (0xED, 0xF0, 0xF3) waiting for its argument byte.
    pub awaiting: Option<u8>,
    /// Scanning enabled (0xF4) or disabled (0xF5).
    pub scanning: bool,
    /// Scan code set, 1..=3.
    pub scancode_set: u8,
    /// LED bits from 0xED: scroll, num, caps lock.
    pub leds: u8,
    /// Typematic rate/delay byte from 0xF3.
    pub typematic: u8,
    /// The last byte sent, for the resend command.
    pub last_sent: u8,
}

impl Default for KeyboardState {
    /// The keyboard after its power-on self-test.
    fn default() -> Self {
        KeyboardState {
            awaiting: None,
            scanning: true,
            scancode_set: 2,
            leds: 0,
            typematic: kbd::DEFAULT_TYPEMATIC,
            last_sent: kbd::BAT_OK,
        }
    }
}

/// Up to three bytes a keyboard sends back for one received byte.
#[derive(Default)]
struct Reply {
    bytes: [u8; 3],
    len: usize,
}

impl Reply {
    fn of(bytes: &[u8]) -> Self {
        let mut r = Reply::default();
        r.bytes[..bytes.len()].copy_from_slice(bytes);
        r.len = bytes.len();
        r
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl KeyboardState {
    /// What 0xF6 (and 0xF5) restore: the default typematic rate/delay
    /// and scan code set 2. The LEDs stay as they are.
    fn set_defaults(&mut self) {
        self.typematic = kbd::DEFAULT_TYPEMATIC;
        self.scancode_set = 2;
    }

    /// The keyboard receives `b` from the controller; returns its answer.
    fn receive(&mut self, b: u8) -> Reply {
        if let Some(pending) = self.awaiting {
            // A byte from the command range (0xED up) where an argument
            // was due is taken as a new command and the argument is
            // dropped, so a confused guest cannot wedge the keyboard.
            // (Scan code set and LED arguments are small, typematic bytes
            // have bit 7 clear.)
            if b < kbd::SET_LEDS {
                return self.argument(pending, b);
            }
            self.awaiting = None;
        }
        let reply = match b {
            kbd::SET_LEDS | kbd::SCANCODE_SET | kbd::TYPEMATIC => {
                self.awaiting = Some(b);
                Reply::of(&[kbd::ACK])
            }
            kbd::ECHO => Reply::of(&[kbd::ECHO]),
            kbd::GET_ID => Reply::of(&[kbd::ACK, kbd::ID[0], kbd::ID[1]]),
            kbd::ENABLE => {
                self.scanning = true;
                Reply::of(&[kbd::ACK])
            }
            kbd::DISABLE => {
                self.set_defaults();
                self.scanning = false;
                Reply::of(&[kbd::ACK])
            }
            kbd::DEFAULTS => {
                self.set_defaults();
                Reply::of(&[kbd::ACK])
            }
            kbd::SET_ALL_FIRST..=kbd::SET_ALL_LAST => Reply::of(&[kbd::ACK]),
            // Resend is answered with the previous byte, which is not
            // itself recorded as sent again.
            kbd::RESEND => return Reply::of(&[self.last_sent]),
            kbd::RESET => {
                *self = KeyboardState::default();
                Reply::of(&[kbd::ACK, kbd::BAT_OK])
            }
            _ => Reply::of(&[kbd::NAK]),
        };
        self.note_sent(&reply);
        reply
    }

    /// `b` is the argument of `pending`.
    fn argument(&mut self, pending: u8, b: u8) -> Reply {
        let reply = match pending {
            kbd::SET_LEDS => {
                self.leds = b & 0x07;
                Reply::of(&[kbd::ACK])
            }
            kbd::TYPEMATIC if b & 0x80 == 0 => {
                self.typematic = b;
                Reply::of(&[kbd::ACK])
            }
            kbd::SCANCODE_SET if b == 0 => Reply::of(&[kbd::ACK, self.scancode_set]),
            kbd::SCANCODE_SET if (1..=3).contains(&b) => {
                self.scancode_set = b;
                Reply::of(&[kbd::ACK])
            }
            // A bad argument: ask for it again, still waiting.
            _ => return self.sent(Reply::of(&[kbd::NAK])),
        };
        self.awaiting = None;
        self.sent(reply)
    }

    fn sent(&mut self, reply: Reply) -> Reply {
        self.note_sent(&reply);
        reply
    }

    fn note_sent(&mut self, reply: &Reply) {
        if let Some(&last) = reply.as_slice().last() {
            self.last_sent = last;
        }
    }
}

/// Scan code translation (CTR bit 6) as the controller applies it to
/// keyboard bytes: set 2 codes become set 1 codes. The full table maps
/// every key code; a keyboard without keys only ever sends command
/// answers, so only the bytes it can send are listed: the scan code set
/// numbers (answer to 0xF0 0x00) and the second ID byte 0x83, which is
/// why translating controllers report the MF2 ID as AB 41. Bytes from
/// 0x84 up (ACK, BAT, echo, resend, the first ID byte) pass unchanged.
/// The controller's handling of the set 2 break prefix 0xF0 is not
/// needed: the keyboard never sends it.
fn translate(b: u8) -> u8 {
    match b {
        0x01 => 0x43,
        0x02 => 0x41,
        0x03 => 0x3f,
        0x83 => 0x41,
        _ => b,
    }
}

/// Everything the controller and its keyboard remember. Plain data: a
/// snapshot can copy it as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I8042State {
    /// Internal RAM as commands 0x20..=0x3F / 0x60..=0x7F reach it; byte 0
    /// is the CTR.
    pub ram: [u8; 32],
    /// Output port as last written (bits 4 and 5 read live).
    pub output_port: u8,
    /// The last write went to port 0x64 (status bit 3).
    pub last_write_was_command: bool,
    /// Where the next data-port byte goes, if a command asked for one.
    pub data_target: Option<DataTarget>,
    /// The output buffer register.
    pub output: Option<OutByte>,
    /// Bytes waiting for the output buffer; with `output`, never more than
    /// [`QUEUE_LEN`].
    pub queue: VecDeque<OutByte>,
    /// Port 0x60 reads this once the buffer is empty, as the real
    /// register keeps its last value.
    pub last_read: u8,
    /// Output bytes dropped because the queue was full.
    pub overruns: u64,
    /// The levels last driven on the IRQ 1 and IRQ 12 outputs; a rising
    /// edge is a pulse.
    pub kbd_irq_level: bool,
    pub aux_irq_level: bool,
    pub keyboard: KeyboardState,
}

impl Default for I8042State {
    /// The controller as a BIOS leaves it.
    fn default() -> Self {
        let mut ram = [0; 32];
        ram[0] = ctr::POWER_ON;
        I8042State {
            ram,
            output_port: outport::POWER_ON,
            last_write_was_command: false,
            data_target: None,
            output: None,
            queue: VecDeque::with_capacity(QUEUE_LEN),
            last_read: 0,
            overruns: 0,
            kbd_irq_level: false,
            aux_irq_level: false,
            keyboard: KeyboardState::default(),
        }
    }
}

impl I8042State {
    pub fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn set_ctr(&mut self, v: u8) {
        self.ram[0] = v;
    }

    /// Status register.
    pub fn status(&self) -> u8 {
        let mut s = status::UNLOCKED;
        if self.ctr() & ctr::SYS != 0 {
            s |= status::SYS;
        }
        if self.last_write_was_command {
            s |= status::CMD;
        }
        if let Some(out) = self.output {
            s |= status::OBF;
            if out.source.is_aux() {
                s |= status::AUXDATA;
            }
            if out.source == Source::AuxTimeout {
                s |= status::TIMEOUT;
            }
        }
        s
    }

    /// Output port as command 0xD0 reports it.
    fn output_port_value(&self) -> u8 {
        let mut v = self.output_port & !(outport::KBD_IRQ | outport::AUX_IRQ);
        if self.kbd_irq_level {
            v |= outport::KBD_IRQ;
        }
        if self.aux_irq_level {
            v |= outport::AUX_IRQ;
        }
        v
    }

    /// Bytes held by the controller, output buffer included.
    pub fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.output.is_some())
    }

    fn push(&mut self, byte: u8, source: Source) {
        if self.pending() < QUEUE_LEN {
            self.queue.push_back(OutByte { byte, source });
        } else {
            self.overruns += 1;
        }
    }

    /// If the output buffer is empty, moves the first byte that may go
    /// there into it. Keyboard bytes wait while the keyboard port is
    /// disabled; everything else is the controller's own and goes at once.
    fn refill(&mut self) {
        if self.output.is_some() {
            return;
        }
        let kbd_disabled = self.ctr() & ctr::KBDDIS != 0;
        let next = self
            .queue
            .iter()
            .position(|o| !(o.source == Source::Keyboard && kbd_disabled));
        if let Some(mut out) = next.and_then(|i| self.queue.remove(i)) {
            if out.source == Source::Keyboard && self.ctr() & ctr::XLATE != 0 {
                out.byte = translate(out.byte);
            }
            self.output = Some(out);
        }
    }

    /// The IRQ 1 / IRQ 12 output levels the current state asks for.
    fn irq_levels(&self) -> (bool, bool) {
        match self.output {
            None => (false, false),
            Some(o) if o.source.is_aux() => (false, self.ctr() & ctr::AUXINT != 0),
            Some(_) => (self.ctr() & ctr::KBDINT != 0, false),
        }
    }
}

/// The controller on the bus, with its interrupt lines and the VM reset
/// it can request.
pub struct I8042 {
    state: I8042State,
    kbd_irq: SharedIrq,
    aux_irq: SharedIrq,
    events: SharedEvents,
}

impl I8042 {
    /// A controller in its power-on state raising `kbd_irq` (ISA IRQ 1) and
    /// `aux_irq` (ISA IRQ 12), asking `events` for [`VmEvent::Reset`] when
    /// the guest pulls the CPU reset line (0xFE, or 0xD1 with bit 0 clear).
    pub fn new(kbd_irq: SharedIrq, aux_irq: SharedIrq, events: SharedEvents) -> Self {
        I8042 {
            state: I8042State::default(),
            kbd_irq,
            aux_irq,
            events,
        }
    }

    pub fn state(&self) -> &I8042State {
        &self.state
    }

    /// Back to power-on state, as after a machine reset with firmware.
    /// Interrupt lines are left low.
    pub fn reset(&mut self) {
        self.state = I8042State::default();
    }

    /// Drives the IRQ lines to what the state asks for; a rising edge is
    /// one interrupt.
    fn update_irqs(&mut self) {
        let (kbd, aux) = self.state.irq_levels();
        if kbd && !self.state.kbd_irq_level {
            self.kbd_irq.pulse();
        }
        if aux && !self.state.aux_irq_level {
            self.aux_irq.pulse();
        }
        self.state.kbd_irq_level = kbd;
        self.state.aux_irq_level = aux;
    }

    /// Queues an output byte and lets the output buffer take it if empty.
    fn output(&mut self, byte: u8, source: Source) {
        self.state.push(byte, source);
        self.settle();
    }

    /// After any change: fill the output buffer, update the IRQ lines.
    fn settle(&mut self) {
        self.state.refill();
        self.update_irqs();
    }

    fn read_data(&mut self) -> u8 {
        if let Some(out) = self.state.output.take() {
            self.state.last_read = out.byte;
            // The line falls with the buffer emptying, so the next byte
            // is a new edge.
            self.update_irqs();
            self.settle();
        }
        self.state.last_read
    }

    fn write_data(&mut self, b: u8) {
        self.state.last_write_was_command = false;
        match self.state.data_target.take() {
            Some(DataTarget::Ram(n)) => {
                self.state.ram[usize::from(n & 0x1f)] = b;
                // A new CTR may enable a port or an interrupt.
                self.settle();
            }
            Some(DataTarget::OutputPort) => self.write_output_port(b),
            Some(DataTarget::KbdLoopback) => self.output(b, Source::KbdLoopback),
            Some(DataTarget::AuxLoopback) => self.output(b, Source::AuxLoopback),
            Some(DataTarget::Aux) => self.output(NO_AUX_DEVICE, Source::AuxTimeout),
            None => {
                let reply = self.state.keyboard.receive(b);
                for &r in reply.as_slice() {
                    self.state.push(r, Source::Keyboard);
                }
                self.settle();
            }
        }
    }

    fn write_output_port(&mut self, b: u8) {
        if b & outport::RESET_N == 0 {
            self.events.request(VmEvent::Reset);
        }
        // The reset is taken as a pulse: the line is released again, so a
        // guest restarted without firmware finds the port as it left it,
        // minus the reset.
        self.state.output_port = b | outport::RESET_N;
    }

    fn write_command(&mut self, c: u8) {
        self.state.last_write_was_command = true;
        // A new command abandons a parameter the previous one waited for.
        self.state.data_target = None;
        match c {
            cmd::READ_CTR..=0x3f => {
                let v = self.state.ram[usize::from(c & 0x1f)];
                self.output(v, Source::Controller);
            }
            cmd::WRITE_CTR..=0x7f => self.state.data_target = Some(DataTarget::Ram(c & 0x1f)),
            cmd::AUX_DISABLE => self.update_ctr(|v| v | ctr::AUXDIS),
            cmd::AUX_ENABLE => self.update_ctr(|v| v & !ctr::AUXDIS),
            cmd::AUX_TEST | cmd::KBD_TEST => self.output(INTERFACE_OK, Source::Controller),
            cmd::SELF_TEST => {
                // The self-test reinitialises the controller: whatever
                // waited for the output buffer is gone, the system flag
                // says the test passed.
                self.state.output = None;
                self.state.queue.clear();
                self.state.ram[0] |= ctr::SYS;
                self.update_irqs();
                self.output(SELF_TEST_OK, Source::Controller);
            }
            cmd::KBD_DISABLE => self.update_ctr(|v| v | ctr::KBDDIS),
            cmd::KBD_ENABLE => self.update_ctr(|v| v & !ctr::KBDDIS),
            cmd::READ_OUTPORT => {
                let v = self.state.output_port_value();
                self.output(v, Source::Controller);
            }
            cmd::WRITE_OUTPORT => self.state.data_target = Some(DataTarget::OutputPort),
            cmd::KBD_LOOP => self.state.data_target = Some(DataTarget::KbdLoopback),
            cmd::AUX_LOOP => self.state.data_target = Some(DataTarget::AuxLoopback),
            cmd::AUX_SEND => self.state.data_target = Some(DataTarget::Aux),
            // 0xF0..=0xFF pulse each output port line whose bit in the
            // low nibble is clear; bit 0 is the CPU reset. The other
            // lines (A20, the aux lines) come back at once: nothing to do.
            cmd::PULSE_BASE..=0xff if c & outport::RESET_N == 0 => {
                self.events.request(VmEvent::Reset);
            }
            // Other pulses, password, input port, test-input and vendor
            // commands: a controller without them ignores them.
            _ => {}
        }
    }

    fn update_ctr(&mut self, f: impl FnOnce(u8) -> u8) {
        let v = f(self.state.ctr());
        self.state.set_ctr(v);
        self.settle();
    }

    fn read_port(&mut self, off: u64) -> u8 {
        match off {
            0 => self.read_data(),
            4 => self.state.status(),
            _ => 0xff,
        }
    }

    fn write_port(&mut self, off: u64, b: u8) {
        match off {
            0 => self.write_data(b),
            4 => self.write_command(b),
            _ => {}
        }
    }
}

/// An 8-bit ISA device: wider accesses are split into byte accesses to
/// consecutive ports.
impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(off) if off < I8042_PORT_LEN => self.read_port(off),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if let Some(off) = offset.checked_add(i as u64) {
                if off < I8042_PORT_LEN {
                    self.write_port(off, b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testutil::{TestEvents, TestIrq};

    const DATA: u64 = 0;
    const COMMAND: u64 = 4;

    struct Rig {
        dev: I8042,
        kbd_irq: Arc<TestIrq>,
        aux_irq: Arc<TestIrq>,
        events: Arc<TestEvents>,
    }

    impl Rig {
        fn new() -> Self {
            let kbd_irq = TestIrq::new();
            let aux_irq = TestIrq::new();
            let events = TestEvents::new();
            let dev = I8042::new(kbd_irq.clone(), aux_irq.clone(), events.clone());
            Rig {
                dev,
                kbd_irq,
                aux_irq,
                events,
            }
        }

        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.dev.read(COMMAND, &mut b);
            b[0]
        }

        fn data(&mut self) -> u8 {
            let mut b = [0];
            self.dev.read(DATA, &mut b);
            b[0]
        }

        fn command(&mut self, c: u8) {
            self.dev.write(COMMAND, &[c]);
        }

        fn send(&mut self, b: u8) {
            self.dev.write(DATA, &[b]);
        }

        /// Linux's i8042_command: command, parameters, then one byte per
        /// expected answer once OBF is set. None if OBF never comes.
        fn i8042_command(&mut self, c: u8, params: &[u8], answers: usize) -> Option<Vec<u8>> {
            assert_eq!(self.status() & status::IBF, 0);
            self.command(c);
            for &p in params {
                assert_eq!(self.status() & status::IBF, 0);
                self.send(p);
            }
            let mut out = Vec::new();
            for _ in 0..answers {
                if self.status() & status::OBF == 0 {
                    return None;
                }
                out.push(self.data());
            }
            Some(out)
        }

        /// Linux's i8042_flush: reads while OBF, fails after 16 bytes.
        fn flush(&mut self) -> Result<usize, ()> {
            let mut n = 0;
            while self.status() & status::OBF != 0 {
                if n == 16 {
                    return Err(());
                }
                self.data();
                n += 1;
            }
            Ok(n)
        }

        /// What an interrupt handler sees: (status, data) while OBF.
        fn drain(&mut self) -> Vec<(u8, u8)> {
            let mut v = Vec::new();
            while self.status() & status::OBF != 0 {
                let s = self.status();
                v.push((s, self.data()));
            }
            v
        }

        fn drain_bytes(&mut self) -> Vec<u8> {
            self.drain().into_iter().map(|(_, d)| d).collect()
        }

        /// Sends `bytes` to the keyboard, collecting its answers.
        fn ask(&mut self, bytes: &[u8]) -> Vec<u8> {
            let mut got = Vec::new();
            for &b in bytes {
                self.send(b);
                got.extend(self.drain_bytes());
            }
            got
        }
    }

    #[test]
    fn reset_pulse_command_requests_vm_reset() {
        let mut r = Rig::new();
        r.command(0xfe);
        assert_eq!(r.events.events(), vec![VmEvent::Reset]);
        // Pulses that leave bit 0 alone (0xFF is Linux's "null command"
        // after A20 enabling) do not reset.
        r.command(0xff);
        r.command(0xf1);
        assert_eq!(r.events.events(), vec![VmEvent::Reset]);
        // Every pulse with bit 0 clear does.
        r.command(0xf0);
        assert_eq!(r.events.events(), vec![VmEvent::Reset, VmEvent::Reset]);
    }

    #[test]
    fn output_port_write_with_reset_low_requests_vm_reset() {
        let mut r = Rig::new();
        // Linux's A20 enable: D1 DF then the null command: no reset.
        r.command(0xd1);
        r.send(0xdf);
        r.command(0xff);
        assert!(r.events.events().is_empty());
        assert_eq!(r.i8042_command(0xd0, &[], 1), Some(vec![0xcf]));
        r.command(0xd1);
        r.send(0xde);
        assert_eq!(r.events.events(), vec![VmEvent::Reset]);
        // The reset line is released again after the pulse.
        assert_eq!(r.dev.state().output_port & outport::RESET_N, 1);
    }

    #[test]
    fn data_and_other_ports_do_not_reset() {
        let mut r = Rig::new();
        r.command(0x20);
        r.send(0xfe);
        r.dev.write(3, &[0xfe]);
        r.dev.write(1, &[0xfe]);
        assert!(r.events.events().is_empty());
    }

    #[test]
    fn word_write_reaching_the_command_port_resets() {
        let mut r = Rig::new();
        r.dev.write(3, &[0x00, 0xfe]);
        assert_eq!(r.events.events(), vec![VmEvent::Reset]);
    }

    #[test]
    fn power_on_status_and_open_ports() {
        let mut r = Rig::new();
        assert_eq!(r.status(), status::UNLOCKED | status::SYS);
        // Reading an empty data port returns the register's stale value.
        assert_eq!(r.data(), 0);
        // A word read at 0x64 runs past the device; 0x62 is open bus.
        let mut w = [0xaa; 2];
        r.dev.read(COMMAND, &mut w);
        assert_eq!(w, [status::UNLOCKED | status::SYS, 0xff]);
        let mut b = [0];
        r.dev.read(2, &mut b);
        assert_eq!(b, [0xff]);
        assert_eq!(r.kbd_irq.pulses() + r.aux_irq.pulses(), 0);
    }

    #[test]
    fn ctr_round_trip() {
        let mut r = Rig::new();
        assert_eq!(r.i8042_command(0x20, &[], 1), Some(vec![ctr::POWER_ON]));
        assert_eq!(r.status() & status::CMD, status::CMD);
        r.command(0x60);
        r.send(0x30);
        assert_eq!(r.status() & status::CMD, 0);
        assert_eq!(r.i8042_command(0x20, &[], 1), Some(vec![0x30]));
        // Bit 2 of the CTR is the status register's system flag.
        assert_eq!(r.status() & status::SYS, 0);
        r.command(0x60);
        r.send(0x34);
        assert_eq!(r.status() & status::SYS, status::SYS);
        // The port enable commands work on the CTR's disable bits.
        r.command(0xad);
        r.command(0xa8);
        assert_eq!(r.i8042_command(0x20, &[], 1), Some(vec![0x14]));
        r.command(0xae);
        r.command(0xa7);
        assert_eq!(r.i8042_command(0x20, &[], 1), Some(vec![0x24]));
        // A command abandons the parameter the previous one waited for.
        r.command(0x60);
        r.command(0x20);
        assert_eq!(r.drain_bytes(), vec![0x24]);
        // The data byte went to the keyboard instead, which NAKs it.
        r.send(0x00);
        assert_eq!(r.drain_bytes(), vec![0xfe]);
        assert_eq!(r.i8042_command(0x20, &[], 1), Some(vec![0x24]));
    }

    #[test]
    fn self_test_and_interface_tests() {
        let mut r = Rig::new();
        r.command(0x60);
        r.send(0x00);
        assert_eq!(r.status() & status::SYS, 0);
        assert_eq!(r.i8042_command(0xaa, &[], 1), Some(vec![0x55]));
        assert_eq!(r.status() & status::SYS, status::SYS);
        assert_eq!(r.i8042_command(0xab, &[], 1), Some(vec![0x00]));
        assert_eq!(r.i8042_command(0xa9, &[], 1), Some(vec![0x00]));
        assert_eq!(r.status() & status::OBF, 0);
    }

    #[test]
    fn controller_answers_raise_irq1_when_enabled() {
        let mut r = Rig::new();
        // Power-on CTR has KBDINT.
        r.i8042_command(0x20, &[], 1).unwrap();
        r.i8042_command(0xaa, &[], 1).unwrap();
        assert_eq!(r.kbd_irq.pulses(), 2);
        r.command(0x60);
        r.send(ctr::POWER_ON & !ctr::KBDINT);
        r.i8042_command(0x20, &[], 1).unwrap();
        assert_eq!(r.kbd_irq.pulses(), 2);
        // Enabling the interrupt with a byte waiting raises the line.
        r.command(0x20);
        r.command(0x60);
        r.send(ctr::POWER_ON);
        assert_eq!(r.kbd_irq.pulses(), 3);
        assert_eq!(r.drain_bytes(), vec![ctr::POWER_ON & !ctr::KBDINT]);
        assert_eq!(r.aux_irq.pulses(), 0);
    }

    /// What Linux 6.1 does at boot: i8042_controller_check,
    /// i8042_controller_selftest, i8042_controller_init, i8042_check_aux,
    /// i8042_check_mux, i8042_enable_kbd_port, then atkbd_probe and
    /// atkbd_activate through the interrupt handler.
    #[test]
    fn linux_probe_sequence() {
        let mut r = Rig::new();
        assert_eq!(r.flush(), Ok(0));
        assert_eq!(r.i8042_command(0xaa, &[], 1), Some(vec![0x55]));

        // Two identical CTR reads.
        let c0 = r.i8042_command(0x20, &[], 1).unwrap()[0];
        let c1 = r.i8042_command(0x20, &[], 1).unwrap()[0];
        assert_eq!(c0, c1);
        assert_ne!(c0 & ctr::XLATE, 0, "BIOS leaves translation on");
        assert_ne!(r.status() & status::UNLOCKED, 0, "Keylock active");
        let mut ctr_v = (c0 | ctr::KBDDIS) & !ctr::KBDINT;
        r.i8042_command(0x60, &[ctr_v], 0).unwrap();
        assert_eq!(r.flush(), Ok(0));

        // i8042_check_aux: loopback.
        assert_eq!(r.flush(), Ok(0));
        r.command(0xd3);
        r.send(0x5a);
        let s = r.status();
        assert_eq!(
            s & (status::OBF | status::AUXDATA),
            status::OBF | status::AUXDATA
        );
        assert_eq!(s & status::TIMEOUT, 0);
        assert_eq!(r.data(), 0x5a);
        // i8042_toggle_aux(false), (true).
        r.i8042_command(0xa7, &[], 0).unwrap();
        let c = r.i8042_command(0x20, &[], 1).unwrap()[0];
        assert_ne!(c & ctr::AUXDIS, 0);
        r.i8042_command(0xa8, &[], 0).unwrap();
        let c = r.i8042_command(0x20, &[], 1).unwrap()[0];
        assert_eq!(c & ctr::AUXDIS, 0);
        ctr_v = c;
        // AUX IRQ delivery test: enable the aux port and its interrupt,
        // loop 0xA5 back; IRQ 12 must fire.
        ctr_v = (ctr_v & !ctr::AUXDIS) | ctr::AUXINT;
        r.i8042_command(0x60, &[ctr_v], 0).unwrap();
        let aux_before = r.aux_irq.pulses();
        let kbd_before = r.kbd_irq.pulses();
        r.command(0xd3);
        r.send(0xa5);
        assert_eq!(r.aux_irq.pulses(), aux_before + 1);
        assert_eq!(r.kbd_irq.pulses(), kbd_before);
        assert_eq!(
            r.drain(),
            vec![(
                status::OBF | status::AUXDATA | status::UNLOCKED | status::SYS,
                0xa5
            )]
        );
        ctr_v = (ctr_v | ctr::AUXDIS) & !ctr::AUXINT;
        r.i8042_command(0x60, &[ctr_v], 0).unwrap();

        // i8042_check_mux: a legacy controller echoes the third byte, so
        // it is not an active multiplexer.
        assert_eq!(r.flush(), Ok(0));
        for b in [0xf0, 0x56, 0xa4] {
            assert_eq!(r.i8042_command(0xd3, &[b], 1), Some(vec![b]));
        }

        // i8042_enable_kbd_port.
        ctr_v = (ctr_v & !ctr::KBDDIS) | ctr::KBDINT;
        r.i8042_command(0x60, &[ctr_v], 0).unwrap();
        assert_eq!(r.flush(), Ok(0));

        // atkbd_probe: GET ID. Each byte raises IRQ 1 once it reaches the
        // output buffer; the handler reads status then data.
        let before = r.kbd_irq.pulses();
        r.send(0xf2);
        let mut got = Vec::new();
        while r.kbd_irq.pulses() > before + got.len() {
            let s = r.status();
            assert_ne!(s & status::OBF, 0);
            assert_eq!(s & (status::AUXDATA | status::TIMEOUT | status::PARITY), 0);
            got.push(r.data());
        }
        // Translated, as on real translating controllers (Linux accepts
        // AB 41 and AB 83 alike).
        assert_eq!(got, vec![0xfa, 0xab, 0x41]);
        assert_eq!(r.kbd_irq.pulses(), before + 3);
        assert_eq!(r.aux_irq.pulses(), aux_before + 1);

        // atkbd_deactivate, atkbd_reset_state, atkbd_activate.
        for (bytes, answer) in [
            (&[0xf5][..], vec![0xfa]),
            (&[0xed, 0x00], vec![0xfa, 0xfa]),
            (&[0xf3, 0x00], vec![0xfa, 0xfa]),
            (&[0xf4], vec![0xfa]),
        ] {
            let before = r.kbd_irq.pulses();
            let got = r.ask(bytes);
            assert_eq!(got, answer, "{bytes:x?}");
            assert_eq!(r.kbd_irq.pulses(), before + answer.len());
        }
        assert!(r.events.events().is_empty());
        assert_eq!(r.dev.state().overruns, 0);
    }

    #[test]
    fn keyboard_id_untranslated_with_i8042_direct() {
        let mut r = Rig::new();
        let c = r.i8042_command(0x20, &[], 1).unwrap()[0];
        r.i8042_command(0x60, &[c & !ctr::XLATE], 0).unwrap();
        r.send(0xf2);
        assert_eq!(r.drain_bytes(), vec![0xfa, 0xab, 0x83]);
        // One for the CTR read, three for the keyboard's bytes.
        assert_eq!(r.kbd_irq.pulses(), 1 + 3);
    }

    #[test]
    fn keyboard_commands() {
        let mut r = Rig::new();
        r.i8042_command(0x60, &[ctr::POWER_ON & !ctr::XLATE], 0)
            .unwrap();
        assert_eq!(r.ask(&[0xff]), vec![0xfa, 0xaa]);
        assert_eq!(r.ask(&[0xee]), vec![0xee]);
        assert_eq!(r.ask(&[0xf0, 0x00]), vec![0xfa, 0xfa, 0x02]);
        assert_eq!(r.ask(&[0xf0, 0x03]), vec![0xfa, 0xfa]);
        assert_eq!(r.ask(&[0xf0, 0x00]), vec![0xfa, 0xfa, 0x03]);
        // A bad set number is NAKed and the argument still awaited.
        assert_eq!(r.ask(&[0xf0, 0x07, 0x01]), vec![0xfa, 0xfe, 0xfa]);
        // Resend repeats the last byte.
        assert_eq!(r.ask(&[0xfe]), vec![0xfa]);
        assert_eq!(r.ask(&[0xed, 0x07]), vec![0xfa, 0xfa]);
        assert_eq!(r.dev.state().keyboard.leds, 7);
        // A command instead of an argument is a command.
        assert_eq!(r.ask(&[0xed, 0xf4]), vec![0xfa, 0xfa]);
        assert_eq!(r.dev.state().keyboard.awaiting, None);
        assert_eq!(r.ask(&[0xf6, 0xf5, 0xf4]), vec![0xfa; 3]);
        assert_eq!(r.ask(&[0x42, 0xe0]), vec![0xfe, 0xfe]);
        // The reset restores set 2.
        assert_eq!(
            r.ask(&[0xff, 0xf0, 0x00]),
            vec![0xfa, 0xaa, 0xfa, 0xfa, 0x02]
        );
    }

    #[test]
    fn translated_scancode_set_answer() {
        let mut r = Rig::new();
        r.send(0xf0);
        r.send(0x00);
        assert_eq!(r.drain_bytes(), vec![0xfa, 0xfa, 0x41]);
    }

    #[test]
    fn keyboard_bytes_wait_while_the_port_is_disabled() {
        let mut r = Rig::new();
        r.command(0xad);
        r.send(0xf2);
        assert_eq!(r.status() & status::OBF, 0);
        // Controller answers still come through.
        assert_eq!(r.i8042_command(0xab, &[], 1), Some(vec![0x00]));
        r.command(0xae);
        assert_eq!(r.drain_bytes(), vec![0xfa, 0xab, 0x41]);
    }

    #[test]
    fn aux_send_gets_the_no_device_answer() {
        let mut r = Rig::new();
        // As Linux leaves the CTR once the aux port is in use.
        r.i8042_command(0x60, &[0x47], 0).unwrap();
        let kbd_before = r.kbd_irq.pulses();
        // psmouse: reset, then GET ID.
        for b in [0xff, 0xf2] {
            r.command(0xd4);
            r.send(b);
            assert_eq!(
                r.drain(),
                vec![(
                    status::OBF
                        | status::AUXDATA
                        | status::TIMEOUT
                        | status::UNLOCKED
                        | status::SYS,
                    NO_AUX_DEVICE
                )]
            );
        }
        assert_eq!(r.aux_irq.pulses(), 2);
        assert_eq!(r.kbd_irq.pulses(), kbd_before);
        // The timeout bit goes with the byte.
        assert_eq!(r.status() & (status::TIMEOUT | status::AUXDATA), 0);
        // Aux interrupt off: no pulse, same answer.
        r.i8042_command(0x60, &[0x45], 0).unwrap();
        r.command(0xd4);
        r.send(0xf4);
        assert_eq!(r.drain_bytes(), vec![NO_AUX_DEVICE]);
        assert_eq!(r.aux_irq.pulses(), 2);
    }

    #[test]
    fn keyboard_loopback_is_keyboard_data_untranslated() {
        let mut r = Rig::new();
        assert_eq!(r.i8042_command(0xd2, &[0x83], 1), Some(vec![0x83]));
        r.command(0xd2);
        r.send(0x02);
        assert_eq!(
            r.drain(),
            vec![(status::OBF | status::UNLOCKED | status::SYS, 0x02)]
        );
    }

    #[test]
    fn queue_is_bounded_and_flushable() {
        let mut r = Rig::new();
        for _ in 0..100 {
            r.command(0x20);
        }
        assert_eq!(r.dev.state().pending(), QUEUE_LEN);
        assert_eq!(r.dev.state().overruns, 100 - QUEUE_LEN as u64);
        // Linux's flush empties it without giving up.
        assert_eq!(r.flush(), Ok(QUEUE_LEN));
        // One IRQ 1 edge per byte that reached the buffer.
        assert_eq!(r.kbd_irq.pulses(), QUEUE_LEN);
        // The register keeps its last value.
        assert_eq!(r.data(), ctr::POWER_ON);
    }

    #[test]
    fn power_on_reset_restores_defaults() {
        let mut r = Rig::new();
        r.i8042_command(0x60, &[0x00], 0).unwrap();
        r.command(0x20);
        r.dev.reset();
        assert_eq!(*r.dev.state(), I8042State::default());
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded() {
        let mut r = Rig::new();
        // xorshift64*: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..200_000 {
            let v = next();
            let b = (v >> 8) as u8;
            let off = [DATA, COMMAND, 1, 2, 3, 5][(v % 6) as usize];
            // Bias towards the interesting commands.
            let b = if v & 0x30000 == 0 {
                [
                    0x20, 0x60, 0xaa, 0xd1, 0xd2, 0xd3, 0xd4, 0xad, 0xae, 0xa7, 0xa8,
                ][(b % 11) as usize]
            } else {
                b
            };
            match (v >> 24) % 4 {
                0 => {
                    let mut d = [0; 4];
                    let n = 1 + (v >> 32) as usize % 4;
                    r.dev.read(off, &mut d[..n]);
                }
                _ => r.dev.write(off, &[b]),
            }
            let s = r.dev.state();
            assert!(s.pending() <= QUEUE_LEN);
            assert!(s.queue.capacity() <= 2 * QUEUE_LEN);
            assert!(s.keyboard.leds <= 7);
            assert!((1..=3).contains(&s.keyboard.scancode_set));
            assert_eq!(s.status() & status::IBF, 0);
        }
        let events = r.events.events();
        assert!(!events.is_empty());
        assert!(events.iter().all(|e| *e == VmEvent::Reset));
        assert!(r.kbd_irq.pulses() > 0);
        assert!(r.aux_irq.pulses() > 0);
    }
}
