//! Clock sync from the host: reading the host's clock over the backdoor,
//! and the pure decision what to do about an offset.
//!
//! The host's time comes from GETTIMEFULL (backdoor command 46), or from
//! the deprecated GETTIME (23) when the host does not answer that, as
//! open-vm-tools' timeSync falls back (guest-channel.md §4). The daemon
//! reads the guest's clock just before and just after the call and takes
//! the midpoint as the moment the host read its clock; `offset` is host
//! minus guest. Then [`decide`]: an offset under [`MIN_CORRECTION_US`] is
//! left alone (the call's own duration and the host's lag are of that
//! order), one at or above the step threshold steps the clock
//! (`clock_settime`), anything between is slewed away (`adjtimex`,
//! `ADJ_OFFSET_SINGLESHOT`: adjtime(3)'s slew at 500 ppm, which a later
//! sync replaces with its own fresh measurement rather than adding to).

use std::time::Duration;

use guestrpc::backdoor::{cmd, FAILURE, MAGIC, PORT_LB};
use guestrpc::client::{self, Backdoor};
use guestrpc::Regs;

/// Seconds between periodic syncs by default (the seed's and vmt(4)'s
/// NetBSD cousin's 60 s).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(60);
/// Offsets of at least this much are stepped by default; smaller ones are
/// slewed. At adjtime's 500 ppm a 1 s slew takes about 33 minutes.
pub const DEFAULT_STEP_THRESHOLD: Duration = Duration::from_secs(1);
/// Offsets below this are noise: left alone, not logged.
pub const MIN_CORRECTION_US: u64 = 1_000;
/// A host time before 2020-01-01 is taken as garbage, never as a reason
/// to set the guest's clock back decades.
pub const EARLIEST_HOST_TIME_US: i64 = 1_577_836_800 * 1_000_000;

/// Where the host's time came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// GETTIMEFULL.
    GetTimeFull,
    /// GETTIME, the fallback.
    GetTime,
}

/// The host's clock, in µs since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostClock {
    /// µs since the Unix epoch, UTC.
    pub unix_us: i64,
    /// Which command gave it.
    pub source: Source,
}

/// Reads the host's clock: GETTIMEFULL, else GETTIME. `None` when neither
/// answers.
pub fn host_time(bd: &mut impl Backdoor) -> Option<HostClock> {
    if let Some(t) = client::get_time_full(bd) {
        let secs = i64::try_from(t.secs).ok()?;
        return Some(HostClock {
            unix_us: secs
                .checked_mul(1_000_000)?
                .checked_add(i64::from(t.usecs))?,
            source: Source::GetTimeFull,
        });
    }
    get_time(bd).map(|unix_us| HostClock {
        unix_us,
        source: Source::GetTime,
    })
}

/// GETTIME (command 23): EAX = seconds, EBX = µs; EAX = 0xFFFFFFFF is the
/// error. A host that does not know the command leaves EAX as the magic
/// (a time in 2015), also taken as no answer.
pub fn get_time(bd: &mut impl Backdoor) -> Option<i64> {
    let mut r = Regs {
        eax: MAGIC,
        ebx: 0,
        ecx: u32::from(cmd::GETTIME),
        edx: u32::from(PORT_LB),
        ..Regs::default()
    };
    bd.lb(&mut r);
    if r.eax == FAILURE || r.eax == MAGIC || r.ebx >= 1_000_000 {
        return None;
    }
    Some(i64::from(r.eax) * 1_000_000 + i64::from(r.ebx))
}

/// What to do about an offset (host minus guest, µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Correction {
    /// Close enough: nothing.
    None,
    /// Slew the clock by this many µs (`adjtimex`).
    Slew(i64),
    /// Step the clock by this many µs (`clock_settime`).
    Step(i64),
}

/// The decision: nothing below [`MIN_CORRECTION_US`], a step at or above
/// `step_threshold`, a slew between.
pub fn decide(offset_us: i64, step_threshold: Duration) -> Correction {
    let size = offset_us.unsigned_abs();
    let threshold = u64::try_from(step_threshold.as_micros()).unwrap_or(u64::MAX);
    if size >= threshold.max(MIN_CORRECTION_US) {
        Correction::Step(offset_us)
    } else if size >= MIN_CORRECTION_US {
        Correction::Slew(offset_us)
    } else {
        Correction::None
    }
}

/// Host minus guest, µs, given the guest's clock just before and just
/// after the host read its own; `None` for a host time that is garbage.
pub fn offset(host_us: i64, guest_before_us: i64, guest_after_us: i64) -> Option<i64> {
    if host_us < EARLIEST_HOST_TIME_US {
        return None;
    }
    let mid = guest_before_us + (guest_after_us - guest_before_us) / 2;
    host_us.checked_sub(mid)
}

/// An offset for a log line: signed seconds with six decimals.
pub fn format_offset(us: i64) -> String {
    let sign = if us < 0 { '-' } else { '+' };
    let a = us.unsigned_abs();
    format!("{sign}{}.{:06} s", a / 1_000_000, a % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn small_offsets_are_left_alone() {
        let t = DEFAULT_STEP_THRESHOLD;
        assert_eq!(decide(0, t), Correction::None);
        assert_eq!(decide(999, t), Correction::None);
        assert_eq!(decide(-999, t), Correction::None);
    }

    #[test]
    fn medium_offsets_are_slewed_large_ones_stepped() {
        let t = DEFAULT_STEP_THRESHOLD;
        assert_eq!(decide(1_000, t), Correction::Slew(1_000));
        assert_eq!(decide(-S + 1, t), Correction::Slew(-S + 1));
        assert_eq!(decide(S, t), Correction::Step(S));
        assert_eq!(decide(-3600 * S, t), Correction::Step(-3600 * S));
        assert_eq!(decide(i64::MIN, t), Correction::Step(i64::MIN));
        // Another threshold.
        let t = Duration::from_millis(100);
        assert_eq!(decide(99_999, t), Correction::Slew(99_999));
        assert_eq!(decide(-100_000, t), Correction::Step(-100_000));
        // A threshold under the noise floor: anything that counts steps.
        assert_eq!(decide(500, Duration::ZERO), Correction::None);
        assert_eq!(decide(1_000, Duration::ZERO), Correction::Step(1_000));
        // A huge threshold: always slewed.
        assert_eq!(
            decide(-7200 * S, Duration::MAX),
            Correction::Slew(-7200 * S)
        );
    }

    #[test]
    fn offset_takes_the_midpoint_and_rejects_garbage() {
        let h = 1_700_000_000 * S;
        assert_eq!(
            offset(h, h - 3600 * S, h - 3600 * S + 100),
            Some(3600 * S - 50)
        );
        assert_eq!(offset(h, h + 10, h + 30), Some(-20));
        assert_eq!(offset(0, h, h), None);
        assert_eq!(offset(EARLIEST_HOST_TIME_US - 1, h, h), None);
    }

    #[test]
    fn offsets_print_as_signed_seconds() {
        assert_eq!(format_offset(3600 * S + 123), "+3600.000123 s");
        assert_eq!(format_offset(-2_500), "-0.002500 s");
        assert_eq!(format_offset(0), "+0.000000 s");
        assert_eq!(format_offset(i64::MIN), "-9223372036854.775808 s");
    }
}
