//! The CMOS real-time clock (MC146818 registers through ports 0x70/0x71):
//! date and time, read the way firmware does.

use crate::io::{cmos_read, pause};

const RTC_SECONDS: u8 = 0x00;
const RTC_MINUTES: u8 = 0x02;
const RTC_HOURS: u8 = 0x04;
const RTC_DAY: u8 = 0x07;
const RTC_MONTH: u8 = 0x08;
const RTC_YEAR: u8 = 0x09;
/// The century byte of PC firmware (ACPI FADT's default).
const RTC_CENTURY: u8 = 0x32;
const RTC_STATUS_A: u8 = 0x0a;
const RTC_STATUS_B: u8 = 0x0b;
/// Status A bit 7: an update is in progress, the time bytes may be torn.
const UIP: u8 = 0x80;
/// Status B bit 2: binary (not BCD) data mode.
const DM_BINARY: u8 = 0x04;
/// Status B bit 1: 24-hour mode (else 12-hour, bit 7 of the hour = PM).
const HOURS_24: u8 = 0x02;

/// A calendar date and time as the RTC holds it (the host's UTC on our VMM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

fn from_bcd(v: u8, binary: bool) -> u32 {
    if binary {
        u32::from(v)
    } else {
        u32::from(v >> 4) * 10 + u32::from(v & 0xf)
    }
}

/// Reads the date and time as Linux's `mc146818_avoid_UIP` does: waits
/// out an update in progress, reads, then checks that no update began and
/// the seconds did not move meanwhile (a vCPU can be preempted for long
/// between two register reads); else reads again. Each register read is a
/// VM exit: this costs eleven where reading everything twice cost
/// seventeen.
pub fn now() -> DateTime {
    let raw = loop {
        while cmos_read(RTC_STATUS_A) & UIP != 0 {
            pause();
        }
        // Seconds first: an update after this read changes them.
        let raw = [
            RTC_SECONDS,
            RTC_MINUTES,
            RTC_HOURS,
            RTC_DAY,
            RTC_MONTH,
            RTC_YEAR,
            RTC_CENTURY,
        ]
        .map(cmos_read);
        if cmos_read(RTC_STATUS_A) & UIP == 0 && cmos_read(RTC_SECONDS) == raw[0] {
            break raw;
        }
    };
    let status_b = cmos_read(RTC_STATUS_B);
    let bin = status_b & DM_BINARY != 0;
    let [seconds, minutes, hours, day, month, year, century] = raw;
    let hour = if status_b & HOURS_24 != 0 {
        from_bcd(hours, bin)
    } else {
        // 12-hour mode: 12 AM is 0, 12 PM is 12.
        from_bcd(hours & 0x7f, bin) % 12 + if hours & 0x80 != 0 { 12 } else { 0 }
    };
    DateTime {
        year: from_bcd(century, bin) * 100 + from_bcd(year, bin),
        month: from_bcd(month, bin),
        day: from_bcd(day, bin),
        hour,
        minute: from_bcd(minutes, bin),
        second: from_bcd(seconds, bin),
    }
}

impl DateTime {
    /// Seconds since the Unix epoch, reading the date as UTC; 0 for a date
    /// before 1970 (or a garbled one).
    pub fn unix_seconds(&self) -> u64 {
        // Days since 1970-01-01 of a proleptic Gregorian date (Howard
        // Hinnant's days_from_civil), with the year starting in March.
        let (m, d) = (i64::from(self.month), i64::from(self.day));
        let y = i64::from(self.year) - i64::from(m <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second);
        u64::try_from(secs).unwrap_or(0)
    }
}
