//! What crosses vmd's process boundaries, as plain serde types:
//! - [`v1`]: the control API, HTTP/JSON on vmd's Unix socket. vmctl is its
//!   first client; curl and scripts are others. The OpenAPI document vmd
//!   serves is generated from these types (utoipa).
//! - [`vmproc`]: the channel between vmd and each VM process (`vmm
//!   --control-fd`), JSON lines over a socketpair.
//! - [`text`]: what a user or a guest reported, made safe to print.
//!
//! No I/O here: both ends do their own.

pub mod text;
pub mod v1;
pub mod vmproc;

/// Where vmd listens unless told otherwise (`-s`, or `socket` in vm.conf).
pub const DEFAULT_SOCKET: &str = "/run/vmd.sock";
