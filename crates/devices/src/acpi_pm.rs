//! ACPI fixed-hardware power management registers: the PM1a event and
//! control blocks and the PM timer, in one block of ports.
//!
//! | offset | register     | size | FADT field    |
//! |--------|--------------|------|---------------|
//! | 0      | PM1_STS      | 2    | PM1a_EVT_BLK  |
//! | 2      | PM1_EN       | 2    |               |
//! | 4      | PM1_CNT      | 2    | PM1a_CNT_BLK  |
//! | 8      | PM_TMR       | 4    | PM_TMR_BLK    |
//!
//! There is no SMI_CMD port: the "hardware" is always in ACPI mode, so
//! SCI_EN reads as 1 and the OS never tries to switch modes. The only
//! fixed event raised is the power button, which is how the VMM asks a
//! guest to shut down cleanly; the guest answers by entering S5, which
//! becomes [`VmEvent::PowerOff`].

use std::time::{Duration, Instant};

use crate::{BusDevice, SharedEvents, SharedIrq, VmEvent};

/// Ports the block spans: PM1a_EVT (4), PM1a_CNT (2), 2 unused, PM_TMR (4).
pub const ACPI_PM_LEN: u64 = 12;

const PM1_STS: usize = 0;
const PM1_EN: usize = 2;
const PM1_CNT: usize = 4;
const PM_TMR: usize = 8;
const BLOCK_LEN: usize = ACPI_PM_LEN as usize;

// PM1 status/enable bits (ACPI 6.5, 4.8.3.1). Status bits are
// write-1-to-clear; the enable bit of the same position gates the SCI.
const PM1_TMR: u16 = 1 << 0;
const PM1_GBL: u16 = 1 << 5;
const PM1_PWRBTN: u16 = 1 << 8;
const PM1_SLPBTN: u16 = 1 << 9;
const PM1_RTC: u16 = 1 << 10;
/// Enable bits the guest may set. Only the power button ever raises its
/// status bit; the others are kept so a guest reads back what it wrote.
/// TMR_STS stays 0: the OS only needs the carry interrupt when it cannot
/// read all 32 bits, and the FADT sets TMR_VAL_EXT.
const PM1_EN_WRITABLE: u16 = PM1_TMR | PM1_GBL | PM1_PWRBTN | PM1_SLPBTN | PM1_RTC;

// PM1 control bits (ACPI 6.5, 4.8.3.2.1).
const CNT_SCI_EN: u16 = 1 << 0;
const CNT_BM_RLD: u16 = 1 << 1;
const CNT_SLP_TYP_SHIFT: u16 = 10;
const CNT_SLP_TYP: u16 = 0b111 << CNT_SLP_TYP_SHIFT;
/// Write-only: writing it starts the sleep transition SLP_TYP names.
const CNT_SLP_EN: u16 = 1 << 13;
const CNT_STORED: u16 = CNT_BM_RLD | CNT_SLP_TYP;

/// The ACPI PM timer runs at the PC's 14.31818 MHz / 4 colour-burst
/// derived frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// The PM1a blocks and PM timer. Insert it on the port I/O bus at the
/// PM1a_EVT_BLK address with length [`ACPI_PM_LEN`].
pub struct AcpiPm {
    pm1_sts: u16,
    pm1_en: u16,
    /// SLP_TYP and BM_RLD as last written; SCI_EN is added on reads.
    pm1_cnt: u16,
    /// SLP_TYP value the DSDT's `\_S5` object gives for soft-off.
    s5_slp_typ: u8,
    sci: SharedIrq,
    events: SharedEvents,
    /// Monotonic time since an arbitrary origin; the PM timer counts it.
    clock: Box<dyn Fn() -> Duration + Send>,
}

impl AcpiPm {
    /// A PM block driving the level-triggered `sci`, asking `events` for
    /// power-off when the guest enters sleep type `s5_slp_typ`, with the
    /// PM timer counting from now on the host's monotonic clock.
    pub fn new(sci: SharedIrq, events: SharedEvents, s5_slp_typ: u8) -> Self {
        let start = Instant::now();
        Self::with_clock(sci, events, s5_slp_typ, Box::new(move || start.elapsed()))
    }

