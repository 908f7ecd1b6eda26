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
//! | `GET /v1/vms/{id}/guestinfo` | | `{key: value, ...}` (see [`Guestinfo`]) |
//! | `GET /v1/vms/{id}/guestinfo/{key}` | | `GuestinfoValue` (404 when not set) |
//! | `PUT /v1/vms/{id}/guestinfo/{key}` | `GuestinfoValue` | `GuestinfoValue` |
//! | `POST /v1/config/load` | `LoadRequest` | `ConfigResult` |
//! | `POST /v1/config/reload` | | `ConfigResult` |
//! | `POST /v1/reset` | `ResetRequest` | `Message` |
//! | `POST /v1/log` | `LogRequest` | `Message` |
//! | `GET /openapi.json` | | the OpenAPI document |
//!
//! `{id}` is a VM's number or name. Every error is answered with an
//! [`Error`] body (JSON, `{"error": "..."}`), whatever refused the request,
//! and the OpenAPI document lists each status an endpoint can give:
//!
//! | status | meaning |
//! |---|---|
//! | 400 | the request does not fit the document: not JSON, a field of the wrong type or missing, a value outside the bounds or pattern the schema gives (VM names, paths, vCPUs, ...) |
//! | 403 | not permitted to this user (root, or the VM's owner) |
//! | 404 | no such VM (the path's `{id}`, a start's all-digits `name` or its `instance_of`), no such guestinfo variable, no such endpoint |
//! | 405 | the path has no such method (the `Allow` header lists those it has) |
//! | 409 | conflicts with the VM's state: already running, not running, a disk in use, no guest tools |
//! | 413 | the body is over 2 MiB |
//! | 422 | the request fits the schema, but what it names cannot be used: a file that is not there or not a regular file, a switch that is not configured, more memory than the host has, a CPU model that cannot exist, interfaces that cannot be set up, a guestinfo variable too long for its key |
//! | 500 | vmd itself failed |
//! | 502 | the VM process failed: it ended before its VM was built (a kernel it cannot load, ...), did not come up within 60 s, or did not answer |
//! | 503 | the control socket has too many connections (see vmd.8) |
//!
//! `GET /v1/vms/{id}/wait` is a long poll: it answers when the VM is not
//! running (at once if it is not), however long that takes; the control
//! socket does not time it out.

use std::collections::BTreeMap;

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
    /// The VM's disks, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskStatus>,
    /// The CD-ROM image, if the VM has one.
    #[serde(default)]
    pub cdrom: Option<String>,
    /// The network interfaces of the running VM, in the order the guest
    /// sees them.
    #[serde(default)]
    pub interfaces: Vec<InterfaceStatus>,
    /// The guest's operating system (its full name) as its tools report it.
    #[serde(default)]
    #[schema(example = "Debian GNU/Linux 12 (bookworm)")]
    pub os: Option<String>,
    /// The guest's uptime in seconds: the last one its tools reported,
    /// plus the time since.
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    /// The guest's NICs as its tools report them (NicInfo), each with its
    /// addresses: what the guest sees, which may differ from `interfaces`.
    #[serde(default)]
    pub nics: Vec<GuestNic>,
}

/// A NIC of the guest, as the guest's tools report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestNic {
    /// Its MAC address as the guest wrote it.
    #[schema(example = "fe:e1:ba:d0:12:34")]
    pub mac: String,
    /// Its IPv4 and IPv6 addresses, each with its prefix length.
    #[schema(example = json!(["100.64.1.3/31", "fe80::fce1:baff:fed0:1234/64"]))]
    pub addresses: Vec<String>,
}

/// A network interface of a running VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InterfaceStatus {
    /// The host-side tap device.
    #[schema(example = "tap0")]
    pub tap: String,
    /// The switch the tap is a port of, and that switch's bridge.
    pub switch: Option<String>,
    pub bridge: Option<String>,
    /// The guest's MAC address.
    #[schema(example = "fe:e1:ba:d0:12:34")]
    pub lladdr: String,
    /// Frames from the guest with another source address are dropped.
    pub locked: bool,
    /// A local interface: the host side's address (the guest's router).
    #[schema(example = "100.64.1.2/31")]
    pub local: Option<String>,
    /// A local interface: the address the built-in DHCP server gives the guest.
    #[schema(example = "100.64.1.3")]
    pub guest: Option<String>,
}

