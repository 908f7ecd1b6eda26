//! Host-initiated power requests, done gracefully: through the guest tools
//! when the guest has them, through ACPI otherwise, with bounded waits.
//!
//! Each function returns promptly; waiting (for the tools to acknowledge,
//! for the grace period to end) happens on a thread of its own, which
//! powers the VM off when the guest does not comply in time.

use std::time::{Duration, Instant};

use vm::guestrpc::host::CommandStatus;
use vm::guestrpc::tclo::TcloCommand;
use vm::threads::ThreadKind;
use vm::VmHandle;

/// How long the guest tools get to take a request (fetch it from their
/// command queue): tools that do not are not listening.
pub const TOOLS_TAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Queues `cmd` for the guest tools, if the guest has them.
fn tools_command(h: &VmHandle, cmd: TcloCommand<String>) -> Option<u64> {
    if !h.guest_state().tools_present {
        return None;
    }
    h.tools_command(cmd).ok()?.ok()
}

/// Waits until the guest acknowledges command `id`: it must take it within
/// `take` and then answer within the tools' reply timeout
/// (`DEFAULT_TCLO_TIMEOUT_MS`). True if it acknowledged.
fn wait_ack(h: &VmHandle, id: u64, take: Duration) -> bool {
    let start = Instant::now();
    loop {
        match h.tools_status(id) {
            Some(CommandStatus::Acked(_)) => return true,
            Some(s) if s.is_final() => {
                log::warn!("guest tools answered {s:?}");
                return false;
            }
            Some(CommandStatus::Pending) | None if start.elapsed() > take => return false,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Asks the guest to shut down. With guest tools: `OS_Halt`, 3 s to take
/// it and the reply timeout to acknowledge it (else it is powered off at
/// once: the tools are there but not listening, or refused), then `grace`
/// to power off. Without tools: the ACPI
/// power button, then `grace`. A guest that does not comply in time is
/// powered off.
pub fn graceful_stop(h: &VmHandle, grace: Duration) {
    let id = tools_command(h, TcloCommand::OsHalt);
    let (h, h2) = (h.clone(), h.clone());
    let stopper = vm::threads::spawn(ThreadKind::Control, "graceful-stop", move || {
        match id {
            Some(id) if wait_ack(&h, id, TOOLS_TAKE_TIMEOUT) => {
                log::info!("guest tools acknowledged the halt; waiting up to {grace:?}");
            }
            Some(_) => {
                log::warn!("guest tools did not acknowledge the halt: powering off");
                h.power_off();
                return;
            }
            None => {
                log::info!(
                    "no guest tools: pressing the ACPI power button; waiting up to {grace:?}"
                );
                h.press_power_button();
            }
        }
        std::thread::sleep(grace);
        log::warn!("guest did not power off within {grace:?}: powering off");
        h.power_off();
    });
    // Nothing would bound the stop: power off now.
    if let Err(e) = stopper {
        log::error!("the graceful stop's thread: {e}: powering off");
        h2.power_off();
    }
}

/// Pauses the VM; the guest's tools are told first (`OS_Suspend`, 3 s to
/// take it, then the reply timeout) so the guest can log it and prepare.
pub fn pause(h: &VmHandle) -> bool {
    if let Some(id) = tools_command(h, TcloCommand::OsSuspend) {
        if !wait_ack(h, id, TOOLS_TAKE_TIMEOUT) {
            log::warn!("guest tools did not acknowledge OS_Suspend; pausing anyway");
        }
    }
    h.pause()
}

/// Resumes the VM, then tells the guest's tools (`OS_Resume`) so the guest
/// resynchronises its clock.
pub fn resume(h: &VmHandle) -> bool {
    if !h.resume() {
        return false;
    }
    tools_command(h, TcloCommand::OsResume);
    true
}