    /// Like [`AcpiPm::new`], with `clock` giving the monotonic time the PM
    /// timer counts (it must never go backwards).
    pub fn with_clock(
        sci: SharedIrq,
        events: SharedEvents,
        s5_slp_typ: u8,
        clock: Box<dyn Fn() -> Duration + Send>,
    ) -> Self {
        AcpiPm {
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            s5_slp_typ,
            sci,
            events,
            clock,
        }
    }

    /// Press the power button: the guest's ACPI driver sees PWRBTN_STS
    /// (with an SCI if it enabled the event) and normally shuts down.
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= PM1_PWRBTN;
        self.update_sci();
    }

    /// The SCI is a level: high while any enabled event is pending, so the
    /// guest's handler runs until it has cleared every status bit it
    /// enabled. Driven on every change rather than only on edges so the
    /// line is right even after the interrupt controller was reset.
    fn update_sci(&self) {
        self.sci.set_level(self.pm1_sts & self.pm1_en != 0);
    }

    /// PM timer value: ticks since the clock's origin, wrapping at 2^32.
    fn timer(&self) -> u32 {
        let ticks = (self.clock)().as_nanos() * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        ticks as u32
    }

    /// The whole block as the guest reads it. Built once per access so a
    /// 32-bit timer read is one sample.
    fn registers(&self) -> [u8; BLOCK_LEN] {
        // Offsets 6 and 7 decode to nothing.
        let mut regs = [0xff; BLOCK_LEN];
        regs[PM1_STS..PM1_STS + 2].copy_from_slice(&self.pm1_sts.to_le_bytes());
        regs[PM1_EN..PM1_EN + 2].copy_from_slice(&self.pm1_en.to_le_bytes());
        regs[PM1_CNT..PM1_CNT + 2].copy_from_slice(&(self.pm1_cnt | CNT_SCI_EN).to_le_bytes());
        regs[PM_TMR..PM_TMR + 4].copy_from_slice(&self.timer().to_le_bytes());
        regs
    }

    fn write_control(&mut self, value: u16) {
        self.pm1_cnt = value & CNT_STORED;
        if value & CNT_SLP_EN != 0 {
            let slp_typ = (value & CNT_SLP_TYP) >> CNT_SLP_TYP_SHIFT;
            // Only soft-off is supported. A guest asking for S1..S4 finds
            // them absent from the DSDT first, so another SLP_TYP here is a
            // confused guest; it keeps running, as if the sleep failed.
            if slp_typ == u16::from(self.s5_slp_typ) {
                self.events.request(VmEvent::PowerOff);
            }
        }
    }
}

/// The 16-bit field at `at` of a block-sized value, and which of its bits
/// the access covered.
fn field16(value: &[u8; BLOCK_LEN], covered: &[u8; BLOCK_LEN], at: usize) -> (u16, u16) {
    (
        u16::from_le_bytes([value[at], value[at + 1]]),
        u16::from_le_bytes([covered[at], covered[at + 1]]),
    )
}

