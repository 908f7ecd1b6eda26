//! Test doubles shared by the device unit tests: an interrupt line that
//! records what was done to it, a `VmEvents` sink that records requests,
//! and an output buffer the test can inspect after handing it to a device.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::{IrqLine, VmEvent, VmEvents};

/// Counts pulses and remembers the last level driven.
#[derive(Default)]
pub struct TestIrq {
    pulses: AtomicUsize,
    level: AtomicBool,
    level_calls: AtomicUsize,
}

impl TestIrq {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn pulses(&self) -> usize {
        self.pulses.load(Ordering::SeqCst)
    }

    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }

    pub fn level_calls(&self) -> usize {
        self.level_calls.load(Ordering::SeqCst)
    }
}

impl IrqLine for TestIrq {
    fn pulse(&self) {
        self.pulses.fetch_add(1, Ordering::SeqCst);
    }

    fn set_level(&self, high: bool) {
        self.level.store(high, Ordering::SeqCst);
        self.level_calls.fetch_add(1, Ordering::SeqCst);
    }
}

/// Records every requested `VmEvent` in order.
#[derive(Default)]
pub struct TestEvents {
    events: Mutex<Vec<VmEvent>>,
}

impl TestEvents {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn events(&self) -> Vec<VmEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl VmEvents for TestEvents {
    fn request(&self, event: VmEvent) {
        self.events.lock().unwrap().push(event);
    }
}

/// A writer whose bytes stay readable by the test after the device has
/// taken ownership of a clone. Counts flushes too.
#[derive(Clone, Default)]
pub struct SharedBuf {
    bytes: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<AtomicUsize>,
}

impl SharedBuf {
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    pub fn flushes(&self) -> usize {
        self.flushes.load(Ordering::SeqCst)
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A writer that always fails, like a console whose reader went away.
pub struct BrokenPipe;

impl Write for BrokenPipe {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
}
