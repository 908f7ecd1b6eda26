//! The control API: HTTP/JSON on vmd's Unix socket (see `api::v1` for the
//! endpoint table). Every handler learns who is asking from SO_PEERCRED
//! and checks it against the VM's owner before acting.

use std::sync::Arc;

use api::v1::{
    ConfigResult, CpuRequest, Guestinfo, GuestinfoValue, LoadRequest, LogLevel, LogRequest,
    Message, ResetRequest, ResetWhat, StartRequest, StopRequest, VmState, VmStatus,
};
use api::vmproc::{Reply, Request};
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::auth::{self, Peer};
use crate::state::{Daemon, Error, UserFiles};

/// The most vCPUs a VM may have (the VM process's `vm::MAX_VCPUS`: xAPIC
/// ids 0 to 254 in its MADT).
const MAX_VCPUS: u32 = 254;

#[derive(Clone)]
pub struct App {
    pub daemon: Arc<Daemon>,
    pub set_verbose: Arc<dyn Fn(bool) + Send + Sync>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = match &self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::VmProcess(_) => StatusCode::BAD_GATEWAY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            code,
            Json(api::v1::Error {
                error: self.message().to_owned(),
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, Error>;

/// Parses a JSON body; an empty body means the type's defaults when it
/// has them. Malformed input is a 400 with the parser's message.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Error> {
    let b: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(b).map_err(|e| Error::BadRequest(format!("bad request body: {e}")))
}

/// `key` (a VM's number or name as a client gave it) for a message: not
/// a checked name, so escaped and bounded.
fn quote_key(key: &str) -> String {
    api::text::shorten(key, vmconf::MAX_VM_NAME_LEN)
}

/// A path a client gave, for a message: escaped, and cut only where no
/// path goes on.
fn quote_path(path: &str) -> String {
    api::text::shorten(path, 4096)
}

fn lookup(d: &Daemon, key: &str) -> Result<u32, Error> {
    d.lock().find(key).ok_or_else(|| no_vm(key))
}

fn no_vm(key: &str) -> Error {
    Error::NotFound(format!("vm {} not found", quote_key(key)))
}

/// A name for a new VM or instance, checked by OpenBSD's rule
/// (`vmconf::check_vm_name`, as vm.conf's names are): a 400 that says
/// why otherwise.
fn check_new_name(name: &str) -> Result<(), Error> {
    vmconf::check_vm_name(name).map_err(|why| {
        Error::BadRequest(format!(
            "invalid vm name {}: {why}",
            vmconf::quote_vm_name(name)
        ))
    })
}

/// A VM named in a start request (`name`, `instance_of`): a number (an
/// existing VM's) or a name by OpenBSD's rule; the document's pattern
/// says the same. What is neither is a 400.
fn check_vm_key(what: &str, key: &str) -> Result<(), Error> {
    let number = !key.is_empty()
        && key.len() <= vmconf::MAX_VM_NAME_LEN
        && key.bytes().all(|b| b.is_ascii_digit());
    if number {
        return Ok(());
    }
    vmconf::check_vm_name(key).map_err(|why| {
        Error::BadRequest(format!(
            "invalid {what} {}: {why}",
            vmconf::quote_vm_name(key)
        ))
    })
}

/// A path of a start request (`kernel`, `initrd`, `cdrom`, a disk without
/// its format prefix): absolute, for vmd does not share the client's
/// working directory, and without a control character, for it ends up in
/// messages, logs and `vmctl status` (a newline would forge a log line,
/// an ESC reach a terminal).
fn check_path(what: &str, path: &str) -> Result<(), Error> {
    // An empty path would reach the VM process as an empty argument.
    if path.is_empty() {
        return Err(Error::BadRequest(format!("{what}: an empty path")));
    }
    if path.chars().any(char::is_control) {
        return Err(Error::BadRequest(format!(
            "{what} {}: contains a control character",
            quote_key(path)
        )));
    }
    if !path.starts_with('/') {
        return Err(Error::BadRequest(format!(
            "{what} {}: not an absolute path",
            quote_key(path)
        )));
    }
    Ok(())
}

/// A disk of a start request: its path and the format a `raw:` or
/// `qcow2:` in front of it names (vmctl's prefixes).
fn split_disk(spec: &str) -> (Option<vmconf::DiskFormat>, &str) {
    if let Some(rest) = spec.strip_prefix("raw:") {
        (Some(vmconf::DiskFormat::Raw), rest)
    } else if let Some(rest) = spec.strip_prefix("qcow2:") {
        (Some(vmconf::DiskFormat::Qcow2), rest)
    } else {
        (None, spec)
    }
}

/// Everything the document's schema says of a start request, checked:
/// what breaks it is a 400, before anything is looked up, so that a
/// request the schema allows is never refused as malformed. What depends
/// on the host (files, switches, memory) is [`check_usable`]'s.
fn check_start_request(req: &StartRequest) -> Result<(), Error> {
    check_vm_key("vm name", &req.name)?;
    if let Some(parent) = &req.instance_of {
        check_vm_key("instance_of", parent)?;
    }
    let paths = [
        ("kernel", req.kernel.as_deref()),
        ("initrd", req.initrd.as_deref()),
        ("cdrom", req.cdrom.as_deref()),
    ];
    for (what, path) in paths {
        if let Some(p) = path {
            check_path(what, p)?;
        }
    }
    if req.disks.len() > vmconf::MAX_DISKS {
        return Err(Error::BadRequest(format!(
            "{} disks: at most {} per VM",
            req.disks.len(),
            vmconf::MAX_DISKS
        )));
    }
    for d in &req.disks {
        check_path("disk", split_disk(d).1)?;
    }
    // The kernel command line is the guest's business and may carry
    // anything but a NUL (it could not be passed on).
    if req.cmdline.as_deref().is_some_and(|c| c.contains('\0')) {
        return Err(Error::BadRequest("cmdline: contains a NUL".into()));
    }
    if let Some(m) = req.memory {
        if m < vmconf::MIN_MEMORY {
            return Err(Error::BadRequest(format!(
                "memory {m} is below the 2M minimum"
            )));
        }
    }
    if let Some(c) = req.cpus {
        if c == 0 || c > MAX_VCPUS {
            return Err(Error::BadRequest(format!(
                "{c} vCPUs: must be 1 to {MAX_VCPUS}"
            )));
        }
    }
    if let Some(b) = &req.boot_device {
        if b != "disk" && b != "cdrom" {
            return Err(Error::BadRequest(format!(
                "boot device {}: must be disk or cdrom",
                quote_key(b)
            )));
        }
    }
    let n = req.interfaces.unwrap_or(0) as usize;
    if n > vmconf::MAX_INTERFACES || req.switches.len() > vmconf::MAX_INTERFACES {
        return Err(Error::BadRequest(format!(
            "{} interfaces: at most {} per VM",
            n.max(req.switches.len()),
            vmconf::MAX_INTERFACES
        )));
    }
    for sw in &req.switches {
        if sw.is_empty() {
            return Err(Error::BadRequest("switch: an empty name".into()));
        }
        if sw.chars().any(char::is_control) {
            return Err(Error::BadRequest(format!(
                "switch {}: contains a control character",
                quote_key(sw)
            )));
        }
    }
    if let Some(cpu) = &req.cpu {
        cpu_model(&vmconf::CpuModel::default(), cpu).or_else(|e| match e {
            // A family and model that do not go together fit the schema.
            Error::Unprocessable(_) => Ok(Default::default()),
            e => Err(e),
        })?;
    }
    Ok(())
}

/// What a start request names on the host, looked at before anything
/// starts: the files it names are there and of the right kind, its
/// switches are configured, its memory is not more than the host has.
/// The request fits the schema by now; this is a 422.
fn check_usable(d: &Daemon, req: &StartRequest) -> Result<(), Error> {
    let files = [
        ("kernel", req.kernel.as_deref()),
        ("initrd", req.initrd.as_deref()),
        ("cdrom", req.cdrom.as_deref()),
    ];
    let disks = req.disks.iter().map(|d| ("disk", Some(split_disk(d).1)));
    for (what, path) in files.into_iter().chain(disks) {
        let Some(path) = path else { continue };
        let md = std::fs::metadata(path).map_err(|e| {
            Error::Unprocessable(format!("{what} {}: {}", quote_path(path), os_error(&e)))
        })?;
        use std::os::unix::fs::FileTypeExt;
        let ft = md.file_type();
        if !(ft.is_file() || (what == "disk" && ft.is_block_device())) {
            return Err(Error::Unprocessable(format!(
                "{what} {}: is a {}, not a {}",
                quote_path(path),
                disk::file_kind(ft),
                // As the VM process says it.
                if what == "disk" {
                    "disk image"
                } else {
                    "regular file"
                }
            )));
        }
    }
    {
        let g = d.lock();
        for sw in &req.switches {
            if !g.switches.iter().any(|s| &s.name == sw) {
                return Err(Error::Unprocessable(format!(
                    "switch {}: not in the configuration",
                    quote_key(sw)
                )));
            }
        }
    }
    if let Some(m) = req.memory {
        let host = host_memory();
        // Compared as the VM process will, rounded up to a whole MiB.
        if m > host || m.next_multiple_of(1 << 20) > host {
            return Err(Error::Unprocessable(format!(
                "memory {}M is more than this host has ({}M in all)",
                m.div_ceil(1 << 20),
                host >> 20
            )));
        }
    }
    Ok(())
}

/// The host's RAM in bytes, as the VM process counts it when it refuses
/// a VM larger than that.
fn host_memory() -> u64 {
    // SAFETY: sysinfo only writes the struct we pass.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return u64::MAX;
    }
    (si.totalram as u64).saturating_mul(u64::from(si.mem_unit))
}

/// An I/O error's text without Rust's " (os error N)".
fn os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// VM `key`, if `peer` may control it.
fn controllable(d: &Daemon, peer: &Peer, key: &str) -> Result<u32, Error> {
    // Looked up and checked under one lock: a reload in between could
    // remove the VM.
    let g = d.lock();
    let id = g.find(key).ok_or_else(|| no_vm(key))?;
    let Some(vm) = g.vms.get(&id) else {
        return Err(no_vm(key));
    };
    if auth::may_control(peer, vm.def.owner.as_ref()) {
        Ok(id)
    } else {
        Err(Error::Forbidden(format!(
            "vm {}: permission denied",
            vm.def.name
        )))
    }
}

fn root_only(peer: &Peer, what: &str) -> Result<(), Error> {
    if peer.is_root() {
        Ok(())
    } else {
        Err(Error::Forbidden(format!("{what}: permission denied")))
    }
}

fn status_of(d: &Daemon, id: u32) -> Result<VmStatus, Error> {
    d.lock()
        .vms
        .get(&id)
        .map(|v| v.status())
        .ok_or_else(|| Error::NotFound(format!("vm {id} is gone")))
}

fn expect_ok(r: Reply) -> Result<(), Error> {
    match r {
        Reply::Ok => Ok(()),
        Reply::Error { message } => Err(Error::Conflict(message)),
        other => Err(unexpected(other)),
    }
}

#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = [VmStatus], description = "every VM, in number order")))]
async fn list(State(app): State<App>) -> Json<Vec<VmStatus>> {
    Json(app.daemon.lock().vms.values().map(|v| v.status()).collect())
}

#[utoipa::path(get, path = "/v1/vms/{id}", params(("id" = String, Path, description = "VM number or name")),
    responses((status = 200, body = VmStatus, description = "the VM"), (status = 400, body = api::v1::Error, description = "the path does not decode (`%FF`)"), (status = 404, body = api::v1::Error, description = "no such VM")))]
