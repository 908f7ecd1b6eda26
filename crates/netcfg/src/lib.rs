//! I/O-free network configuration logic for vmd: OpenBSD vmd's addressing of
//! `local interface`s ([`local`]) and the VM process's built-in DHCP server
//! for them ([`dhcp`]).

pub mod dhcp;
pub mod local;
