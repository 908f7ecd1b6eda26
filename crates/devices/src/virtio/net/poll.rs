//! How long the I/O thread polls the TX ring after it gave the guest
//! frames, waiting for an answer (a reply, a TCP ACK) instead of a kick.
//!
//! A kick is a VM exit and a wake-up of the I/O thread: ~18 us here, more
//! than all the rest of a UDP round trip through the guest (P10 went from
//! 32 to 14 us with a 30 us window). Polling costs the thread's CPU for
//! as long as it lasts, so the window adapts as QEMU's AioContext polling
//! does: when the guest's next TX after a delivery came later than the
//! window but within [`POLL_MAX`] it doubles (from [`POLL_START`]), when it
//! came later than that, or not before the next delivery, it halves (and
//! under [`POLL_MIN`] stops). A guest that answers fast is polled for; one
//! that receives without answering, or answers slowly, costs a window or
//! two, then nothing. Decided without I/O: the worker tells it the times.

use std::time::{Duration, Instant};

/// The longest window (QEMU's default `poll-max-ns` for IOThreads).
pub const POLL_MAX: Duration = Duration::from_micros(32);
/// A window that grows from nothing starts here.
const POLL_START: Duration = Duration::from_micros(4);
/// A window that halves below this is none.
const POLL_MIN: Duration = Duration::from_micros(1);

#[derive(Debug, Default)]
pub struct TxPoll {
    window: Duration,
    /// Since when a delivery waits for the guest's TX (the window having
    /// passed without it).
    waiting: Option<Instant>,
    /// The window does not adapt (tests of the worker).
    fixed: bool,
}

impl TxPoll {
    /// A window that does not adapt: for tests of the worker, whose
    /// guests answer in milliseconds.
    #[cfg(test)]
    pub fn fixed(window: Duration) -> TxPoll {
        TxPoll {
            window,
            waiting: None,
            fixed: true,
        }
    }

    /// Frames were delivered to the guest at `now`: how long to poll for
    /// its answer (zero: not at all).
    pub fn delivered(&mut self, now: Instant) -> Duration {
        if self.waiting.replace(now).is_some() && !self.fixed {
            // The last delivery got no answer before this one.
            self.shrink();
        }
        self.window
    }

    /// The poll found the guest's TX.
    pub fn answered(&mut self) {
        self.waiting = None;
    }

    /// The guest kicked the TX queue at `now` (outside a poll).
    pub fn kicked(&mut self, now: Instant) {
        let Some(since) = self.waiting.take().filter(|_| !self.fixed) else {
            return;
        };
        let waited = now.saturating_duration_since(since);
        if waited <= self.window {
            // Came just as the window closed: the window is right.
        } else if waited <= POLL_MAX {
            self.window = (self.window * 2).clamp(POLL_START, POLL_MAX);
        } else {
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        self.window /= 2;
        if self.window < POLL_MIN {
            self.window = Duration::ZERO;
        }
    }

    #[cfg(test)]
    fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_guest_answering_within_the_maximum_is_polled_for() {
        let t = Instant::now();
        let mut p = TxPoll::default();
        // No window yet: the answer comes as a kick 10 us later.
        assert_eq!(p.delivered(t), Duration::ZERO);
        p.kicked(t + us(10));
        assert_eq!(p.window(), POLL_START);
        // Missed again (the window was 4 us): it grows to 8, 16.
        assert_eq!(p.delivered(t + us(100)), us(4));
        p.kicked(t + us(110));
        assert_eq!(p.delivered(t + us(200)), us(8));
        p.kicked(t + us(210));
        assert_eq!(p.delivered(t + us(300)), us(16));
        // Found by the poll: the window stays.
        p.answered();
        assert_eq!(p.delivered(t + us(400)), us(16));
        p.answered();
        assert_eq!(p.window(), us(16));
        // Never past the maximum.
        for i in 0..10 {
            let at = t + us(1000 + 100 * i);
            p.delivered(at);
            p.kicked(at + us(30));
        }
        assert_eq!(p.window(), POLL_MAX);
    }

    #[test]
    fn a_guest_that_does_not_answer_soon_stops_being_polled() {
        let t = Instant::now();
        let mut p = TxPoll::default();
        p.delivered(t);
        p.kicked(t + us(20));
        p.delivered(t + us(100));
        p.kicked(t + us(120));
        p.delivered(t + us(200));
        p.kicked(t + us(220));
        p.delivered(t + us(300));
        p.kicked(t + us(320));
        assert_eq!(p.window(), POLL_MAX);
        // Answers 50 us late: halves each time, then stops.
        for i in 0..6 {
            let at = t + us(1000 + 1000 * i);
            p.delivered(at);
            p.kicked(at + us(50));
        }
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn deliveries_without_answers_stop_the_polling() {
        let t = Instant::now();
        let mut p = TxPoll::default();
        for i in 0..4 {
            let at = t + us(100 * i);
            p.delivered(at);
            p.kicked(at + us(20));
        }
        assert_eq!(p.window(), POLL_MAX);
        // A stream the guest only receives: 32, 16, 8, 4, 2, 1, then none.
        let mut polled = Vec::new();
        for i in 0..8 {
            polled.push(p.delivered(t + us(1000 + 10 * i)).as_micros());
        }
        assert_eq!(polled, [32, 16, 8, 4, 2, 1, 0, 0]);
        // A kick much later changes nothing.
        p.kicked(t + us(5000));
        assert_eq!(p.window(), Duration::ZERO);
    }
}