async fn show(State(app): State<App>, Path(key): Path<String>) -> ApiResult<VmStatus> {
    let id = lookup(&app.daemon, &key)?;
    Ok(Json(status_of(&app.daemon, id)?))
}

#[utoipa::path(post, path = "/v1/vms", request_body = StartRequest,
    responses((status = 200, body = VmStatus, description = "the VM, built and running"),
              (status = 400, body = api::v1::Error, description = "the request does not fit this document"),
              (status = 403, body = api::v1::Error, description = "not permitted: another user's VM, changing a configured VM (root only), an ad-hoc VM (root only), an instance its parent does not allow, a file the user may not read"),
              (status = 404, body = api::v1::Error, description = "no VM of that number, no VM `instance_of` names, or no such VM and no kernel to start one"),
              (status = 409, body = api::v1::Error, description = "already running, already exists (an instance's name), or a disk in use"),
              (status = 422, body = api::v1::Error, description = "a file, switch, memory size or CPU model the request names cannot be used"),
              (status = 500, body = api::v1::Error, description = "vmd could not run the VM process"),
              (status = 502, body = api::v1::Error, description = "the VM process ended before its VM was built (the message says why) or did not come up within 60 s")))]
async fn start(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    b: Bytes,
) -> ApiResult<VmStatus> {
    let req: StartRequest = body(&b)?;
    let d = &app.daemon;
    check_start_request(&req)?;
    let overrides = req.kernel.is_some()
        || req.initrd.is_some()
        || req.cmdline.is_some()
        || req.memory.is_some()
        || req.cpus.is_some()
        || !req.disks.is_empty()
        || req.cdrom.is_some()
        || req.boot_device.is_some()
        || req.interfaces.is_some()
        || req.local_interface
        || !req.switches.is_empty()
        || req.cpu.is_some();
    // The guard must not live through the match: the arms lock again.
    let existing = d.lock().find(&req.name);
    // A VM that exists is named by its name or number; a number names
    // no new VM.
    if existing.is_none() {
        if req.name.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::NotFound(format!(
                "vm {} not found (a new VM's name is not all digits)",
                req.name
            )));
        }
        check_new_name(&req.name)?;
    }
    // A configured VM changed for this start, and what it was before: a
    // start that fails puts it back, so a rejected request changes nothing.
    let mut changed: Option<(vmconf::VmDef, vmconf::VmDef)> = None;
    let id = match (existing, &req.instance_of) {
        (Some(_), Some(_)) => {
            return Err(Error::Conflict(format!("vm {} already exists", req.name)))
        }
        (Some(id), None) => {
            let id = controllable(d, &peer, &id.to_string())?;
            if overrides {
                root_only(&peer, "changing a configured VM")?;
                check_usable(d, &req)?;
                let mut g = d.lock();
                // Gone if a reload removed it since it was looked up.
                let Some(vm) = g.vms.get_mut(&id) else {
                    return Err(no_vm(&req.name));
                };
                if vm.running() {
                    return Err(Error::Conflict(format!(
                        "vm {} is already running",
                        vm.def.name
                    )));
                }
                let mut def = vm.def.clone();
                apply_overrides(&mut def, &req)?;
                let before = std::mem::replace(&mut vm.def, def.clone());
                changed = Some((before, def));
            }
            id
        }
        (None, Some(parent)) => {
            let mut def = {
                let g = d.lock();
                let Some(p) = g.find(parent).and_then(|pid| g.vms.get(&pid)) else {
                    return Err(no_vm(parent));
                };
                let owner = p.def.instance_owner.as_ref().or(p.def.owner.as_ref());
                if !auth::may_control(&peer, owner) {
                    return Err(Error::Forbidden(format!(
                        "vm {}: instance: permission denied",
                        p.def.name
                    )));
                }
                // As in vm.conf: an instance has instances of its own only
                // if its (usually inherited) `allow instance` says so.
                if p.def.instance_of.is_some() && !p.def.allows(vmconf::InstanceOption::Instance) {
                    return Err(Error::Forbidden(format!(
                        "vm {}: is an instance and does not allow instance",
                        p.def.name
                    )));
                }
                check_instance_overrides(&p.def, &req)?;
                p.def.clone()
            };
            def.instance_of = Some(std::mem::replace(&mut def.name, req.name.clone()));
            // It belongs to whoever starts it (vmd.8), not to its parent's
            // owner: root's instances inherit the parent's owner.
            if !peer.is_root() {
                let user = auth::user_name(peer.uid).unwrap_or_else(|| peer.uid.to_string());
                def.owner = Some(vmconf::Owner {
                    user: Some(user),
                    group: None,
                });
            }
            apply_overrides(&mut def, &req)?;
            // Every file the user names himself is opened by the VM
            // process with his rights (`UserFiles`); looked at here first
            // for a clear 403 before anything starts.
            let files = user_files(&peer, &req);
            if let Some(f) = &files {
                let reads = [
                    (f.kernel, &def.kernel),
                    (f.initrd, &def.initrd),
                    (f.cdrom, &def.cdrom),
                ];
                for path in reads.iter().filter(|r| r.0).filter_map(|r| r.1.as_deref()) {
                    auth::may_access(&peer, path, false).map_err(Error::Forbidden)?;
                }
                if f.disks {
                    for disk in &def.disks {
                        auth::may_access(&peer, &disk.path, true).map_err(Error::Forbidden)?;
                    }
                }
            }
            check_usable(d, &req)?;
            d.add_adhoc(def, files)?
        }
        (None, None) => {
            root_only(&peer, "starting a VM that is not configured")?;
            if req.kernel.is_none() {
                return Err(Error::NotFound(format!(
                    "vm {} not found; to start one that is not configured, give a kernel to boot (-b)",
                    req.name
                )));
            }
            let mut def = vmconf::VmDef::new(req.name.clone());
            def.grace_secs = d.globals().grace_secs;
            apply_overrides(&mut def, &req)?;
            check_usable(d, &req)?;
            d.add_adhoc(def, None)?
        }
    };
    let started = d.start(id).await;
    if let (Err(_), Some((before, def))) = (&started, changed) {
        let mut g = d.lock();
        // Unless a reload replaced it meanwhile, or it runs after all.
        if let Some(vm) = g.vms.get_mut(&id).filter(|v| v.def == def && !v.running()) {
            vm.def = before;
        }
    }
    Ok(Json(started?))
}