/// Accesses of any size are accepted: a byte access to one half of a
/// 16-bit register reads or changes only that half, as the ACPI spec
/// allows OSes to do. Bytes past the block read as all ones.
impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let regs = self.registers();
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|at| regs.get(at)).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut value = [0u8; BLOCK_LEN];
        let mut covered = [0u8; BLOCK_LEN];
        for (i, &b) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(at) = at.filter(|&at| at < BLOCK_LEN) {
                value[at] = b;
                covered[at] = 0xff;
            }
        }

        let (sts, mask) = field16(&value, &covered, PM1_STS);
        self.pm1_sts &= !(sts & mask);

        let (en, mask) = field16(&value, &covered, PM1_EN);
        let mask = mask & PM1_EN_WRITABLE;
        self.pm1_en = (self.pm1_en & !mask) | (en & mask);

        let (cnt, mask) = field16(&value, &covered, PM1_CNT);
        if mask != 0 {
            // A byte write to one half keeps the other half's stored bits.
            self.write_control((self.pm1_cnt & !mask) | (cnt & mask));
        }

        // The timer is read-only.
        self.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TestEvents, TestIrq};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const S5: u8 = 5;

    struct Fixture {
        pm: AcpiPm,
        sci: Arc<TestIrq>,
        events: Arc<TestEvents>,
        nanos: Arc<AtomicU64>,
    }

    fn fixture() -> Fixture {
        let sci = TestIrq::new();
        let events = TestEvents::new();
        let nanos = Arc::new(AtomicU64::new(0));
        let n = nanos.clone();
        let pm = AcpiPm::with_clock(
            sci.clone(),
            events.clone(),
            S5,
            Box::new(move || Duration::from_nanos(n.load(Ordering::SeqCst))),
        );
        Fixture {
            pm,
            sci,
            events,
            nanos,
        }
    }

    fn read16(pm: &mut AcpiPm, off: u64) -> u16 {
        let mut d = [0u8; 2];
        pm.read(off, &mut d);
        u16::from_le_bytes(d)
    }

    fn write16(pm: &mut AcpiPm, off: u64, v: u16) {
        pm.write(off, &v.to_le_bytes());
    }

    fn read32(pm: &mut AcpiPm, off: u64) -> u32 {
        let mut d = [0u8; 4];
        pm.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn power_button_raises_sci_until_cleared() {
        let mut f = fixture();
        write16(&mut f.pm, 2, PM1_PWRBTN);
        assert!(!f.sci.level());
        f.pm.press_power_button();
        assert!(f.sci.level());
        assert_eq!(read16(&mut f.pm, 0), PM1_PWRBTN);
        // Writing 0 or another bit clears nothing.
        write16(&mut f.pm, 0, 0);
        write16(&mut f.pm, 0, PM1_SLPBTN);
        assert!(f.sci.level());
        // Write 1 to clear.
        write16(&mut f.pm, 0, PM1_PWRBTN);
        assert_eq!(read16(&mut f.pm, 0), 0);
        assert!(!f.sci.level());
    }

    #[test]
    fn sci_follows_enable_too() {
        let mut f = fixture();
        f.pm.press_power_button();
        // Status is latched even while the event is disabled...
        assert!(!f.sci.level());
        assert_eq!(read16(&mut f.pm, 0), PM1_PWRBTN);
        // ...and enabling it raises the SCI at once.
        write16(&mut f.pm, 2, PM1_PWRBTN);
        assert!(f.sci.level());
        write16(&mut f.pm, 2, 0);
        assert!(!f.sci.level());
        assert!(f.sci.level_calls() >= 3);
    }

    #[test]
    fn byte_accesses_touch_one_half() {
        let mut f = fixture();
        // PWRBTN is bit 8: byte 1 of each register.
        f.pm.write(3, &[(PM1_PWRBTN >> 8) as u8]);
        assert_eq!(read16(&mut f.pm, 2), PM1_PWRBTN);
        f.pm.write(2, &[PM1_TMR as u8]);
        assert_eq!(read16(&mut f.pm, 2), PM1_PWRBTN | PM1_TMR);
        f.pm.press_power_button();
        assert!(f.sci.level());
        // Clearing through the low byte misses bit 8.
        f.pm.write(0, &[0xff]);
        assert!(f.sci.level());
        let mut b = [0u8];
        f.pm.read(1, &mut b);
        assert_eq!(b, [0x01]);
        f.pm.write(1, &[0x01]);
        assert!(!f.sci.level());
        // One dword write covers both PM1_STS and PM1_EN.
        f.pm.press_power_button();
        f.pm.write(0, &[0x00, 0x01, 0x00, 0x00]);
        assert_eq!(read32(&mut f.pm, 0), 0);
        assert!(!f.sci.level());
    }

    #[test]
    fn unsupported_enable_bits_do_not_stick() {
        let mut f = fixture();
        write16(&mut f.pm, 2, u16::MAX);
        assert_eq!(read16(&mut f.pm, 2), PM1_EN_WRITABLE);
    }

    #[test]
    fn always_in_acpi_mode() {
        let mut f = fixture();
        assert_eq!(read16(&mut f.pm, 4) & CNT_SCI_EN, CNT_SCI_EN);
        write16(&mut f.pm, 4, 0);
        assert_eq!(read16(&mut f.pm, 4), CNT_SCI_EN);
    }

    #[test]
    fn s5_powers_off() {
        let mut f = fixture();
        // Writing SLP_TYP alone only stores it.
        write16(&mut f.pm, 4, 5 << CNT_SLP_TYP_SHIFT);
        assert!(f.events.events().is_empty());
        assert_eq!(read16(&mut f.pm, 4), 5 << CNT_SLP_TYP_SHIFT | CNT_SCI_EN);
        write16(&mut f.pm, 4, 5 << CNT_SLP_TYP_SHIFT | CNT_SLP_EN);
        assert_eq!(f.events.events(), vec![VmEvent::PowerOff]);
        // SLP_EN is write-only.
        assert_eq!(read16(&mut f.pm, 4) & CNT_SLP_EN, 0);
    }

    #[test]
    fn s5_by_byte_write_of_the_high_half() {
        let mut f = fixture();
        f.pm.write(5, &[((5 << CNT_SLP_TYP_SHIFT | CNT_SLP_EN) >> 8) as u8]);
        assert_eq!(f.events.events(), vec![VmEvent::PowerOff]);
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        let mut f = fixture();
        for typ in (0..8).filter(|&t| t != u16::from(S5)) {
            write16(&mut f.pm, 4, typ << CNT_SLP_TYP_SHIFT | CNT_SLP_EN);
        }
        assert!(f.events.events().is_empty());
    }

    #[test]
    fn timer_counts_at_3_579545_mhz_and_wraps() {
        let mut f = fixture();
        assert_eq!(read32(&mut f.pm, 8), 0);
        f.nanos.store(1_000_000, Ordering::SeqCst);
        assert_eq!(read32(&mut f.pm, 8), 3579);
        f.nanos.store(1_000_000_000, Ordering::SeqCst);
        assert_eq!(read32(&mut f.pm, 8), 3_579_545);
        // 1200 s is past 2^32 ticks (about 1199.6 s).
        f.nanos.store(1_200_000_000_000, Ordering::SeqCst);
        assert_eq!(
            read32(&mut f.pm, 8),
            (1200 * PM_TIMER_HZ % (1 << 32)) as u32
        );
        // Read-only.
        f.pm.write(8, &[0; 4]);
        assert_eq!(
            read32(&mut f.pm, 8),
            (1200 * PM_TIMER_HZ % (1 << 32)) as u32
        );
        // A word read of the high half.
        f.nanos.store(1_000_000_000, Ordering::SeqCst);
        assert_eq!(read16(&mut f.pm, 10), (3_579_545u32 >> 16) as u16);
    }

    #[test]
    fn host_clock_timer_advances() {
        let mut pm = AcpiPm::new(TestIrq::new(), TestEvents::new(), S5);
        let t0 = read32(&mut pm, 8);
        std::thread::sleep(Duration::from_millis(2));
        let t1 = read32(&mut pm, 8);
        // 2 ms is at least 7159 ticks.
        assert!(t1.wrapping_sub(t0) >= 7159, "{t0} -> {t1}");
    }

    #[test]
    fn gap_and_out_of_range_bytes() {
        let mut f = fixture();
        assert_eq!(read16(&mut f.pm, 6), 0xffff);
        let mut d = [0u8; 4];
        f.pm.read(10, &mut d);
        assert_eq!(&d[2..], &[0xff, 0xff]);
        // Writes there change nothing and do not panic.
        f.pm.write(6, &[0xff, 0xff]);
        f.pm.write(11, &[0xff; 4]);
        f.pm.write(u64::MAX, &[0xff; 4]);
        assert_eq!(read16(&mut f.pm, 0), 0);
        assert_eq!(read16(&mut f.pm, 2), 0);
        assert!(f.events.events().is_empty());
    }
}
