//! `vmt`: guest tools for Linux guests of a VMware-compatible host (our vmd,
//! real VMware), over the VMware backdoor and GuestRPC from user space.
//!
//! Here so far: the command line for people and scripts, in the manner of
//! open-vm-tools' `vmware-checkvm` and `vmware-rpctool` (`vmt checkvm`,
//! `vmt rpc TEXT`, `vmt info get KEY`, `vmt info set KEY VALUE`,
//! `vmt status`), and the daemon, `vmt` ([`daemon`]): vmt(4)'s TCLO loop
//! answering the host's power requests the way the guest's init expects
//! ([`power`]), the host name and first IPv4 address reported at start and
//! after a resume, the clock kept in sync with the host's ([`clock`]),
//! configured by `/etc/vmt.conf` and flags ([`config`]); detached, with a
//! pid file and syslog ([`detach`], [`syslog`]), or in the foreground
//! with `-d`; what it last did in a status file ([`status`]); the NICs,
//! the OS and the uptime reported as vmtoolsd reports them ([`report`]),
//! again whenever they change, woken by netlink ([`netlink`]) rather than
//! polling for it.
//!
//! The operations ([`ops`]) are generic over guestrpc's
//! [`Backdoor`](guestrpc::client::Backdoor), so the tests run them
//! in-process against the host's real state machine
//! (`guestrpc::host`); the binary gives them [`guestrpc::x86::PortIo`]
//! after [`sys::ioperm_backdoor`] and [`detect::host`].
//! The protocol reference is `guest-channel.md` in the project's shared
//! design notes (the § numbers in comments).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
#[cfg(target_os = "linux")]
pub mod detach;
pub mod detect;
#[cfg(target_os = "linux")]
pub mod netlink;
pub mod ops;
#[cfg(target_os = "linux")]
pub mod power;
pub mod report;
pub mod status;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod sys;
#[cfg(target_os = "linux")]
pub mod syslog;