/// The files of an instance that `peer` names himself, unless he is root:
/// the VM process opens them with his rights.
fn user_files(peer: &Peer, req: &StartRequest) -> Option<UserFiles> {
    let f = UserFiles {
        uid: peer.uid,
        gid: peer.gid,
        kernel: req.kernel.is_some(),
        initrd: req.initrd.is_some(),
        disks: !req.disks.is_empty(),
        cdrom: req.cdrom.is_some(),
    };
    (!peer.is_root() && (f.kernel || f.initrd || f.disks || f.cdrom)).then_some(f)
}

fn apply_overrides(def: &mut vmconf::VmDef, req: &StartRequest) -> Result<(), Error> {
    if let Some(k) = &req.kernel {
        def.kernel = Some(k.into());
    }
    if let Some(i) = &req.initrd {
        def.initrd = Some(i.into());
    }
    if let Some(c) = &req.cmdline {
        def.cmdline = Some(c.clone());
    }
    // Rounded up as the VM process will. check_usable refuses more than
    // the host has, but on some paths only after this: near 2^64 the
    // rounding itself overflows, and that is the same refusal.
    if let Some(m) = req.memory {
        def.memory = m.checked_next_multiple_of(1 << 20).ok_or_else(|| {
            Error::Unprocessable(format!(
                "memory {}M is more than this host has ({}M in all)",
                m.div_ceil(1 << 20),
                host_memory() >> 20
            ))
        })?;
    }
    if let Some(c) = req.cpus {
        def.cpus = c;
    }
    if let Some(cpu) = &req.cpu {
        def.cpu = cpu_model(&def.cpu, cpu)?;
    }
    if !req.disks.is_empty() {
        // vmctl's `raw:` and `qcow2:` prefixes say the format.
        def.disks = req
            .disks
            .iter()
            .map(|p| {
                let (format, path) = split_disk(p);
                vmconf::Disk {
                    path: path.into(),
                    format,
                }
            })
            .collect();
    }
    if let Some(b) = &req.boot_device {
        def.boot_device = Some(match b.as_str() {
            "cdrom" => vmconf::BootDevice::Cdrom,
            _ => vmconf::BootDevice::Disk,
        });
    }
    if let Some(iso) = &req.cdrom {
        def.cdrom = Some(iso.into());
    }
    if req.interfaces.is_some() || req.local_interface || !req.switches.is_empty() {
        def.interfaces = interfaces(req)?;
    }
    Ok(())
}