/// A disk of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskStatus {
    pub path: String,
    /// `raw` or `qcow2`: as configured, or as found when the VM started;
    /// null if neither happened yet.
    pub format: Option<String>,
}

/// `vmctl start`: a VM from the configuration by name, or one defined here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StartRequest {
    /// Name (or id) of a configured VM, or the name of a new ad-hoc VM or
    /// instance. A new name follows OpenBSD's rule (vmconf's
    /// `check_vm_name`): 1 to 63 ASCII letters, digits, `.`, `-` and `_`,
    /// starting with a letter or digit, not digits only; any other is a
    /// 400. A name of digits only is a VM's number: a 404 if there is no
    /// such VM.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )]
    pub name: String,
    /// Kernel to boot (`-b`): an absolute path on vmd's host, with no
    /// control character (as are `initrd`, `cdrom` and `disks`); one that
    /// is not there or not a regular file is a 422.
    #[schema(pattern = "^/[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub kernel: Option<String>,
    /// Initial ramdisk: an absolute path, as `kernel`.
    #[schema(pattern = "^/[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub initrd: Option<String>,
    /// The kernel command line: any text without a NUL.
    #[schema(pattern = "^[^\\u0000]*$")]
    pub cmdline: Option<String>,
    /// Bytes (`-m`), rounded up to a whole MiB; at least 2 MiB, and more
    /// than the host has is a 422.
    #[serde(default, deserialize_with = "integer")]
    #[schema(minimum = 2097152)]
    pub memory: Option<u64>,
    /// vCPUs, 1 to 254.
    #[serde(default, deserialize_with = "integer")]
    #[schema(minimum = 1, maximum = 254)]
    pub cpus: Option<u32>,
    /// Disk images (`-d`), at most 4: absolute paths, each with an
    /// optional `raw:` or `qcow2:` in front to say its format. One that is
    /// not there, or neither a regular file nor a block device, is a 422.
    #[serde(default)]
    #[schema(max_items = 4)]
    pub disks: Vec<String>,
    /// CD-ROM image (`-r`): an absolute path, as `kernel`.
    #[schema(pattern = "^/[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub cdrom: Option<String>,
    /// Device the BIOS boots first (`-B`): `disk` or `cdrom`.
    #[serde(default)]
    #[schema(pattern = "^(disk|cdrom)$")]
    pub boot_device: Option<String>,
    /// Network interfaces (`-i`): at least this many, counting `-L`'s
    /// and `-n`'s; the others are taps on no switch. At most 4; more
    /// than 4 counting `local_interface` and `switches` is a 422.
    #[serde(default, deserialize_with = "integer")]
    #[schema(maximum = 4)]
    pub interfaces: Option<u32>,
    /// A local interface (`-L`), the first one.
    #[serde(default)]
    pub local_interface: bool,
    /// An interface on each of these switches (`-n`), after the local
    /// one: at most 4, each a switch of the configuration (a 422
    /// otherwise), named without a control character.
    #[serde(default)]
    #[schema(max_items = 4)]
    pub switches: Vec<String>,
    /// Start as an instance of this configured VM (`-t`), named by its
    /// name or number; a 404 if there is none.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )]
    pub instance_of: Option<String>,
    /// The CPU the guest is shown (`--cpu-vendor`, `--cpu-family`, ...);
    /// what is not given stays as configured, or the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuRequest>,
}

/// An optional integer field, taken as JSON Schema takes an integer: a
/// number without a fractional part, written `4` or `4.0` (clients whose
/// numbers are all floats send the latter). Anything else, or one outside
/// `T`'s range, is an error (a 400).
fn integer<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = n.as_u64().or_else(|| {
        // Below 2^64 and whole; `as` is exact for such a float.
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
            .map(|f| f as u64)
    });
    let out_of_range = || {
        D::Error::custom(format!(
            "invalid value: {n}, expected a whole number in range"
        ))
    };
    let whole = whole.ok_or_else(out_of_range)?;
    T::try_from(whole).map(Some).map_err(|_| out_of_range())
}

