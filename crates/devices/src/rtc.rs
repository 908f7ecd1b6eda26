//! MC146818 CMOS real-time clock and NVRAM, at ports 0x70 (index) and
//! 0x71 (data).
//!
//! The guest's clock is the host's UTC clock plus an offset: reading a time
//! register converts "host now + offset" on the spot, and setting the time
//! only changes the offset. The guest can thus set its clock without
//! touching the host's, and the clock keeps running while the VM is paused
//! (as a battery-backed RTC keeps running while a PC is off).
//!
//! The 128 bytes of CMOS that are not clock registers are plain storage.
//! The device object lives across VM resets, so they survive a reboot the
//! way battery-backed NVRAM does.
//!
//! Not modelled: the periodic, alarm and update-ended interrupts (IRQ 8).
//! No guest we run needs them — Linux and the BSDs keep time with the
//! LAPIC/TSC/HPET/PM timer and read the RTC only at boot — so the device
//! has no interrupt line; register C therefore always reads 0 and the
//! alarm registers are storage only.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::BusDevice;

/// Ports the VM maps to the RTC: index at offset 0, data at offset 1.
pub const RTC_PORT_LEN: u64 = 2;

const CMOS_SIZE: usize = 128;

// Register indices.
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// Not part of the MC146818 itself, but where PC firmware keeps the
/// century; the FADT's CENTURY field will point the OS here.
const REG_CENTURY: u8 = 0x32;

/// Status A: update in progress. We update atomically on each read, so an
/// update is never "in progress" and this bit always reads 0.
const A_UIP: u8 = 0x80;
/// Status A at power-on: 32.768 kHz time base (DV = 010), 1024 Hz periodic
/// rate (RS = 0110), what PC firmware programs.
const A_DEFAULT: u8 = 0x26;
/// Status B: SET stops the clock so the guest can write a consistent time.
const B_SET: u8 = 0x80;
/// Status B: update-ended interrupt enable; the data sheet says setting SET
/// clears it.
const B_UIE: u8 = 0x10;
/// Status B: data mode, 1 = binary, 0 = BCD.
const B_DM_BINARY: u8 = 0x04;
/// Status B: 1 = 24-hour mode, 0 = 12-hour mode with bit 7 of the hours
/// register meaning PM.
const B_24H: u8 = 0x02;
/// Status B at power-on: BCD, 24-hour, as PC firmware leaves it.
const B_DEFAULT: u8 = B_24H;
/// Status D: valid RAM and time (the battery is good).
const D_VRT: u8 = 0x80;
const HOURS_PM: u8 = 0x80;
/// Index register bit 7 gates NMI on a PC; it is not part of the index.
const INDEX_NMI_DISABLE: u8 = 0x80;

// Classic memory-size bytes read by BIOS-era code and some bootloaders.
const REG_BASE_MEM_LO: usize = 0x15;
const REG_EXT_MEM_LO: usize = 0x17;
const REG_EXT_MEM2_LO: usize = 0x30;
const REG_MEM_ABOVE_16M_LO: usize = 0x34;
const REG_MEM_ABOVE_4G: usize = 0x5b;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// True for the registers whose value is derived from the running clock.
fn is_time_register(reg: u8) -> bool {
    matches!(
        reg,
        REG_SECONDS
            | REG_MINUTES
            | REG_HOURS
            | REG_WEEKDAY
            | REG_DAY
            | REG_MONTH
            | REG_YEAR
            | REG_CENTURY
    )
}

/// Seconds since the Unix epoch, from the host's UTC clock.
fn host_utc_seconds() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// A broken-down UTC time, as the RTC's registers hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
    /// 0..=23
    pub hour: u8,
    /// 0..=59
    pub minute: u8,
    /// 0..=59
    pub second: u8,
    /// 1 = Sunday ..= 7 = Saturday, the RTC's convention.
    pub weekday: u8,
}