/// vmctl's `-L`, `-n` and `-i` as interfaces, the way OpenBSD's vmctl
/// builds them: the local interface first, then one per switch, then taps
/// on no switch up to the `-i` count. Each count is within bounds
/// (`check_start_request`); a local interface and as many switches as
/// allowed are one too many, which the schema cannot say: a 422.
fn interfaces(req: &StartRequest) -> Result<Vec<vmconf::Interface>, Error> {
    let named = req.switches.len() + usize::from(req.local_interface);
    let count = named.max(req.interfaces.unwrap_or(0) as usize);
    if count > vmconf::MAX_INTERFACES {
        return Err(Error::Unprocessable(format!(
            "{count} interfaces: at most {} per VM",
            vmconf::MAX_INTERFACES
        )));
    }
    let mut out = Vec::with_capacity(count);
    if req.local_interface {
        out.push(vmconf::Interface {
            local: true,
            ..Default::default()
        });
    }
    for sw in &req.switches {
        out.push(vmconf::Interface {
            switch: Some(sw.clone()),
            ..Default::default()
        });
    }
    out.resize_with(count, Default::default);
    Ok(out)
}

/// `base` with a start request's `cpu` on it, checked as vm.conf's `cpu`
/// statement is (the same rules, from `cpumodel`), with the same messages:
/// a field out of its bounds is a 400, a family and model that do not go
/// together (which the schema cannot say) a 422.
fn cpu_model(base: &vmconf::CpuModel, req: &CpuRequest) -> Result<vmconf::CpuModel, Error> {
    let mut cpu = base.clone();
    if let Some(v) = &req.vendor {
        let parsed = cpumodel::parse_vendor(v).map_err(|e| {
            Error::BadRequest(format!("invalid cpu vendor: {} ({e})", quote_key(v)))
        })?;
        cpu.vendor = Some(cpumodel::vendor_str(&parsed));
    }
    let number = |n: Option<u32>, what: &str, check: fn(u32) -> Result<u32, String>| {
        n.map(|n| check(n).map_err(|e| Error::BadRequest(format!("invalid cpu {what}: {n} ({e})"))))
            .transpose()
    };
    if let Some(f) = number(req.family, "family", cpumodel::check_family)? {
        cpu.family = Some(f);
    }
    if let Some(m) = number(req.model, "model", cpumodel::check_model)? {
        cpu.model = Some(m);
    }
    if let Some(s) = number(req.stepping, "stepping", cpumodel::check_stepping)? {
        cpu.stepping = Some(s);
    }
    if let Some(names) = &req.hide {
        cpu.hide.clear();
        for name in names {
            if cpumodel::feature(name).is_none() {
                return Err(Error::BadRequest(format!(
                    "unknown cpu feature: {} (known: {})",
                    quote_key(name),
                    cpumodel::feature_names()
                )));
            }
            if !cpu.hide.contains(name) {
                cpu.hide.push(name.clone());
            }
        }
    }
    if let (Some(family), Some(model)) = (cpu.family, cpu.model) {
        let vendor = cpu
            .vendor
            .as_deref()
            .and_then(|v| cpumodel::parse_vendor(v).ok());
        cpumodel::check_signature(vendor.as_ref(), family, model).map_err(Error::Unprocessable)?;
    }
    Ok(cpu)
}