/// What CPUID tells a guest about its CPU: vm.conf's `cpu` statement.
/// Changing it for an instance needs the parent's `allow instance boot`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct CpuRequest {
    /// `intel`, `amd` (in any case), or a vendor string of 12 printable
    /// ASCII characters, e.g. `GenuineIntel` (CPUID leaf 0).
    #[schema(
        example = "intel",
        pattern = "^([Ii][Nn][Tt][Ee][Ll]|[Aa][Mm][Dd]|[ -~]{12})$"
    )]
    pub vendor: Option<String>,
    /// Family, 1 to 270 (CPUID leaf 1).
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 1, maximum = 270, example = 6)]
    pub family: Option<u32>,
    /// Model, 0 to 255.
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 0, maximum = 255, example = 44)]
    pub model: Option<u32>,
    /// Stepping, 0 to 15.
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 0, maximum = 15)]
    pub stepping: Option<u32>,
    /// Features to hide, by their Linux `/proc/cpuinfo` names (`cx16`,
    /// `xsave`, ...; the document lists them); replaces the configured
    /// list (empty: hide none).
    ///
    /// A family and model that no CPU of the vendor can have together
    /// (model 16 and up only in family 6 and from 15 on, from 15 on for
    /// AMD) is a 422.
    pub hide: Option<Vec<String>>,
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

/// A running VM's guestinfo variables, as `GET /v1/vms/{id}/guestinfo`
/// answers them: key -> value, in key order.
///
/// Keys are **without** the `guestinfo.` prefix the guest writes
/// (`info-set guestinfo.foo bar` is `"foo": "bar"`): every key the guest
/// can set has it, so it says nothing, and VMware's host side names them
/// the same way (`vmrun readVariable VM guestVar foo`). Where the API takes
/// a key (the `{key}` of a path), a `guestinfo.` prefix is accepted and
/// removed, as the VM process's own store does.
///
/// Guests write bytes; keys and values that are not UTF-8 are shown with
/// U+FFFD in place of the invalid bytes.
pub type Guestinfo = BTreeMap<String, String>;

/// One guestinfo variable's value: the answer of `GET` and `PUT
/// /v1/vms/{id}/guestinfo/{key}`, and the body of that `PUT`.
///
/// The host sets what the guest reads back with `info-get
/// guestinfo.KEY` (VMware's `vmrun writeVariable VM guestVar KEY VALUE`).
/// There is no delete, as on VMware: an empty value is how guest tools
/// clear a variable, and the guest reads it back empty (`"1 "`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GuestinfoValue {
    /// Any text without a NUL. With its key at most 65516 bytes
    /// ([`GUESTINFO_MAX_KEY_VALUE`]): a longer pair is a 422.
    #[schema(pattern = "^[^\\u0000]*$", max_length = 65515)]
    pub value: String,
}

/// The largest GuestRPC message (guestrpc's `proto::MAX_MESSAGE`,
/// VMware's `GUESTMSG_MAX_IN_SIZE`). A number here rather than a
/// dependency, so that vmctl's one dependency stays the API's types; the
/// VM process's tests check that the two agree.
pub const GUESTINFO_MAX_MESSAGE: usize = 65536;

/// The most bytes a guestinfo key and its value may take together
/// (65516): one message less `info-set guestinfo.` and the space after
/// the key. That is what a guest can store with its own `info-set` (the
/// host refuses a larger message), so a host set is held to it too: a
/// bigger variable is one no guest could have written, and the guest's
/// `info-get` reply (`"1 "` + value) could not carry it whole.
///
/// Besides, each VM's store holds at most 128 variables and 1 MiB of keys
/// and values (guestrpc's `MAX_GUESTINFO_KEYS`, `MAX_GUESTINFO_BYTES`);
/// the VM process refuses a set beyond that (409).
///
/// A key travels in the URL, and vmd's HTTP server (hyper) answers a bare
/// 414 to a request target over 64 KiB before vmd sees it: the keys near
/// this limit (or a third of it, percent-encoded) cannot be named in a
/// path, though they show in the listing. vmctl checks keys itself, so
/// that it says why.
pub const GUESTINFO_MAX_KEY_VALUE: usize =
    GUESTINFO_MAX_MESSAGE - "info-set guestinfo.".len() - " ".len();