impl DateTime {
    /// The UTC time `secs` seconds after 1970-01-01 00:00:00 (before it if
    /// negative). No leap seconds, like Unix time.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month,
            day,
            hour: (tod / 3600) as u8,
            minute: (tod / 60 % 60) as u8,
            second: (tod % 60) as u8,
            // 1970-01-01 was a Thursday (day 5 counting Sunday as 1).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    /// Seconds since the Unix epoch. `weekday` is not consulted; a day past
    /// the end of its month rolls into the next month.
    pub fn to_unix(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d`, for a
/// month in 1..=12. Computed in 400-year eras with years starting on
/// March 1st, so the leap day is the last day of its year and needs no
/// special case.
pub fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400; // 0..=399
    let march_month = (m + 9) % 12; // March = 0 .. February = 11
                                    // Month lengths from March repeat 31,30,31,30,31 — 153 days every five
                                    // months — so the day of year before a month is (153 * m + 2) / 5.
    let day_of_year = (153 * march_month + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719_468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date `days` days after 1970-01-01: the inverse
/// of [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097; // 0..=146_096
                                        // Undo the leap-day counting: one extra day every 4 years, one fewer
                                        // every 100, one more at the end of the 400-year era.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u8, day as u8)
}

/// `v` (0..=99) as two BCD digits.
pub fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// The value of two BCD digits, or `None` if a nibble is not a digit.
pub fn from_bcd(v: u8) -> Option<u8> {
    let (hi, lo) = (v >> 4, v & 0x0f);
    (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
}

/// The CMOS RTC. Insert it on the port I/O bus at 0x70 with length
/// [`RTC_PORT_LEN`].
pub struct Rtc {
    /// Register selected through port 0x70.
    index: u8,
    /// Backing store for NVRAM, alarms and status A/B. The time registers
    /// are only meaningful here while the clock is stopped (`B.SET`);
    /// otherwise they are refreshed from the clock on each read.
    cmos: [u8; CMOS_SIZE],
    /// Guest time minus host time, in seconds.
    offset: i64,
    /// Host UTC time source, in Unix seconds.
    clock: Box<dyn Fn() -> i64 + Send>,
}

impl Rtc {
    /// An RTC running on the host's UTC clock, with the CMOS memory-size
    /// bytes describing `mem_below_4g` bytes of RAM below 4 GiB (counting
    /// from address 0) and `mem_above_4g` bytes above.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, Box::new(host_utc_seconds))
    }

    /// Like [`Rtc::new`], with `clock` giving the host time in Unix
    /// seconds (tests, or a VMM that wants the guest on another clock).
    pub fn with_clock(
        mem_below_4g: u64,
        mem_above_4g: u64,
        clock: Box<dyn Fn() -> i64 + Send>,
    ) -> Self {
        let mut cmos = [0u8; CMOS_SIZE];
        cmos[usize::from(REG_A)] = A_DEFAULT;
        cmos[usize::from(REG_B)] = B_DEFAULT;
        write_mem_sizes(&mut cmos, mem_below_4g, mem_above_4g);
        Rtc {
            index: 0,
            cmos,
            offset: 0,
            clock,
        }
    }

    /// Sets CMOS byte `index` (NVRAM, 0x0e and up): settings firmware
    /// reads at boot, such as SeaBIOS's boot order. Clock and status
    /// registers are not changed this way.
    pub fn set_nvram(&mut self, index: u8, value: u8) {
        if let Some(b) = self
            .cmos
            .get_mut(usize::from(index))
            .filter(|_| index >= 0x0e)
        {
            *b = value;
        }
    }

    /// Guest time minus host time, in seconds; 0 until the guest sets its
    /// clock.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    fn reg_b(&self) -> u8 {
        self.cmos[usize::from(REG_B)]
    }

    fn clock_stopped(&self) -> bool {
        self.reg_b() & B_SET != 0
    }

    fn now(&self) -> i64 {
        (self.clock)().saturating_add(self.offset)
    }

    fn encode(&self, v: u8) -> u8 {
        if self.reg_b() & B_DM_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> Option<u8> {
        if self.reg_b() & B_DM_BINARY != 0 {
            Some(v)
        } else {
            from_bcd(v)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.reg_b() & B_24H != 0 {
            return self.encode(h);
        }
        // 12-hour mode: 12 AM, 1 AM .. 11 AM, 12 PM, 1 PM .. 11 PM.
        let pm = if h >= 12 { HOURS_PM } else { 0 };
        let h12 = match h % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, v: u8) -> Option<u8> {
        if self.reg_b() & B_24H != 0 {
            return self.decode(v).filter(|&h| h < 24);
        }
        let h12 = self
            .decode(v & !HOURS_PM)
            .filter(|h| (1..=12).contains(h))?;
        let pm = if v & HOURS_PM != 0 { 12 } else { 0 };
        Some(h12 % 12 + pm)
    }

    /// Store the running clock's current value in the time registers, in
    /// the data mode and hour format status B selects.
    fn latch_time(&mut self) {
        let t = DateTime::from_unix(self.now());
        let regs = [
            (REG_SECONDS, self.encode(t.second)),
            (REG_MINUTES, self.encode(t.minute)),
            (REG_HOURS, self.encode_hour(t.hour)),
            (REG_WEEKDAY, self.encode(t.weekday)),
            (REG_DAY, self.encode(t.day)),
            (REG_MONTH, self.encode(t.month)),
            (REG_YEAR, self.encode(t.year.rem_euclid(100) as u8)),
            (
                REG_CENTURY,
                self.encode(t.year.div_euclid(100).clamp(0, 99) as u8),
            ),
        ];
        for (reg, v) in regs {
            self.cmos[usize::from(reg)] = v;
        }
    }

    /// The time the time registers hold, or `None` if a field is out of
    /// range for its register. The weekday register is not consulted: the
    /// weekday follows from the date.
    fn registers_time(&self) -> Option<DateTime> {
        let reg = |r: u8| self.cmos[usize::from(r)];
        let year = i64::from(self.decode(reg(REG_CENTURY))?) * 100
            + i64::from(self.decode(reg(REG_YEAR)).filter(|&y| y < 100)?);
        let t = DateTime {
            year,
            month: self
                .decode(reg(REG_MONTH))
                .filter(|m| (1..=12).contains(m))?,
            day: self.decode(reg(REG_DAY)).filter(|d| (1..=31).contains(d))?,
            hour: self.decode_hour(reg(REG_HOURS))?,
            minute: self.decode(reg(REG_MINUTES)).filter(|&m| m < 60)?,
            second: self.decode(reg(REG_SECONDS)).filter(|&s| s < 60)?,
            weekday: 0,
        };
        Some(t)
    }

    /// Make the time in the registers the guest's current time. An invalid
    /// time (e.g. hour 0x25, or a non-BCD digit in BCD mode) leaves the
    /// clock as it was; a real part would count from garbage instead.
    fn commit_time(&mut self) {
        if let Some(t) = self.registers_time() {
            self.offset = t.to_unix().saturating_sub((self.clock)());
        }
    }

    fn read_data(&mut self) -> u8 {
        let reg = self.index;
        match reg {
            _ if is_time_register(reg) => {
                if !self.clock_stopped() {
                    self.latch_time();
                }
                self.cmos[usize::from(reg)]
            }
            REG_A => self.cmos[usize::from(REG_A)] & !A_UIP,
            // Interrupt flags; reading clears them. Nothing raises any (see
            // the module comment), so there is nothing to clear.
            REG_C => 0,
            REG_D => D_VRT,
            _ => self.cmos[usize::from(reg)],
        }
    }

    fn write_data(&mut self, value: u8) {
        let reg = self.index;
        match reg {
            _ if is_time_register(reg) => {
                if self.clock_stopped() {
                    // Held until SET is cleared, so that a guest writing
                    // the fields one by one never has a half-set date
                    // (31 February) interpreted.
                    self.cmos[usize::from(reg)] = value;
                } else {
                    // Setting one field of a running clock: take the other
                    // fields from the current time.
                    self.latch_time();
                    self.cmos[usize::from(reg)] = value;
                    self.commit_time();
                }
            }
            REG_A => self.cmos[usize::from(REG_A)] = value & !A_UIP,
            REG_B => {
                let was_stopped = self.clock_stopped();
                let value = if value & B_SET != 0 {
                    value & !B_UIE
                } else {
                    value
                };
                if value & B_SET != 0 && !was_stopped {
                    // Freeze the registers at the current time in the new
                    // format, so the guest reads back a consistent time
                    // and can change only some fields.
                    self.cmos[usize::from(REG_B)] = value;
                    self.latch_time();
                } else {
                    self.cmos[usize::from(REG_B)] = value;
                    if value & B_SET == 0 && was_stopped {
                        // The clock restarts from what the registers hold,
                        // read in the format now selected, as the part
                        // does.
                        self.commit_time();
                    }
                }
            }
            REG_C | REG_D => {}
            _ => self.cmos[usize::from(reg)] = value,
        }
    }
}

/// Fill the memory-size bytes PC firmware leaves in CMOS.
fn write_mem_sizes(cmos: &mut [u8; CMOS_SIZE], below_4g: u64, above_4g: u64) {
    let mut put16 = |at: usize, v: u64| {
        let v = v.min(0xffff) as u16;
        cmos[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    // Conventional memory: always the full 640 KiB below the EBDA/VGA hole.
    put16(REG_BASE_MEM_LO, 640);
    // Extended memory above 1 MiB, in KiB; saturates at 64 MiB - 1 KiB.
    let ext_kib = below_4g.saturating_sub(MIB) / KIB;
    put16(REG_EXT_MEM_LO, ext_kib);
    put16(REG_EXT_MEM2_LO, ext_kib);
    // Memory from 16 MiB up to the 32-bit hole, in 64 KiB units.
    put16(
        REG_MEM_ABOVE_16M_LO,
        below_4g.saturating_sub(16 * MIB) / (64 * KIB),
    );
    // Memory above 4 GiB, in 64 KiB units, 24 bits (up to 1 TiB).
    let high = (above_4g / (64 * KIB)).min(0xff_ffff) as u32;
    cmos[REG_MEM_ABOVE_4G..REG_MEM_ABOVE_4G + 3].copy_from_slice(&high.to_le_bytes()[..3]);
}

/// Offset 0 is the index port (0x70), offset 1 the data port (0x71).
/// Wider accesses are split into byte accesses to consecutive ports, as
/// the ISA bus does, so `outw 0x70` selects and writes in one go.
impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset + i as u64 {
                1 => self.read_data(),
                // The index register (offset 0) is write-only.
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match offset + i as u64 {
                0 => self.index = b & !INDEX_NMI_DISABLE,
                1 => self.write_data(b),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    /// 2026-11-21 06:30:00 UTC, a Saturday.
    const T0: i64 = 1_795_242_600;

    /// An RTC on a host clock the test moves by hand.
    fn rtc_at(t: i64) -> (Rtc, Arc<AtomicI64>) {
        let host = Arc::new(AtomicI64::new(t));
        let h = host.clone();
        let rtc = Rtc::with_clock(256 * MIB, 0, Box::new(move || h.load(Ordering::SeqCst)));
        (rtc, host)
    }

    fn cmos_read(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.write(0, &[reg]);
        let mut b = [0];
        rtc.read(1, &mut b);
        b[0]
    }

    fn cmos_write(rtc: &mut Rtc, reg: u8, v: u8) {
        rtc.write(0, &[reg]);
        rtc.write(1, &[v]);
    }

    fn date(year: i64, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> DateTime {
        let mut t = DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            weekday: 0,
        };
        t.weekday = DateTime::from_unix(t.to_unix()).weekday;
        t
    }

    #[test]
    fn known_dates_convert_both_ways() {
        // (unix seconds, date, weekday with Sunday = 1); checked against
        // GNU date.
        let cases = [
            (0, (1970, 1, 1, 0, 0, 0), 5),
            (-1, (1969, 12, 31, 23, 59, 59), 4),
            (T0, (2026, 11, 21, 6, 30, 0), 7),
            (951_825_600, (2000, 2, 29, 12, 0, 0), 3),
            (4_107_542_400, (2100, 3, 1, 0, 0, 0), 2),
        ];
        for (secs, (y, mo, d, h, mi, s), wd) in cases {
            let t = DateTime::from_unix(secs);
            let want = DateTime {
                year: y,
                month: mo,
                day: d,
                hour: h,
                minute: mi,
                second: s,
                weekday: wd,
            };
            assert_eq!(t, want, "from_unix({secs})");
            assert_eq!(t.to_unix(), secs);
        }
    }

    #[test]
    fn day_numbers_round_trip_across_eras() {
        // Every day from 1600 to 2400 crosses leap centuries both ways.
        let first = days_from_civil(1600, 1, 1);
        let last = days_from_civil(2400, 12, 31);
        let mut prev = civil_from_days(first - 1);
        for days in first..=last {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            // Consecutive days: next day of the month, or day 1.
            assert!(d == prev.2 + 1 || (d == 1 && (m != prev.1 || y != prev.0)));
            prev = (y, m, d);
        }
        assert_eq!(civil_from_days(days_from_civil(1900, 2, 29)), (1900, 3, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    }

    #[test]
    fn bcd_conversions() {
        assert_eq!(to_bcd(0), 0x00);
        assert_eq!(to_bcd(59), 0x59);
        assert_eq!(to_bcd(99), 0x99);
        assert_eq!(from_bcd(0x59), Some(59));
        assert_eq!(from_bcd(0x5a), None);
        assert_eq!(from_bcd(0xa0), None);
        for v in 0..100 {
            assert_eq!(from_bcd(to_bcd(v)), Some(v));
        }
    }

    #[test]
    fn reads_the_host_time_in_bcd_by_default() {
        let (mut rtc, _host) = rtc_at(T0);
        let regs: Vec<u8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32]
            .iter()
            .map(|&r| cmos_read(&mut rtc, r))
            .collect();
        assert_eq!(regs, [0x00, 0x30, 0x06, 0x07, 0x21, 0x11, 0x26, 0x20]);
    }

    #[test]
    fn binary_and_twelve_hour_modes() {
        let (mut rtc, host) = rtc_at(T0 + 8 * 3600 + 45); // 14:30:45
        cmos_write(&mut rtc, REG_B, B_24H | B_DM_BINARY);
        assert_eq!(cmos_read(&mut rtc, REG_SECONDS), 45);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), 14);
        assert_eq!(cmos_read(&mut rtc, REG_DAY), 21);
        assert_eq!(cmos_read(&mut rtc, REG_YEAR), 26);
        assert_eq!(cmos_read(&mut rtc, REG_CENTURY), 20);

        cmos_write(&mut rtc, REG_B, B_DM_BINARY);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), HOURS_PM | 2);
        cmos_write(&mut rtc, REG_B, 0);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), HOURS_PM | 0x02);

        // Midnight and noon are 12 AM and 12 PM.
        host.store(T0 - 6 * 3600 - 1800, Ordering::SeqCst);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), 0x12);
        host.store(T0 + 6 * 3600 - 1800, Ordering::SeqCst);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), HOURS_PM | 0x12);
        host.store(T0 + 5 * 3600, Ordering::SeqCst); // 11:30
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), 0x11);
    }

    #[test]
    fn clock_follows_the_host() {
        let (mut rtc, host) = rtc_at(T0);
        assert_eq!(cmos_read(&mut rtc, REG_SECONDS), 0x00);
        host.store(T0 + 61, Ordering::SeqCst);
        assert_eq!(cmos_read(&mut rtc, REG_SECONDS), 0x01);
        assert_eq!(cmos_read(&mut rtc, REG_MINUTES), 0x31);
    }

    #[test]
    fn setting_the_time_moves_the_offset_not_the_host() {
        let (mut rtc, host) = rtc_at(T0);
        // What Linux's mc146818_set_time does: SET, fields, clear SET.
        cmos_write(&mut rtc, REG_B, B_SET | B_24H);
        let target = date(2000, 2, 29, 23, 59, 58);
        for (reg, v) in [
            (REG_SECONDS, 0x58),
            (REG_MINUTES, 0x59),
            (REG_HOURS, 0x23),
            (REG_DAY, 0x29),
            (REG_MONTH, 0x02),
            (REG_YEAR, 0x00),
            (REG_CENTURY, 0x20),
        ] {
            cmos_write(&mut rtc, reg, v);
        }
        // Stopped: time passing on the host changes nothing yet.
        host.store(T0 + 100, Ordering::SeqCst);
        assert_eq!(cmos_read(&mut rtc, REG_SECONDS), 0x58);
        cmos_write(&mut rtc, REG_B, B_24H);
        assert_eq!(rtc.offset(), target.to_unix() - (T0 + 100));

        // Running again from the new time, across the leap day.
        host.store(T0 + 103, Ordering::SeqCst);
        assert_eq!(cmos_read(&mut rtc, REG_SECONDS), 0x01);
        assert_eq!(cmos_read(&mut rtc, REG_MINUTES), 0x00);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), 0x00);
        assert_eq!(cmos_read(&mut rtc, REG_DAY), 0x01);
        assert_eq!(cmos_read(&mut rtc, REG_MONTH), 0x03);
        assert_eq!(cmos_read(&mut rtc, REG_WEEKDAY), 0x04); // Wednesday
    }

    #[test]
    fn set_bit_freezes_a_consistent_snapshot() {
        let (mut rtc, host) = rtc_at(T0);
        cmos_write(&mut rtc, REG_B, B_SET | B_24H | 0x10);
        // SET clears the update-ended interrupt enable.
        assert_eq!(cmos_read(&mut rtc, REG_B), B_SET | B_24H);
        host.store(T0 + 3600, Ordering::SeqCst);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), 0x06);
        // Clearing SET without writing anything restarts the clock from
        // the frozen time: the guest clock lost the hour it was stopped.
        cmos_write(&mut rtc, REG_B, B_24H);
        assert_eq!(rtc.offset(), -3600);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), 0x06);
    }

    #[test]
    fn writing_one_field_of_the_running_clock() {
        let (mut rtc, _host) = rtc_at(T0);
        cmos_write(&mut rtc, REG_HOURS, 0x08);
        assert_eq!(rtc.offset(), 2 * 3600);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), 0x08);
        assert_eq!(cmos_read(&mut rtc, REG_MINUTES), 0x30);
        // Binary mode with a PM hour in 12-hour format.
        cmos_write(&mut rtc, REG_B, B_DM_BINARY);
        cmos_write(&mut rtc, REG_HOURS, HOURS_PM | 12);
        assert_eq!(rtc.offset(), 6 * 3600);
        cmos_write(&mut rtc, REG_HOURS, 12);
        assert_eq!(rtc.offset(), -6 * 3600);
    }

    #[test]
    fn invalid_times_are_ignored() {
        let (mut rtc, _host) = rtc_at(T0);
        cmos_write(&mut rtc, REG_HOURS, 0x24);
        cmos_write(&mut rtc, REG_MINUTES, 0x5a);
        cmos_write(&mut rtc, REG_MONTH, 0x13);
        cmos_write(&mut rtc, REG_DAY, 0x00);
        assert_eq!(rtc.offset(), 0);
        assert_eq!(cmos_read(&mut rtc, REG_HOURS), 0x06);
        // The weekday register is derived from the date.
        cmos_write(&mut rtc, REG_WEEKDAY, 0x01);
        assert_eq!(rtc.offset(), 0);
        assert_eq!(cmos_read(&mut rtc, REG_WEEKDAY), 0x07);
    }

    #[test]
    fn status_registers() {
        let (mut rtc, _host) = rtc_at(T0);
        assert_eq!(cmos_read(&mut rtc, REG_A), A_DEFAULT);
        assert_eq!(cmos_read(&mut rtc, REG_B), B_DEFAULT);
        assert_eq!(cmos_read(&mut rtc, REG_C), 0);
        assert_eq!(cmos_read(&mut rtc, REG_D), D_VRT);
        // UIP is read-only; the rest of A is the guest's.
        cmos_write(&mut rtc, REG_A, 0xa6);
        assert_eq!(cmos_read(&mut rtc, REG_A), 0x26);
        cmos_write(&mut rtc, REG_A, 0x2f);
        assert_eq!(cmos_read(&mut rtc, REG_A), 0x2f);
        cmos_write(&mut rtc, REG_C, 0xff);
        cmos_write(&mut rtc, REG_D, 0x00);
        assert_eq!(cmos_read(&mut rtc, REG_C), 0);
        assert_eq!(cmos_read(&mut rtc, REG_D), D_VRT);
    }

    #[test]
    fn nvram_round_trip_and_index_masking() {
        let (mut rtc, _host) = rtc_at(T0);
        for reg in 0x0e..0x80u8 {
            if reg != REG_CENTURY {
                cmos_write(&mut rtc, reg, reg ^ 0xa5);
            }
        }
        for reg in 0x0e..0x80u8 {
            if reg != REG_CENTURY {
                assert_eq!(cmos_read(&mut rtc, reg), reg ^ 0xa5, "reg {reg:#x}");
                // With the NMI-disable bit set, the same register.
                assert_eq!(cmos_read(&mut rtc, reg | 0x80), reg ^ 0xa5);
            }
        }
        // Alarm registers are storage too.
        cmos_write(&mut rtc, 0x01 | 0x80, 0x42);
        assert_eq!(cmos_read(&mut rtc, 0x01), 0x42);
        // 0x80 | 0x00 selects seconds, not byte 0x80.
        assert_eq!(cmos_read(&mut rtc, 0x80), 0x00);
        // The index port is write-only.
        let mut b = [0];
        rtc.read(0, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn word_access_selects_and_transfers() {
        let (mut rtc, _host) = rtc_at(T0);
        rtc.write(0, &[0x40, 0x99]);
        assert_eq!(cmos_read(&mut rtc, 0x40), 0x99);
        rtc.write(0, &[0x02]);
        let mut w = [0u8; 2];
        rtc.read(1, &mut w);
        assert_eq!(w, [0x30, 0xff]);
    }

    #[test]
    fn memory_size_bytes() {
        let (rtc, _host) = rtc_at(T0);
        let c = &rtc.cmos;
        let word = |at: usize| u16::from_le_bytes([c[at], c[at + 1]]);
        assert_eq!(word(0x15), 640);
        // 256 MiB: 255 MiB above 1 MiB, 240 MiB above 16 MiB.
        assert_eq!(word(0x17), 0xffff);
        assert_eq!(word(0x30), 0xffff);
        assert_eq!(word(0x34), 240 * 16); // 240 MiB in 64 KiB units
        assert_eq!(&c[0x5b..0x5e], &[0, 0, 0]);

        let small = Rtc::with_clock(8 * MIB, 0, Box::new(|| 0));
        let c = &small.cmos;
        assert_eq!(u16::from_le_bytes([c[0x17], c[0x18]]), 7 * 1024);
        assert_eq!(u16::from_le_bytes([c[0x34], c[0x35]]), 0);

        // 3 GiB below the hole, 5 GiB above.
        let big = Rtc::with_clock(3 << 30, 5 << 30, Box::new(|| 0));
        let c = &big.cmos;
        assert_eq!(u16::from_le_bytes([c[0x34], c[0x35]]), 0xbf00);
        assert_eq!(&c[0x5b..0x5e], &[0x00, 0x40, 0x01]);
    }
}