fn check_instance_overrides(parent: &vmconf::VmDef, req: &StartRequest) -> Result<(), Error> {
    use vmconf::InstanceOption as O;
    let asks = [
        // The CPU model suits the kernel, so it goes with `boot` (as in vm.conf).
        (
            req.kernel.is_some()
                || req.initrd.is_some()
                || req.cmdline.is_some()
                || req.cpu.is_some(),
            O::Boot,
        ),
        (req.memory.is_some(), O::Memory),
        (req.cpus.is_some(), O::Cpus),
        (!req.disks.is_empty(), O::Disk),
        (req.cdrom.is_some(), O::Cdrom),
        (req.boot_device.is_some(), O::Boot),
        (
            req.interfaces.is_some() || req.local_interface || !req.switches.is_empty(),
            O::Interface,
        ),
    ];
    for (asked, opt) in asks {
        if asked && !parent.allows(opt) {
            return Err(Error::Forbidden(format!(
                "vm {}: instances may not change {}",
                parent.name,
                opt.keyword()
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/vms/{id}/stop", request_body = StopRequest,
    params(("id" = String, Path, description = "VM number or name")),
    responses((status = 200, body = VmStatus, description = "the VM, stopping (stopped with `wait`)"),
              (status = 400, body = api::v1::Error, description = "the body or path does not fit this document"), (status = 403, body = api::v1::Error, description = "not permitted (root, or the VM's owner)"), (status = 404, body = api::v1::Error, description = "no such VM"),
              (status = 409, body = api::v1::Error, description = "the VM is not running, or its process refused"), (status = 502, body = api::v1::Error, description = "the VM process failed or did not answer")))]
async fn stop(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(key): Path<String>,
    b: Bytes,
) -> ApiResult<VmStatus> {
    let req: StopRequest = body(&b)?;
    let d = &app.daemon;
    let id = controllable(d, &peer, &key)?;
    let grace = d
        .lock()
        .vms
        .get(&id)
        .map(|vm| vm.def.grace_secs)
        .ok_or_else(|| no_vm(&key))?;
    let stop = Request::Stop {
        force: req.force,
        grace_secs: grace,
    };
    let r = match d.request(id, stop).await {
        // It ended before it could answer (-f powers off at once; or the
        // guest was going down anyway): stopped, as asked.
        Err(Error::VmProcess(m)) if m == crate::vmproc::EXITED => Reply::Ok,
        r => r?,
    };
    expect_ok(r)?;
    if !req.force {
        d.set_state(id, VmState::Stopping);
    }
    if req.wait {
        return Ok(Json(d.wait_stopped(id).await?));
    }
    Ok(Json(status_of(d, id)?))
}

async fn pause_or_resume(app: &App, peer: &Peer, key: &str, pause: bool) -> ApiResult<VmStatus> {
    let d = &app.daemon;
    let id = controllable(d, peer, key)?;
    let req = if pause {
        Request::Pause
    } else {
        Request::Resume
    };
    expect_ok(vm_request(d, id, req).await?)?;
    d.set_state(
        id,
        if pause {
            VmState::Paused
        } else {
            VmState::Running
        },
    );
    Ok(Json(status_of(d, id)?))
}

#[utoipa::path(post, path = "/v1/vms/{id}/pause", params(("id" = String, Path, description = "VM number or name")),
    responses((status = 200, body = VmStatus, description = "the VM, paused"), (status = 400, body = api::v1::Error, description = "the path does not decode (`%FF`)"), (status = 403, body = api::v1::Error, description = "not permitted (root, or the VM's owner)"), (status = 404, body = api::v1::Error, description = "no such VM"),
              (status = 409, body = api::v1::Error, description = "the VM is not running, or already paused"), (status = 502, body = api::v1::Error, description = "the VM process failed or did not answer")))]
async fn pause(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(key): Path<String>,
) -> ApiResult<VmStatus> {
    pause_or_resume(&app, &peer, &key, true).await
}

#[utoipa::path(post, path = "/v1/vms/{id}/unpause", params(("id" = String, Path, description = "VM number or name")),
    responses((status = 200, body = VmStatus, description = "the VM, running"), (status = 400, body = api::v1::Error, description = "the path does not decode (`%FF`)"), (status = 403, body = api::v1::Error, description = "not permitted (root, or the VM's owner)"), (status = 404, body = api::v1::Error, description = "no such VM"),
              (status = 409, body = api::v1::Error, description = "the VM is not running, or not paused"), (status = 502, body = api::v1::Error, description = "the VM process failed or did not answer")))]
async fn unpause(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(key): Path<String>,
) -> ApiResult<VmStatus> {
    pause_or_resume(&app, &peer, &key, false).await
}

/// A long poll: waits until the VM is not running (`vmctl wait`).
///
/// The answer comes when the VM's process has ended, at once if it is not
/// running, however long that takes: the control socket times out idle
/// connections and slow requests, never an answer being waited for. A
/// client that gives up closes the connection.
#[utoipa::path(get, path = "/v1/vms/{id}/wait", params(("id" = String, Path, description = "VM number or name")),
    responses((status = 200, body = VmStatus, description = "the VM, no longer running"), (status = 400, body = api::v1::Error, description = "the path does not decode (`%FF`)"),
              (status = 404, body = api::v1::Error, description = "no such VM, or it was removed (by a reload) while waited for")))]
async fn wait(State(app): State<App>, Path(key): Path<String>) -> ApiResult<VmStatus> {
    let id = lookup(&app.daemon, &key)?;
    Ok(Json(app.daemon.wait_stopped(id).await?))
}

/// VM `key` for a guestinfo request: the same check as stop and pause
/// (root, or the VM's owner), for reading too. Unlike a VM's status,
/// guestinfo is the guest's to say and the owner's to read: guests and
/// provisioning keep addresses, roles and secrets there (cloud-init's
/// VMware data source reads its user data from it).
fn guestinfo_vm(d: &Daemon, peer: &Peer, key: &str) -> Result<u32, Error> {
    controllable(d, peer, key)
}

/// `{id}` and `{key}` of a guestinfo path. A key that does not decode
/// (`%FF`) is a 400 with a JSON message, as every other error, rather
/// than axum's plain text.
fn guestinfo_path(
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), Error> {
    p.map(|Path(v)| v)
        .map_err(|e| Error::BadRequest(format!("bad path: {}", e.body_text())))
}

