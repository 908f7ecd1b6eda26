//! Run state shared by the vCPU threads, the devices and whoever controls
//! the VM (the foreground runner now, the daemon's VM process later).
//!
//! One mutex + condvar: state changes are rare (pause, stop), and the vCPU
//! fast path only takes the lock once per `KVM_RUN` round trip to check
//! the state — uncontended, that costs tens of nanoseconds against a
//! multi-microsecond exit.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use devices::{VmEvent, VmEvents};

/// Why the vCPUs stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset.
    Reset,
    /// Triple fault, emulation failure or another fatal vCPU condition.
    Crash(String),
    /// The host asked the VM to stop at once.
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Stopping,
}

struct State {
    run: RunState,
    reason: Option<StopReason>,
    /// vCPU threads currently parked because of a pause.
    parked: u32,
    /// vCPU threads inside their run loop.
    active: u32,
}

pub struct Control {
    state: Mutex<State>,
    cv: Condvar,
    /// pthreads of the running vCPU threads, kicked on pause and stop.
    /// Cleared before the threads are joined, so a kick never targets a
    /// thread that has been reaped.
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

impl Control {
    pub fn new() -> Self {
        Control {
            state: Mutex::new(State {
                run: RunState::Running,
                reason: None,
                parked: 0,
                active: 0,
            }),
            cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the VM before starting `n` vCPU threads.
    pub(crate) fn begin(&self, n: u32) {
        let mut s = self.lock();
        s.reason = None;
        s.active = n;
        s.parked = 0;
        if s.run == RunState::Stopping {
            s.run = RunState::Running;
        }
    }

    /// Called by a vCPU thread before each `KVM_RUN`. Parks while paused;
    /// returns false once the VM is stopping (and counts the thread out).
    pub(crate) fn vcpu_may_run(&self) -> bool {
        let mut s = self.lock();
        loop {
            match s.run {
                RunState::Running => return true,
                RunState::Stopping => {
                    s.active -= 1;
                    self.cv.notify_all();
                    return false;
                }
                RunState::Paused => {
                    s.parked += 1;
                    self.cv.notify_all();
                    s = self
                        .cv
                        .wait_while(s, |s| s.run == RunState::Paused)
                        .unwrap_or_else(|e| e.into_inner());
                    s.parked -= 1;
                }
            }
        }
    }

    /// Stops the VM for `reason`. The first reason wins: a crash report is
    /// not overwritten by the power-off that follows it.
    pub fn stop(&self, reason: StopReason) {
        let mut s = self.lock();
        if s.reason.is_none() {
            s.reason = Some(reason);
        }
        s.run = RunState::Stopping;
        self.cv.notify_all();
        drop(s);
        self.kick_all();
    }

    /// Asks the vCPUs to park. Returns false if the VM is stopping.
    pub(crate) fn request_pause(&self) -> bool {
        let mut s = self.lock();
        match s.run {
            RunState::Stopping => false,
            _ => {
                s.run = RunState::Paused;
                drop(s);
                self.kick_all();
                true
            }
        }
    }

    /// Waits until every active vCPU has parked (or the VM stops).
    pub(crate) fn wait_parked(&self) -> bool {
        let s = self.lock();
        let s = self
            .cv
            .wait_while(s, |s| s.run == RunState::Paused && s.parked < s.active)
            .unwrap_or_else(|e| e.into_inner());
        s.run == RunState::Paused
    }

    pub(crate) fn resume(&self) -> bool {
        let mut s = self.lock();
        if s.run != RunState::Paused {
            return false;
        }
        s.run = RunState::Running;
        self.cv.notify_all();
        true
    }

    /// Whether the VM is stopping because the host asked (a forced
    /// power-off), as opposed to the guest's own doing.
    pub(crate) fn stopped_by_host(&self) -> bool {
        self.lock().reason == Some(StopReason::Host)
    }

    pub fn run_state(&self) -> RunState {
        self.lock().run
    }

    pub(crate) fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        *self.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
    }

    /// Kicks every vCPU thread out of `KVM_RUN` (see `vcpu.rs`).
    pub(crate) fn kick_all(&self) {
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        for t in threads.iter() {
            // SAFETY: `t` is a live, not yet joined thread (see `threads`).
            unsafe { libc::pthread_kill(*t, crate::vcpu::kick_signal()) };
        }
    }

    /// Waits up to `timeout` for a stop; returns its reason if one came.
    pub(crate) fn wait_stop(&self, timeout: Duration) -> Option<StopReason> {
        let s = self.lock();
        let (s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| s.run != RunState::Stopping)
            .unwrap_or_else(|e| e.into_inner());
        if s.run == RunState::Stopping {
            s.reason.clone()
        } else {
            None
        }
    }

    /// Waits until all vCPU threads have left their loops.
    pub(crate) fn wait_all_out(&self, timeout: Duration) -> bool {
        let s = self.lock();
        let (s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| s.active > 0)
            .unwrap_or_else(|e| e.into_inner());
        s.active == 0
    }
}

impl VmEvents for Control {
    fn request(&self, event: VmEvent) {
        match event {
            VmEvent::Reset => self.stop(StopReason::Reset),
            VmEvent::PowerOff => self.stop(StopReason::PowerOff),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn pause_parks_every_vcpu_and_resume_releases_them() {
        let ctl = Arc::new(Control::new());
        ctl.begin(3);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let c = ctl.clone();
                thread::spawn(move || {
                    let mut rounds = 0u64;
                    while c.vcpu_may_run() {
                        rounds += 1;
                        thread::yield_now();
                    }
                    rounds
                })
            })
            .collect();
        assert!(ctl.request_pause());
        assert!(ctl.wait_parked());
        assert_eq!(ctl.run_state(), RunState::Paused);
        assert!(ctl.resume());
        ctl.stop(StopReason::PowerOff);
        ctl.request(VmEvent::Reset); // later reasons do not overwrite
        assert!(ctl.wait_all_out(Duration::from_secs(5)));
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ctl.wait_stop(Duration::ZERO), Some(StopReason::PowerOff));
        assert!(!ctl.request_pause());
    }
}
