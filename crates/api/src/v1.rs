//! The control API, version 1. Paths are under `/v1`.
//!
//! | method + path | body | answer |
//! |---|---|---|
//! | `GET /v1/vms` | | `[VmStatus]` |
//! | `GET /v1/vms/{id}` | | `VmStatus` |
//! | `POST /v1/vms` | `StartRequest` | `VmStatus` (start by name or ad hoc) |
//! | `POST /v1/vms/{id}/stop` | `StopRequest` | `VmStatus` |
//! | `POST /v1/vms/{id}/pause` | | `VmStatus` |
//! | `POST /v1/vms/{id}/unpause` | | `VmStatus` |
//! | `GET /v1/vms/{id}/wait` | | `VmStatus` once the VM has stopped |
//! | `POST /v1/config/load` | `LoadRequest` | `ConfigResult` |
//! | `POST /v1/config/reload` | | `ConfigResult` |
//! | `POST /v1/reset` | `ResetRequest` | `Message` |
//! | `POST /v1/log` | `LogRequest` | `Message` |
//! | `GET /openapi.json` | | the OpenAPI document |
//!
//! `{id}` is a VM's number or name. Errors are 4xx/5xx with an [`Error`]
//! body: 400 malformed request, 403 not permitted, 404 no such VM, 409
//! conflicts with the VM's state (already running, ...).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A VM's run state, as `vmctl status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Not running (never started, or ended; see `VmStatus::last_exit`).
    Stopped,
    /// Its process is starting.
    Starting,
    Running,
    Paused,
    /// A graceful stop is under way.
    Stopping,
    /// Defined with `disable`: not started with vmd.
    Disabled,
}

/// One VM, as `vmctl status --json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStatus {
    pub id: u32,
    pub name: String,
    /// The VM process, while it runs.
    pub pid: Option<u32>,
    pub vcpus: u32,
    /// Memory the VM may use, bytes.
    pub maxmem: u64,
    /// Memory the VM process uses now (resident), bytes; 0 when stopped.
    pub curmem: u64,
    /// The console's pty, while the VM runs.
    pub tty: Option<String>,
    /// `user[:group]` that owns the VM; `root` by default.
    pub owner: String,
    pub state: VmState,
    /// The guest's hostname as its tools report it.
    pub hostname: Option<String>,
    /// The guest's first non-loopback IPv4 address as its tools report it.
    pub ip: Option<String>,
    /// Whether guest tools answer in this VM.
    pub tools: bool,
    /// How the VM last ended ("powered off", "halted by guest tools",
    /// "crashed: ...", "killed by signal 9", ...).
    pub last_exit: Option<String>,
}

/// `vmctl start`: a VM from the configuration by name, or one defined here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StartRequest {
    /// Name (or id) of a configured VM, or the name of a new ad-hoc VM.
    pub name: String,
    /// Kernel to boot (`-b`).
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// Bytes (`-m`).
    pub memory: Option<u64>,
    /// vCPUs.
    pub cpus: Option<u32>,
    /// Disk images (`-d`).
    #[serde(default)]
    pub disks: Vec<String>,
    /// CD-ROM image (`-r`).
    pub cdrom: Option<String>,
    /// Network interfaces (`-i`).
    pub interfaces: Option<u32>,
    /// A local interface (`-L`).
    #[serde(default)]
    pub local_interface: bool,
    /// Start as an instance of this configured VM (`-t`).
    pub instance_of: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StopRequest {
    /// Power off at once, without asking the guest (`-f`).
    #[serde(default)]
    pub force: bool,
    /// Answer only once the VM has stopped (`-w`).
    #[serde(default)]
    pub wait: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoadRequest {
    /// A vm.conf file to load in addition to the current configuration.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConfigResult {
    /// `file:line: message` for each error; empty when the file loaded.
    pub errors: Vec<String>,
    /// Names of the VMs defined now.
    pub vms: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResetWhat {
    All,
    Vms,
    Switches,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResetRequest {
    pub what: ResetWhat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Brief,
    Verbose,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogRequest {
    pub level: LogLevel,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub message: String,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Error {
    pub error: String,
}