/// Asks VM `id`'s process. One that ends before it answers (its guest
/// powered off meanwhile, say) was "not running", the same 409 as one
/// that was not running at all.
async fn vm_request(d: &Daemon, id: u32, req: Request) -> Result<Reply, Error> {
    match d.request(id, req).await {
        Err(Error::VmProcess(m)) if m == crate::vmproc::EXITED => {
            let name = d.lock().vms.get(&id).map(|v| v.def.name.clone());
            Err(Error::Conflict(format!(
                "vm {} is not running: its process exited",
                name.unwrap_or_else(|| id.to_string())
            )))
        }
        r => r,
    }
}

fn unexpected(r: Reply) -> Error {
    Error::VmProcess(format!("unexpected answer from the VM process: {r:?}"))
}

/// All guestinfo variables of a running VM. Keys are without the
/// `guestinfo.` prefix the guest writes (`info-set guestinfo.ip ...` is
/// `"ip"`), as VMware's `vmrun readVariable VM guestVar ip` names them:
/// every key has the prefix, so it would say nothing.
#[utoipa::path(get, path = "/v1/vms/{id}/guestinfo",
    params(("id" = String, Path, description = "VM number or name")),
    responses((status = 200, body = std::collections::BTreeMap<String, String>,
               description = "key (without `guestinfo.`) -> value"),
              (status = 400, body = api::v1::Error, description = "the path does not decode (`%FF`)"), (status = 403, body = api::v1::Error, description = "not permitted (root, or the VM's owner)"), (status = 404, body = api::v1::Error, description = "no such VM"),
              (status = 409, body = api::v1::Error, description = "not running, or no guest tools channel"), (status = 502, body = api::v1::Error, description = "the VM process failed or did not answer")))]
async fn guestinfo_list(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(key): Path<String>,
) -> ApiResult<Guestinfo> {
    let d = &app.daemon;
    let id = guestinfo_vm(d, &peer, &key)?;
    match vm_request(d, id, Request::GuestinfoList).await? {
        Reply::Guestinfo { vars } => Ok(Json(vars)),
        Reply::Error { message } => Err(Error::Conflict(message)),
        other => Err(unexpected(other)),
    }
}

/// One guestinfo variable. `{key}` is without the `guestinfo.` prefix (a
/// prefix given is removed); 404 when the variable is not set.
#[utoipa::path(get, path = "/v1/vms/{id}/guestinfo/{key}",
    params(("id" = String, Path, description = "VM number or name"),
           ("key" = String, Path, description = "variable name, without `guestinfo.` (a prefix given is removed); at most 4096 characters, none of them a control character, a space or `/`",
            min_length = 1, max_length = 4096,
            pattern = "^(?!guestinfo\\.$)(?!guestinfo\\.guestinfo\\.)[^\\u0000-\\u001f\\u007f-\\u009f /]+$")),
    responses((status = 200, body = GuestinfoValue, description = "the variable's value"),
              (status = 400, body = api::v1::Error, description = "the key or path does not fit this document"), (status = 403, body = api::v1::Error, description = "not permitted (root, or the VM's owner)"),
              (status = 404, body = api::v1::Error, description = "no such VM, or the variable is not set"),
              (status = 409, body = api::v1::Error, description = "not running, or no guest tools channel"), (status = 502, body = api::v1::Error, description = "the VM process failed or did not answer")))]
async fn guestinfo_get(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<GuestinfoValue> {
    let (vm, key) = guestinfo_path(path)?;
    let d = &app.daemon;
    let id = guestinfo_vm(d, &peer, &vm)?;
    let key = api::v1::guestinfo_path_key(&key).map_err(Error::BadRequest)?;
    let req = Request::GuestinfoGet { key: key.into() };
    match vm_request(d, id, req).await? {
        Reply::GuestinfoValue { value: Some(value) } => Ok(Json(GuestinfoValue { value })),
        Reply::GuestinfoValue { value: None } => {
            let name = d.lock().vms.get(&id).map(|v| v.def.name.clone());
            Err(Error::NotFound(format!(
                "vm {}: guestinfo.{key} is not set",
                name.unwrap_or_else(|| id.to_string())
            )))
        }
        Reply::Error { message } => Err(Error::Conflict(message)),
        other => Err(unexpected(other)),
    }
}

/// Sets a guestinfo variable the guest reads with `info-get
/// guestinfo.KEY` (VMware's `vmrun writeVariable VM guestVar KEY VALUE`).
/// There is no delete: as with VMware's tools, an empty value clears one.
/// Key and value together are at most 65516 bytes, what the guest's own
/// `info-set` can store (`api::v1::GUESTINFO_MAX_KEY_VALUE`); the VM's
/// store holds at most 128 variables and 1 MiB (409 beyond that).
#[utoipa::path(put, path = "/v1/vms/{id}/guestinfo/{key}", request_body = GuestinfoValue,
    params(("id" = String, Path, description = "VM number or name"),
           ("key" = String, Path, description = "variable name, without `guestinfo.` (a prefix given is removed); at most 4096 characters, none of them a control character, a space or `/`",
            min_length = 1, max_length = 4096,
            pattern = "^(?!guestinfo\\.$)(?!guestinfo\\.guestinfo\\.)[^\\u0000-\\u001f\\u007f-\\u009f /]+$")),
    responses((status = 200, body = GuestinfoValue, description = "the value now set"),
              (status = 400, body = api::v1::Error, description = "the key, body or path does not fit this document"), (status = 403, body = api::v1::Error, description = "not permitted (root, or the VM's owner)"), (status = 404, body = api::v1::Error, description = "no such VM"),
              (status = 409, body = api::v1::Error, description = "not running, no guest tools channel, or the store is full"),
              (status = 422, body = api::v1::Error, description = "key and value together are over 65516 bytes"), (status = 502, body = api::v1::Error, description = "the VM process failed or did not answer")))]
