//! `vmt`: see the library's documentation and vmt(8).

use std::process::ExitCode;

use clap::Parser;
use vmt::cli::{self, Cli};

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn main() -> ExitCode {
    use vmt::{detect, sys};

    let args = Cli::parse();
    // Read before anything else touches a port: it names the hypervisor in
    // the "not a VM" message.
    let signature = detect::cpuid_signature();
    if let Err(e) = sys::ioperm_backdoor() {
        eprintln!("vmt: {e}");
        return ExitCode::from(cli::EXIT_FAILURE);
    }
    // SAFETY: ioperm above granted this process ports 0x5658..=0x565b, so
    // the port instructions do not fault. Without a hypervisor the ports
    // may belong to hardware: the only access before the host is known is
    // GETVERSION's one 4-byte read of 0x5658, the probe vmware-checkvm and
    // NetBSD's vmt(4) make too (see detect::host).
    let mut bd = unsafe { guestrpc::x86::PortIo::new() };
    let host = match detect::host(signature, &mut bd) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("vmt: {e}");
            return ExitCode::from(cli::EXIT_FAILURE);
        }
    };
    let code = cli::run(
        &args.command,
        &host,
        &mut bd,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    ExitCode::from(code)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!("vmt: runs only on x86-64 Linux");
    ExitCode::from(cli::EXIT_FAILURE)
}
