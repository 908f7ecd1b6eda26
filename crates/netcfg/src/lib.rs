//! I/O-free network configuration logic for vmd: OpenBSD vmd's addressing of
//! `local interface`s ([`local`]), the VM process's built-in DHCP server
//! for them ([`dhcp`]), and the MACs interfaces get by default ([`mac`]).

pub mod dhcp;
pub mod local;
pub mod mac;