async fn guestinfo_set(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    path: Result<Path<(String, String)>, PathRejection>,
    b: Bytes,
) -> ApiResult<GuestinfoValue> {
    let (vm, key) = guestinfo_path(path)?;
    let d = &app.daemon;
    let id = guestinfo_vm(d, &peer, &vm)?;
    let key = api::v1::guestinfo_path_key(&key).map_err(Error::BadRequest)?;
    // No defaults here: an empty body is not an empty value.
    let req: GuestinfoValue = serde_json::from_slice(&b)
        .map_err(|e| Error::BadRequest(format!("bad request body: {e}")))?;
    // The schema says no NUL and at most GUESTINFO_MAX_KEY_VALUE - 1
    // characters; key and value too long together is beyond it.
    if req.value.contains('\0') {
        return Err(Error::BadRequest(
            "guestinfo value may not contain a NUL character".into(),
        ));
    }
    if req
        .value
        .chars()
        .nth(api::v1::GUESTINFO_MAX_KEY_VALUE - 1)
        .is_some()
    {
        return Err(Error::BadRequest(format!(
            "guestinfo value is too long: more than {} characters",
            api::v1::GUESTINFO_MAX_KEY_VALUE - 1
        )));
    }
    api::v1::check_guestinfo_value(key, &req.value).map_err(Error::Unprocessable)?;
    let set = Request::GuestinfoSet {
        key: key.into(),
        value: req.value.clone(),
    };
    expect_ok(vm_request(d, id, set).await?)?;
    Ok(Json(req))
}

/// Loads a configuration file; the enabled VMs it adds are started, as
/// at daemon start.
fn load_config(d: &Arc<Daemon>, path: &std::path::Path, replace: bool) -> ConfigResult {
    let opts = vmconf::Options {
        macros: d.macros.clone(),
    };
    match vmconf::parse_file(path, &opts) {
        Ok(cfg) => {
            let (vms, added) = d.apply(cfg, replace);
            configure_switches(d);
            for id in added {
                if d.lock().vms.get(&id).is_some_and(|v| v.def.enabled) {
                    let d = d.clone();
                    tokio::spawn(async move {
                        if let Err(e) = d.start(id).await {
                            tracing::error!("{}", e.message());
                        }
                    });
                }
            }
            ConfigResult {
                errors: Vec::new(),
                vms,
            }
        }
        Err(diags) => ConfigResult {
            errors: diags.iter().map(|e| e.to_string()).collect(),
            vms: d.lock().vms.values().map(|v| v.def.name.clone()).collect(),
        },
    }
}

/// `vmctl reset switches`: the `switch` blocks are read again from the
/// configuration file and applied (bridges created where missing, up or
/// down, groups); VMs and their definitions are left alone.
async fn reset_switches(d: &Arc<Daemon>) -> Result<String, Error> {
    let opts = vmconf::Options {
        macros: d.macros.clone(),
    };
    // The daemon's own file has errors: nothing the request could change.
    let cfg = vmconf::parse_file(&d.config_path, &opts).map_err(|diags| {
        let lines: Vec<String> = diags.iter().map(|e| e.to_string()).collect();
        Error::Conflict(lines.join("\n"))
    })?;
    let n = cfg.switches.iter().filter(|s| s.enabled).count();
    d.lock().switches = cfg.switches.clone();
    let errors = d.net.configure_switches(&cfg.switches).await;
    if errors.is_empty() {
        Ok(format!("reset {n} switches"))
    } else {
        Err(Error::Internal(errors.join("; ")))
    }
}

/// Sets up the configuration's switches in the background, logging what
/// fails (at start and after a reload or load).
pub fn configure_switches(d: &Arc<Daemon>) {
    let switches = d.lock().switches.clone();
    if switches.is_empty() {
        return;
    }
    let d = d.clone();
    tokio::spawn(async move {
        for e in d.net.configure_switches(&switches).await {
            tracing::error!("{e}");
        }
    });
}

/// Reloads the configuration file (SIGHUP, `vmctl reload`).
pub fn reload(d: &Arc<Daemon>) -> ConfigResult {
    let r = load_config(d, &d.config_path, true);
    for e in &r.errors {
        tracing::error!("{e}");
    }
    if r.errors.is_empty() {
        tracing::info!("configuration reloaded: {} vms", r.vms.len());
    }
    r
}

#[utoipa::path(post, path = "/v1/config/load", request_body = LoadRequest,
    responses((status = 200, body = ConfigResult, description = "loaded, or the file's errors (then nothing changed)"),
              (status = 400, body = api::v1::Error, description = "the request does not fit this document"), (status = 403, body = api::v1::Error, description = "not root")))]
async fn load(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    b: Bytes,
) -> ApiResult<ConfigResult> {
    root_only(&peer, "load")?;
    let req: LoadRequest = body(&b)?;
    Ok(Json(load_config(
        &app.daemon,
        std::path::Path::new(&req.path),
        false,
    )))
}

#[utoipa::path(post, path = "/v1/config/reload",
    responses((status = 200, body = ConfigResult, description = "reloaded, or the file's errors (then nothing changed)"),
              (status = 403, body = api::v1::Error, description = "not root")))]
async fn reload_handler(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> ApiResult<ConfigResult> {
    root_only(&peer, "reload")?;
    Ok(Json(reload(&app.daemon)))
}

#[utoipa::path(post, path = "/v1/reset", request_body = ResetRequest,
    responses((status = 200, body = Message, description = "what was reset"), (status = 400, body = api::v1::Error, description = "the request does not fit this document"), (status = 403, body = api::v1::Error, description = "not root"),
              (status = 409, body = api::v1::Error, description = "switches: the configuration file has errors (each `file:line: message`)"),
              (status = 500, body = api::v1::Error, description = "switches: a bridge could not be set up")))]