/// The prefix every guestinfo key has on the guest's side.
pub const GUESTINFO_PREFIX: &str = "guestinfo.";

/// Checks a guestinfo key as the API takes it and returns it without a
/// `guestinfo.` prefix; the error says what is wrong (a 400).
///
/// A key must be one the guest could name itself: not empty, no space
/// (the guest's `info-set`/`info-get` end the key at the first space), no
/// control character (text requests are cut at a NUL, and `info-get`
/// trims whitespace around the key), and short enough for
/// [`GUESTINFO_MAX_KEY_VALUE`]. A `/` is refused too: the key is one path
/// segment of the URL, and a `%2F` in it would make a name no path can
/// show plainly. So is a second `guestinfo.` prefix (a guest's
/// `guestinfo.guestinfo.x`, listed as `guestinfo.x`): the store would read
/// it as `x`.
pub fn guestinfo_key(key: &str) -> Result<&str, String> {
    let key = key.strip_prefix(GUESTINFO_PREFIX).unwrap_or(key);
    if key.is_empty() {
        return Err("guestinfo key is empty".into());
    }
    if key.len() > GUESTINFO_MAX_KEY_VALUE {
        return Err(format!(
            "guestinfo key is too long: {} bytes, at most {GUESTINFO_MAX_KEY_VALUE}",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("guestinfo key may not contain control characters".into());
    }
    if key.contains(' ') {
        return Err("guestinfo key may not contain a space".into());
    }
    if key.contains('/') {
        return Err("guestinfo key may not contain '/'".into());
    }
    if key.starts_with(GUESTINFO_PREFIX) {
        // The VM process's store takes the prefix off the keys it is
        // given, as this does: a second one would come off there too, and
        // the key meant would not be the key used.
        return Err("guestinfo key may not start with guestinfo.guestinfo.".into());
    }
    Ok(key)
}

/// The most characters a guestinfo key named in a path (`{key}` of
/// `/v1/vms/{id}/guestinfo/{key}`, with any `guestinfo.` prefix) may have:
/// percent-encoded, 4096 characters of any kind fit the 64 KiB that vmd's
/// HTTP server takes for a request target, so every key within this bound
/// can be named. A guest may set longer ones; they show in the listing.
pub const GUESTINFO_MAX_PATH_KEY: usize = 4096;

/// [`guestinfo_key`] for a key named in a path: also at most
/// [`GUESTINFO_MAX_PATH_KEY`] characters.
pub fn guestinfo_path_key(key: &str) -> Result<&str, String> {
    if key.chars().nth(GUESTINFO_MAX_PATH_KEY).is_some() {
        return Err(format!(
            "guestinfo key is too long: {} characters, at most {GUESTINFO_MAX_PATH_KEY} in a path",
            key.chars().count()
        ));
    }
    guestinfo_key(key)
}

/// Checks a value to set for `key` (already through [`guestinfo_key`]);
/// the error says what is wrong (a 400). Any text is allowed but a NUL
/// (the guest's requests are cut at the first NUL, and its C string would
/// end there), within [`GUESTINFO_MAX_KEY_VALUE`] with the key.
pub fn check_guestinfo_value(key: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err("guestinfo value may not contain a NUL character".into());
    }
    let total = key.len() + value.len();
    if total > GUESTINFO_MAX_KEY_VALUE {
        return Err(format!(
            "guestinfo key and value are too long: {total} bytes together, at most \
             {GUESTINFO_MAX_KEY_VALUE} (one GuestRPC message)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guestinfo_wire_format() {
        // A variable's body and answer.
        let v = GuestinfoValue {
            value: "bar baz".into(),
        };
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(s, r#"{"value":"bar baz"}"#);
        assert_eq!(serde_json::from_str::<GuestinfoValue>(&s).unwrap(), v);
        assert!(serde_json::from_str::<GuestinfoValue>(r#"{}"#).is_err());
        assert!(serde_json::from_str::<GuestinfoValue>(r#"{"value":1}"#).is_err());
        // The listing: a plain object, keys without the prefix, in order.
        let all: Guestinfo = [("ip", "10.0.0.5"), ("b", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            serde_json::to_string(&all).unwrap(),
            r#"{"b":"","ip":"10.0.0.5"}"#
        );
    }

    #[test]
    fn guestinfo_keys() {
        assert_eq!(GUESTINFO_MAX_KEY_VALUE, 65516);
        assert_eq!(guestinfo_key("foo"), Ok("foo"));
        assert_eq!(guestinfo_key("guestinfo.foo"), Ok("foo"));
        // Only one prefix comes off, and the VM's store would take off a
        // second one: refused rather than set under another name.
        assert!(guestinfo_key("guestinfo.guestinfo.x").is_err());
        assert!(guestinfo_key("guestinfo.x.guestinfo.y").is_ok());
        assert_eq!(guestinfo_key("a.b-c_d:é"), Ok("a.b-c_d:é"));
        for bad in [
            "",
            "guestinfo.",
            "a b",
            "a\tb",
            "a\nb",
            "a\0b",
            "\u{7f}",
            "a/b",
            "/",
        ] {
            assert!(guestinfo_key(bad).is_err(), "{bad:?}");
        }
        let long = "k".repeat(GUESTINFO_MAX_KEY_VALUE);
        assert!(guestinfo_key(&long).is_ok());
        let longer = "k".repeat(GUESTINFO_MAX_KEY_VALUE + 1);
        assert_eq!(
            guestinfo_key(&longer).unwrap_err(),
            "guestinfo key is too long: 65517 bytes, at most 65516"
        );
    }

    #[test]
    fn integers_as_json_schema_takes_them() {
        let req: StartRequest = serde_json::from_str(
            r#"{"name":"a","memory":4592323.0,"cpus":2,"cpu":{"model":44.0}}"#,
        )
        .unwrap();
        assert_eq!(req.memory, Some(4592323));
        assert_eq!(req.cpus, Some(2));
        assert_eq!(req.cpu.unwrap().model, Some(44));
        let req: StartRequest = serde_json::from_str(r#"{"name":"a","cpus":null}"#).unwrap();
        assert_eq!((req.memory, req.cpus), (None, None));
        for bad in [
            r#"{"name":"a","cpus":1.5}"#,
            r#"{"name":"a","cpus":-1}"#,
            r#"{"name":"a","cpus":4294967296}"#,
            r#"{"name":"a","memory":1e30}"#,
            r#"{"name":"a","memory":"1"}"#,
        ] {
            assert!(serde_json::from_str::<StartRequest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn guestinfo_path_keys() {
        // Four bytes a character, the most UTF-8 takes.
        let most = "\u{1F600}".repeat(GUESTINFO_MAX_PATH_KEY);
        assert_eq!(guestinfo_path_key(&most), Ok(most.as_str()));
        // Percent-encoded, the longest key fits hyper's request target
        // (under 64 KiB with the rest of the path).
        assert!(most.len() * 3 + "/v1/vms/x/guestinfo/".len() < 65534);
        let over = format!("{most}e");
        assert_eq!(
            guestinfo_path_key(&over).unwrap_err(),
            "guestinfo key is too long: 4097 characters, at most 4096 in a path"
        );
        assert!(guestinfo_path_key("a b").is_err());
    }

    #[test]
    fn guestinfo_values() {
        assert!(check_guestinfo_value("k", "").is_ok());
        assert!(check_guestinfo_value("k", "two\nlines\ttab").is_ok());
        assert!(check_guestinfo_value("k", "a\0b").is_err());
        // The guest's largest info-set: "info-set guestinfo.k " + value
        // filling 64 KiB.
        let fits = "v".repeat(GUESTINFO_MAX_MESSAGE - "info-set guestinfo.k ".len());
        assert!(check_guestinfo_value("k", &fits).is_ok());
        let over = format!("{fits}v");
        assert_eq!(
            check_guestinfo_value("k", &over).unwrap_err(),
            "guestinfo key and value are too long: 65517 bytes together, at most 65516 \
             (one GuestRPC message)"
        );
    }
}