async fn reset(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    b: Bytes,
) -> ApiResult<Message> {
    root_only(&peer, "reset")?;
    let req: ResetRequest = body(&b)?;
    let mut stopped = 0;
    if matches!(req.what, ResetWhat::All | ResetWhat::Vms) {
        let running: Vec<u32> = app
            .daemon
            .lock()
            .vms
            .values()
            .filter(|v| v.running())
            .map(|v| v.id)
            .collect();
        for id in running {
            if app
                .daemon
                .request(
                    id,
                    Request::Stop {
                        force: true,
                        grace_secs: 0,
                    },
                )
                .await
                .is_ok()
            {
                stopped += 1;
            }
        }
    }
    let mut switches = String::new();
    if matches!(req.what, ResetWhat::All | ResetWhat::Switches) {
        switches = reset_switches(&app.daemon).await?;
    }
    let message = match req.what {
        ResetWhat::Vms => format!("terminated {stopped} vms"),
        ResetWhat::Switches => switches,
        ResetWhat::All => format!("terminated {stopped} vms; {switches}"),
    };
    Ok(Json(Message { message }))
}

#[utoipa::path(post, path = "/v1/log", request_body = LogRequest,
    responses((status = 200, body = Message, description = "the level now"), (status = 400, body = api::v1::Error, description = "the request does not fit this document"), (status = 403, body = api::v1::Error, description = "not root")))]
async fn log_level(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    b: Bytes,
) -> ApiResult<Message> {
    root_only(&peer, "log")?;
    let req: LogRequest = body(&b)?;
    let verbose = req.level == LogLevel::Verbose;
    (app.set_verbose)(verbose);
    Ok(Json(Message {
        message: format!("logging {}", if verbose { "verbose" } else { "brief" }),
    }))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vmd control API",
        description = "Control of vmd, the virtual machine daemon, over its Unix socket."
    ),
    paths(
        list,
        show,
        start,
        stop,
        pause,
        unpause,
        wait,
        guestinfo_list,
        guestinfo_get,
        guestinfo_set,
        load,
        reload_handler,
        reset,
        log_level
    ),
    components(schemas(
        VmStatus,
        api::v1::DiskStatus,
        api::v1::InterfaceStatus,
        api::v1::GuestNic,
        VmState,
        StartRequest,
        CpuRequest,
        StopRequest,
        LoadRequest,
        ConfigResult,
        ResetRequest,
        ResetWhat,
        LogRequest,
        LogLevel,
        GuestinfoValue,
        Message,
        api::v1::Error
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document vmd serves: [`ApiDoc`] with the bounds that come
/// from vmd's own rules (vmconf's, cpumodel's) written into its schemas,
/// so that the document refuses what the handlers refuse.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    let no_control = "[^\\u0000-\\u001f\\u007f-\\u009f]";
    let set = |doc: &mut serde_json::Value, at: &str, value: serde_json::Value| {
        let slot = doc
            .pointer_mut(at)
            .unwrap_or_else(|| panic!("the document has {at}"));
        *slot = value;
    };
    let start = "/components/schemas/StartRequest/properties";
    set(
        &mut doc,
        &format!("{start}/memory/minimum"),
        vmconf::MIN_MEMORY.into(),
    );
    set(&mut doc, &format!("{start}/cpus/maximum"), MAX_VCPUS.into());
    set(
        &mut doc,
        &format!("{start}/disks/maxItems"),
        vmconf::MAX_DISKS.into(),
    );
    set(
        &mut doc,
        &format!("{start}/disks/items"),
        serde_json::json!({
            "type": "string",
            "pattern": format!("^((raw|qcow2):)?/{no_control}*$"),
        }),
    );
    set(
        &mut doc,
        &format!("{start}/switches/maxItems"),
        vmconf::MAX_INTERFACES.into(),
    );
    set(
        &mut doc,
        &format!("{start}/switches/items"),
        serde_json::json!({"type": "string", "pattern": format!("^{no_control}+$")}),
    );
    set(
        &mut doc,
        &format!("{start}/interfaces/maximum"),
        vmconf::MAX_INTERFACES.into(),
    );
    let features: Vec<&str> = cpumodel::FEATURES.iter().map(|f| f.name).collect();
    set(
        &mut doc,
        "/components/schemas/CpuRequest/properties/hide/items",
        serde_json::json!({"type": "string", "enum": features}),
    );
    let cpu = "/components/schemas/CpuRequest/properties";
    for (what, min, max) in [
        ("family", cpumodel::FAMILY_MIN, cpumodel::FAMILY_MAX),
        ("model", 0, cpumodel::MODEL_MAX),
        ("stepping", 0, cpumodel::STEPPING_MAX),
    ] {
        set(&mut doc, &format!("{cpu}/{what}/minimum"), min.into());
        set(&mut doc, &format!("{cpu}/{what}/maximum"), max.into());
    }
    doc
}

async fn openapi() -> Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(document).clone())
}

async fn not_found() -> Error {
    Error::NotFound("no such endpoint; see /openapi.json".into())
}

/// Middleware: every error is answered with an `api::v1::Error` body.
/// What axum answers by itself comes as plain text or nothing (a 405 for
/// a method a path does not have, a 400 for a path that does not decode);
/// its text becomes the message, and its headers stay.
async fn json_errors(resp: Response) -> Response {
    use axum::http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
    let status = resp.status();
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let mut error = text.trim().to_owned();
    if error.is_empty() {
        error = status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        // axum adds `Allow` after this layer.
        error = "method not allowed (the Allow header lists this path's)".into();
    }
    let body = serde_json::to_vec(&api::v1::Error { error }).expect("serialises");
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, axum::body::Body::from(body))
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/v1/vms", get(list).post(start))
        .route("/v1/vms/{id}", get(show))
        .route("/v1/vms/{id}/stop", post(stop))
        .route("/v1/vms/{id}/pause", post(pause))
        .route("/v1/vms/{id}/unpause", post(unpause))
        .route("/v1/vms/{id}/wait", get(wait))
        .route("/v1/vms/{id}/guestinfo", get(guestinfo_list))
        .route(
            "/v1/vms/{id}/guestinfo/{key}",
            get(guestinfo_get).put(guestinfo_set),
        )
        .route("/v1/config/load", post(load))
        .route("/v1/config/reload", post(reload_handler))
        .route("/v1/reset", post(reset))
        .route("/v1/log", post(log_level))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(app)
}
