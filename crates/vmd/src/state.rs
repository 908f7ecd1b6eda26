//! The daemon's state: the VMs it knows (from vm.conf or started ad hoc),
//! their processes, and what their guests reported.
//!
//! One std mutex guards it; it is never held across an await, so API
//! handlers, VM process events and exits serialise cleanly.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use api::v1::{VmState, VmStatus};
use api::vmproc::{Event, Guest, Request};
use tokio::sync::watch;
use vmconf::{Config, Globals, Owner, Switch, VmDef};

use crate::auth;
use crate::cgroup::Cgroups;
use crate::net::HostNet;
use crate::persist::{self, Record, StateDir};
use crate::vmproc::{self, Sink, VmProc};

pub struct Vm {
    pub id: u32,
    pub def: VmDef,
    /// Defined in vm.conf (else started ad hoc: it stays listed, stopped,
    /// after its process ends, and may be started again).
    pub configured: bool,
    pub state: VmState,
    pub tty: Option<String>,
    pub guest: Guest,
    /// When `guest` came: its uptime counts on from there.
    guest_at: Option<std::time::Instant>,
    pub last_exit: Option<String>,
    /// How the running process says the VM ended, until it is reaped.
    exit_reason: Option<String>,
    pub proc: Option<Arc<VmProc>>,
    /// Disk formats as decided at the last start (see `vmm_args`).
    pub disk_formats: Vec<String>,
    /// The network interfaces of the running VM (taps, MACs, addresses).
    pub interfaces: Vec<api::v1::InterfaceStatus>,
    /// Bumped on every state change; `wait` and `start` watch it.
    pub changed: watch::Sender<u64>,
    /// When its process's RSS was last read, for which pid, and what it was.
    rss_read: std::cell::Cell<Option<(std::time::Instant, u32, u64)>>,
    /// It came up at least once (an ad-hoc VM that never did is removed
    /// when its start fails).
    pub has_run: bool,
    /// Files an unprivileged user named for this VM (an instance he
    /// started), which its process opens with his rights at every start.
    pub user_files: Option<UserFiles>,
    /// Its process's start time and program name (see `persist::Record`).
    proc_start: Option<u64>,
    proc_comm: Option<String>,
    /// Its running process's cgroups (see `cgroup`), removed when it exits.
    cgroups: Vec<PathBuf>,
}

/// Which of a VM's files a user other than root named, and who he is:
/// the VM process (root) opens them with his rights (`vmm --open-as`), so
/// he reaches through the VM only what he could open himself, base images
/// and directories on the way included, as OpenBSD's vmd checks them
/// (`vm_checkaccess`) on descriptors it opened.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserFiles {
    pub uid: u32,
    pub gid: u32,
    pub kernel: bool,
    pub initrd: bool,
    pub disks: bool,
    pub cdrom: bool,
}

impl UserFiles {
    /// vmm's `--open-as` and `--user-files` arguments: the user's groups
    /// as they are now.
    fn vmm_args(&self) -> [String; 2] {
        let mut groups = auth::user_groups(self.uid);
        groups.sort_unstable();
        groups.dedup();
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        let which: Vec<&str> = [
            (self.kernel, "kernel"),
            (self.initrd, "initrd"),
            (self.disks, "disks"),
            (self.cdrom, "cdrom"),
        ]
        .iter()
        .filter(|w| w.0)
        .map(|w| w.1)
        .collect();
        [
            format!("--open-as={}:{}:{}", self.uid, self.gid, groups.join(",")),
            format!("--user-files={}", which.join(",")),
        ]
    }
}

/// The state of a VM without a process: `disable`d configured VMs show
/// as disabled, all others as stopped.
fn idle_state(def: &VmDef, configured: bool) -> VmState {
    if def.enabled || !configured {
        VmState::Stopped
    } else {
        VmState::Disabled
    }
}

impl Vm {
    fn new(id: u32, def: VmDef, configured: bool) -> Vm {
        Vm {
            id,
            state: idle_state(&def, configured),
            def,
            configured,
            tty: None,
            guest: Guest::default(),
            guest_at: None,
            last_exit: None,
            exit_reason: None,
            proc: None,
            disk_formats: Vec::new(),
            interfaces: Vec::new(),
            changed: watch::channel(0).0,
            has_run: false,
            rss_read: std::cell::Cell::new(None),
            user_files: None,
            proc_start: None,
            proc_comm: None,
            cgroups: Vec::new(),
        }
    }

    pub fn running(&self) -> bool {
        self.proc.is_some()
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn owner_string(&self) -> String {
        self.def
            .owner
            .as_ref()
            .map(|o| o.to_string())
            .unwrap_or_else(|| "root".into())
    }

    pub fn status(&self) -> VmStatus {
        let pid = self.proc.as_ref().map(|p| p.pid);
        VmStatus {
            id: self.id,
            name: self.def.name.clone(),
            pid,
            vcpus: self.def.cpus,
            maxmem: self.def.memory,
            curmem: pid.map_or(0, |pid| self.rss(pid)),
            tty: self.tty.clone(),
            owner: self.owner_string(),
            state: self.state,
            hostname: self.guest.hostname.clone().filter(|_| self.running()),
            ip: self.guest.ip.clone().filter(|_| self.running()),
            tools: self.running() && self.guest.tools,
            last_exit: self.last_exit.clone(),
            disks: self
                .def
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| api::v1::DiskStatus {
                    path: d.path.display().to_string(),
                    format: d
                        .format
                        .map(|f| f.to_string())
                        .or_else(|| self.disk_formats.get(i).cloned()),
                })
                .collect(),
            cdrom: self.def.cdrom.as_ref().map(|c| c.display().to_string()),
            interfaces: if self.running() {
                self.interfaces.clone()
            } else {
                Vec::new()
            },
            os: self.guest.os_name.clone().filter(|_| self.running()),
            uptime_secs: self
                .guest
                .uptime_secs
                .zip(self.guest_at)
                .filter(|_| self.running())
                .map(|(up, at)| up.saturating_add(at.elapsed().as_secs())),
            nics: if self.running() {
                self.guest.nics.clone()
            } else {
                Vec::new()
            },
        }
    }
}

impl Vm {
    /// Its process's resident memory, read at most once a second: a
    /// status request lists every VM, and under `BENCH R7` (1000 requests
    /// a second, 50 VMs) reading each one's `statm` every time, under the
    /// daemon's lock, quadrupled the daemon's CPU time per request.
    fn rss(&self, pid: u32) -> u64 {
        let now = std::time::Instant::now();
        match self.rss_read.get() {
            Some((at, pid_then, bytes)) if pid_then == pid && now.duration_since(at) < RSS_AGE => {
                bytes
            }
            _ => {
                let bytes = rss(pid);
                self.rss_read.set(Some((now, pid, bytes)));
                bytes
            }
        }
    }
}

/// How old a VM's `curmem` may be.
const RSS_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Resident memory of a process, bytes (0 if unknown). From `statm`, not
/// `status`: a status request reads it for every VM, and the kernel makes
/// `statm` from a few counters where `status` formats forty lines.
fn rss(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/statm")) else {
        return 0;
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    s.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

pub struct Inner {
    pub vms: BTreeMap<u32, Vm>,
    next_id: u32,
    pub globals: Globals,
    /// The `switch` blocks of the configuration.
    pub switches: Vec<Switch>,
}

impl Inner {
    /// A VM by name only.
    fn find_name(&self, name: &str) -> Option<u32> {
        self.vms.values().find(|v| v.def.name == name).map(|v| v.id)
    }

    /// A VM by number or name.
    pub fn find(&self, key: &str) -> Option<u32> {
        if let Ok(id) = key.parse::<u32>() {
            if self.vms.contains_key(&id) {
                return Some(id);
            }
        }
        self.vms.values().find(|v| v.def.name == key).map(|v| v.id)
    }

    /// Refuses to start VM `id` while another running (or starting) VM
    /// uses one of its disks: the message names that VM. (The VM process
    /// also locks each image, which catches other programs and vmds.)
    pub fn check_disks_free(&self, id: u32) -> Result<(), Error> {
        let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let Some(vm) = self.vms.get(&id) else {
            return Ok(());
        };
        for d in &vm.def.disks {
            let path = canon(&d.path);
            let holder = self.vms.values().find(|o| {
                o.id != id
                    && (o.running() || o.state == VmState::Starting)
                    && o.def.disks.iter().any(|od| canon(&od.path) == path)
            });
            if let Some(o) = holder {
                return Err(Error::Conflict(format!(
                    "disk {} is in use by vm {}",
                    d.path.display(),
                    o.def.name
                )));
            }
        }
        Ok(())
    }
}

pub struct Daemon {
    inner: Mutex<Inner>,
    /// Bridges and taps on the host.
    pub net: HostNet,
    pub vmm: PathBuf,
    pub config_path: PathBuf,
    pub macros: Vec<(String, String)>,
    /// VM N's process is confined as uid and gid this + N; 0: not at all.
    pub vm_uid_base: u32,
    /// Where running VMs are recorded for the next vmd.
    pub state: StateDir,
    /// The cgroups VM processes are limited in.
    pub cgroups: Arc<Cgroups>,
    /// The network namespace confined VM processes join (see `netns`);
    /// none: VM processes are not confined, or each makes its own.
    vm_netns: Option<OwnedFd>,
    /// The mount namespace with the empty root confined VM processes copy
    /// (see `jail`); none: VM processes are not confined, or each makes
    /// its own.
    vm_root: Option<OwnedFd>,
    /// Starts confined VM processes in PID namespaces of their own (see
    /// `pidns`); none: each forks into one itself.
    pidns: Option<crate::pidns::Spawner>,
}

/// The first of the ids VM processes run as (VM N as this + N): far above
/// the ranges accounts, systemd's dynamic users and containers use, and
/// below 2^31 for tools that read ids as signed.
pub const DEFAULT_VM_UID_BASE: u32 = 0x7f00_0000;

#[derive(Debug)]
pub enum Error {
    NotFound(String),
    Forbidden(String),
    Conflict(String),
    BadRequest(String),
    /// The request fits the API's schema, but what it names cannot be
    /// used: a file that is not there, a switch that is not configured,
    /// interfaces that cannot be set up (422).
    Unprocessable(String),
    /// The VM process failed: it ended before its VM was built, did not
    /// come up, or did not answer (502).
    VmProcess(String),
    Internal(String),
}

impl Error {
    pub fn message(&self) -> &str {
        match self {
            Error::NotFound(m)
            | Error::Forbidden(m)
            | Error::Conflict(m)
            | Error::BadRequest(m)
            | Error::Unprocessable(m)
            | Error::VmProcess(m)
            | Error::Internal(m) => m,
        }
    }
}

impl Daemon {
    pub fn new(
        cfg: Config,
        vmm: PathBuf,
        config_path: PathBuf,
        macros: Vec<(String, String)>,
        vm_uid_base: u32,
        state: StateDir,
        cgroups: Arc<Cgroups>,
    ) -> Arc<Daemon> {
        let mut inner = Inner {
            vms: BTreeMap::new(),
            next_id: 1,
            globals: cfg.globals.clone(),
            switches: cfg.switches.clone(),
        };
        for def in cfg.vms {
            let id = inner.next_id;
            inner.next_id += 1;
            inner.vms.insert(id, Vm::new(id, def, true));
        }
        // What the VM processes it confines share: one network namespace,
        // the empty root each copies, and a thread that starts each in a
        // PID namespace of its own. Each only saves work: where the kernel
        // refuses one, each VM process does that part itself (logged once).
        fn or_else<T>(made: Result<T, String>, what: &str, instead: &str) -> Option<T> {
            made.map_err(|e| tracing::warn!("{what} ({e}): {instead}"))
                .ok()
        }
        let (vm_netns, vm_root, pidns) = match vm_uid_base {
            0 => (None, None, None),
            _ => (
                or_else(
                    crate::netns::make(),
                    "no network namespace for VM processes to share",
                    "each makes its own",
                ),
                or_else(
                    jail::make(),
                    "no empty root for VM processes to copy",
                    "each makes its own",
                ),
                or_else(
                    crate::pidns::Spawner::start(),
                    "cannot start VM processes in PID namespaces",
                    "each forks into one",
                ),
            ),
        };
        Arc::new(Daemon {
            inner: Mutex::new(inner),
            net: HostNet::default(),
            vmm,
            config_path,
            macros,
            vm_uid_base,
            state,
            cgroups,
            vm_netns,
            vm_root,
            pidns,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn globals(&self) -> Globals {
        self.lock().globals.clone()
    }

    /// Applies a (re)loaded configuration: new VMs are added, stopped ones
    /// take their new definition, running ones keep theirs until they
    /// stop, and stopped VMs the file no longer defines are forgotten.
    /// `replace`: the file is the whole configuration (reload); else it
    /// adds to it (load). Returns the names defined now and the ids of
    /// the VMs added (which the caller starts if enabled).
    pub fn apply(&self, cfg: Config, replace: bool) -> (Vec<String>, Vec<u32>) {
        let mut added = Vec::new();
        let mut g = self.lock();
        if replace {
            g.globals = cfg.globals.clone();
            g.switches = cfg.switches.clone();
            let names: Vec<&str> = cfg.vms.iter().map(|v| v.name.as_str()).collect();
            // A starting VM has no process yet but is in use all the same.
            g.vms.retain(|_, v| {
                v.running()
                    || v.state == VmState::Starting
                    || !v.configured
                    || names.contains(&v.def.name.as_str())
            });
        } else {
            // `load` adds switches; one it redefines takes the new settings.
            for sw in cfg.switches {
                g.switches.retain(|s| s.name != sw.name);
                g.switches.push(sw);
            }
        }
        for def in cfg.vms {
            match g.find(&def.name) {
                Some(id) => {
                    let vm = g.vms.get_mut(&id).expect("found");
                    vm.configured = true;
                    if !vm.running() {
                        vm.state = idle_state(&def, true);
                        vm.def = def;
                    }
                }
                None => {
                    let id = g.next_id;
                    g.next_id += 1;
                    g.vms.insert(id, Vm::new(id, def, true));
                    added.push(id);
                }
            }
        }
        (g.vms.values().map(|v| v.def.name.clone()).collect(), added)
    }

    /// Adds an ad-hoc VM (vmctl start with -b ...).
    pub fn add_adhoc(&self, def: VmDef, user_files: Option<UserFiles>) -> Result<u32, Error> {
        let mut g = self.lock();
        if g.find(&def.name).is_some() {
            return Err(Error::Conflict(format!("vm {} already exists", def.name)));
        }
        let id = g.next_id;
        g.next_id += 1;
        let mut vm = Vm::new(id, def, false);
        vm.user_files = user_files;
        g.vms.insert(id, vm);
        Ok(id)
    }

    fn vmm_args(def: &VmDef, user_files: Option<&UserFiles>) -> Result<Vec<String>, String> {
        if def.kernel.is_none() && def.disks.is_empty() && def.cdrom.is_none() {
            return Err(format!(
                "vm {}: nothing to boot: give it a kernel, a disk or a cdrom",
                def.name
            ));
        }
        let mut a = vec![
            "-m".to_owned(),
            def.memory.to_string(),
            "-c".to_owned(),
            def.cpus.to_string(),
            "-s".to_owned(),
            "pty".to_owned(),
            "-a".to_owned(),
            def.cmdline
                .clone()
                .unwrap_or_else(|| "console=ttyS0".into()),
        ];
        // Without a kernel the VM process boots the BIOS (or `boot` names
        // a BIOS image, which it recognises), and the BIOS boots the disk
        // or CD-ROM `boot device` names.
        if let Some(kernel) = &def.kernel {
            a.push("-k".into());
            a.push(kernel.display().to_string());
        }
        match def.boot_device {
            Some(vmconf::BootDevice::Cdrom) => a.push("--boot-device=cdrom".into()),
            Some(vmconf::BootDevice::Disk) | None => {}
            Some(vmconf::BootDevice::Net) => {
                return Err(format!("vm {}: boot device net is not supported", def.name))
            }
        }
        if let Some(i) = &def.initrd {
            a.push("-i".into());
            a.push(i.display().to_string());
        }
        for d in &def.disks {
            // The format is decided here, once: from vm.conf, else from the
            // image's first bytes now.
            let format = match d.format {
                Some(vmconf::DiskFormat::Qcow2) => disk::Format::Qcow2,
                Some(vmconf::DiskFormat::Raw) => disk::Format::Raw,
                None => disk::detect(&d.path).map_err(|e| format!("vm {}: disk {e}", def.name))?,
            };
            a.push(format!("--disk={}:{}", format.name(), d.path.display()));
        }
        if let Some(iso) = &def.cdrom {
            a.push(format!("--cdrom={}", iso.display()));
        }
        // Entropy for every VM, as OpenBSD's vmd gives each one viornd(4):
        // a guest should not have to wait for its own. It costs a Linux
        // boot nothing measurable here (33.27 M emulated instructions with
        // it, 33.39 M without) and no thread until a driver uses it.
        a.push("--rng".into());
        if let Some(f) = user_files {
            a.extend(f.vmm_args());
        }
        // `--opt=VALUE`, one argument each: a vendor string may begin with
        // a `-` or hold spaces.
        let cpu = &def.cpu;
        let numbers = [
            ("family", cpu.family),
            ("model", cpu.model),
            ("stepping", cpu.stepping),
        ];
        a.extend(cpu.vendor.iter().map(|v| format!("--cpu-vendor={v}")));
        for (what, n) in numbers {
            a.extend(n.map(|n| format!("--cpu-{what}={n}")));
        }
        if !cpu.hide.is_empty() {
            a.push(format!("--cpu-hide={}", cpu.hide.join(",")));
        }
        Ok(a)
    }

    /// Starts VM `id`'s process and waits until the VM is built (its
    /// console exists) or the process failed. A VM started ad hoc (or an
    /// instance) whose first start fails is removed again, as OpenBSD's vmd
    /// removes it: a failed request leaves nothing behind, and failures
    /// cannot pile up in the daemon.
    pub async fn start(self: &Arc<Self>, id: u32) -> Result<VmStatus, Error> {
        let r = self.start_process(id).await;
        let mut g = self.lock();
        match &r {
            Ok(_) => {
                if let Some(vm) = g.vms.get_mut(&id) {
                    vm.has_run = true;
                }
            }
            Err(_) => {
                let never_ran = g.vms.get(&id).is_some_and(|vm| {
                    !vm.configured && !vm.has_run && !vm.running() && vm.state != VmState::Starting
                });
                if never_ran {
                    g.vms.remove(&id);
                }
            }
        }
        r
    }

    async fn start_process(self: &Arc<Self>, id: u32) -> Result<VmStatus, Error> {
        // Claim the VM under the lock (a second start sees it Starting),
        // then spawn the VM process without holding it: under a burst of
        // starts, spawns and status requests proceed in parallel.
        let (mut args, name, mut changed, def, switches, globals) = {
            let mut g = self.lock();
            let vm = g
                .vms
                .get_mut(&id)
                .ok_or_else(|| Error::NotFound(format!("no vm {id}")))?;
            if vm.running() || vm.state == VmState::Starting {
                return Err(Error::Conflict(format!(
                    "vm {} is already running",
                    vm.def.name
                )));
            }
            let args =
                Self::vmm_args(&vm.def, vm.user_files.as_ref()).map_err(Error::Unprocessable)?;
            g.check_disks_free(id)?;
            let vm = g.vms.get_mut(&id).expect("looked up above");
            vm.disk_formats = args
                .iter()
                .filter_map(|a| a.strip_prefix("--disk=")?.split_once(':'))
                .map(|(format, _)| format.to_owned())
                .collect();
            vm.state = VmState::Starting;
            vm.tty = None;
            vm.guest = Guest::default();
            vm.last_exit = None;
            vm.exit_reason = None;
            vm.interfaces = Vec::new();
            vm.bump();
            let (name, changed, def) =
                (vm.def.name.clone(), vm.changed.subscribe(), vm.def.clone());
            (
                args,
                name,
                changed,
                def,
                g.switches.clone(),
                g.globals.clone(),
            )
        };
        // Its own uid and gid: VM processes cannot signal or trace one
        // another, nor touch anything of root's.
        if self.vm_uid_base != 0 {
            let uid = self.vm_uid_base.checked_add(id).filter(|&u| u < u32::MAX);
            let Some(uid) = uid else {
                let why = format!("vm {name}: no uid left for it above --vm-uid-base");
                self.start_failed(id, &why);
                return Err(Error::Internal(why));
            };
            args.push(format!("--confine={uid}:{uid}"));
        }
        // The taps, opened and configured here (netlink, no daemon lock
        // held) and handed to the VM process as descriptors.
        let mut fds = Vec::new();
        let mut interfaces = Vec::new();
        if !def.interfaces.is_empty() {
            match self.net.prepare(id, &def, &switches, &globals).await {
                Ok(p) => {
                    args.extend(p.args);
                    fds = p.fds;
                    interfaces = p.status;
                }
                Err(why) => {
                    self.start_failed(id, &why);
                    return Err(Error::Unprocessable(why));
                }
            }
        }
        // The socket the VM process listens on for the next vmd, should
        // this one exit without stopping it: the first descriptor it gets.
        let sock = self.state.socket_path(id);
        let _ = std::fs::remove_file(&sock);
        let listener = match std::os::unix::net::UnixListener::bind(&sock) {
            Ok(l) => std::os::fd::OwnedFd::from(l),
            Err(e) => {
                let why = format!("vm {name}: {}: {e}", sock.display());
                self.start_failed(id, &why);
                return Err(Error::Internal(why));
            }
        };
        fds.insert(0, listener);
        args.push("--reattach".into());
        // Its cgroups, with its limits: it enters them before it touches
        // guest memory (the files that move it, after the listener).
        let devices = def.disks.len() + def.interfaces.len();
        let cgroups = match self.cgroups.create(id, def.memory, def.cpus, devices).await {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&sock);
                let why = format!("vm {name}: {e}");
                self.start_failed(id, &why);
                return Err(Error::Internal(why));
            }
        };
        // (Where the taps start among the descriptors.)
        let mut taps_at = 1;
        let cgroups = match cgroups {
            Some(c) => {
                let (paths, movers, kind) = c.into_parts();
                args.push(format!("--cgroups={}", movers.len()));
                args.push(format!("--cgroup-files={}", kind.arg()));
                taps_at += movers.len();
                fds.splice(1..1, movers);
                paths
            }
            None => Vec::new(),
        };
        // The network namespace it joins and the mount namespace it
        // copies, after those (before the taps).
        let shared = [
            (&self.vm_netns, "--netns", "network"),
            (&self.vm_root, "--mntns", "mount"),
        ];
        for (ns, arg, what) in shared {
            let Some(ns) = ns else { continue };
            match ns.try_clone() {
                Ok(ns) => {
                    fds.insert(taps_at, ns);
                    taps_at += 1;
                    args.push(arg.into());
                }
                Err(e) => {
                    self.cgroups.remove(cgroups);
                    let _ = std::fs::remove_file(&sock);
                    let why = format!("vm {name}: its {what} namespace: {e}");
                    self.start_failed(id, &why);
                    return Err(Error::Internal(why));
                }
            }
        }
        let sink: Arc<dyn Sink> = self.clone();
        let spawned =
            vmproc::spawn(&self.vmm, &args, fds, id, &name, sink, self.pidns.as_ref()).await;
        {
            let mut g = self.lock();
            let Some(vm) = g.vms.get_mut(&id) else {
                return Err(Error::Conflict(format!(
                    "vm {name} was removed while starting"
                )));
            };
            vm.interfaces = interfaces;
            match spawned {
                Ok(proc) => {
                    tracing::info!(vm = %name, pid = proc.pid, "starting");
                    // A process that already died has been reaped by now
                    // (`exited` set the state): keep no handle on it.
                    if vm.state != VmState::Stopped && vm.state != VmState::Disabled {
                        vm.cgroups = cgroups;
                        vm.proc_start = persist::start_time(proc.pid);
                        // Its program is known once its VM is built (its
                        // console's path came: maybe already).
                        vm.proc_comm = vm.tty.as_ref().and_then(|_| persist::comm(proc.pid));
                        vm.proc = Some(proc);
                        self.save(vm);
                    } else {
                        self.cgroups.remove(cgroups);
                    }
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&sock);
                    let why = match cgroups.first() {
                        Some(c) => format!(
                            "cannot run {} in cgroup {}: {e}",
                            self.vmm.display(),
                            c.display()
                        ),
                        None => format!("cannot run {}: {e}", self.vmm.display()),
                    };
                    self.cgroups.remove(cgroups);
                    vm.state = idle_state(&vm.def, vm.configured);
                    vm.last_exit = Some(why.clone());
                    vm.bump();
                    return Err(Error::Internal(why));
                }
            }
        }
        let ready = async {
            loop {
                {
                    let g = self.lock();
                    let Some(vm) = g.vms.get(&id) else {
                        return Err(Error::Conflict(format!(
                            "vm {name} was removed while starting"
                        )));
                    };
                    match vm.state {
                        VmState::Starting => {}
                        VmState::Stopped | VmState::Disabled => {
                            let why = vm.last_exit.clone().unwrap_or_else(|| "exited".into());
                            return Err(Error::VmProcess(format!("vm {}: {why}", vm.def.name)));
                        }
                        _ => return Ok(vm.status()),
                    }
                }
                if changed.changed().await.is_err() {
                    return Err(Error::Internal("VM state lost".into()));
                }
            }
        };
        match tokio::time::timeout(START_BOUND, ready).await {
            Ok(r) => r,
            Err(_) => {
                // Not left half-started for ever: the process goes, its
                // exit makes the VM stopped again, with this as the reason.
                let why = format!(
                    "the VM process did not come up within {} s",
                    START_BOUND.as_secs()
                );
                if let Some(p) = self.lock().vms.get(&id).and_then(|v| v.proc.as_ref()) {
                    p.kill(format!("killed: {why}"));
                }
                Err(Error::VmProcess(why))
            }
        }
    }

    /// Writes VM `vm`'s record, if it has a process.
    fn save(&self, vm: &Vm) {
        let (Some(p), Some(start_time)) = (&vm.proc, vm.proc_start) else {
            return;
        };
        self.state.write(&Record {
            id: vm.id,
            name: vm.def.name.clone(),
            pid: p.pid,
            start_time,
            comm: vm.proc_comm.clone(),
            def: vm.def.clone(),
            user_files: vm.user_files.clone(),
            disk_formats: vm.disk_formats.clone(),
            interfaces: vm.interfaces.clone(),
            uid: (self.vm_uid_base != 0).then(|| self.vm_uid_base.saturating_add(vm.id)),
            tty: vm.tty.clone(),
            cgroups: vm.cgroups.clone(),
        });
    }

    /// Re-attaches to the VM processes a previous vmd left running, as
    /// its records in the state directory describe them, before any VM
    /// is started: each keeps its id (a configured VM that has it now
    /// moves to a new one), its definition as started, its console and
    /// its interfaces. A VM that vm.conf no longer defines is listed as
    /// an ad-hoc VM. Records whose process is gone, or whose pid belongs
    /// to another process now, are removed.
    pub async fn adopt(self: &Arc<Self>) {
        let records = self.state.records();
        {
            // Ids a configured VM moves to must not be recorded ones.
            let mut g = self.lock();
            let top = records
                .iter()
                .map(|r| r.id.saturating_add(1))
                .max()
                .unwrap_or(0);
            g.next_id = g.next_id.max(top);
        }
        // Each re-attached VM's state, asked of all at once: a process that
        // does not answer (stopped, say) holds up no other.
        let mut asks = tokio::task::JoinSet::new();
        for rec in records {
            match self.adopt_one(&rec).await {
                Ok(Some(proc)) => {
                    let d = self.clone();
                    asks.spawn(async move { d.ask_state(rec.id, &rec.name, proc).await });
                }
                Ok(None) => {}
                Err(Adopt::Gone(why)) => {
                    tracing::info!(vm = %rec.name, pid = rec.pid, "not re-attached: {why}");
                    self.state.remove(rec.id);
                    self.cgroups.remove_gone(&rec.cgroups);
                }
                Err(Adopt::Failed(why)) => {
                    // It runs, but cannot be reached: its record stays for
                    // a later vmd (or until it is seen gone).
                    tracing::error!(vm = %rec.name, pid = rec.pid, "cannot re-attach: {why}");
                }
            }
        }
        // The cgroups of VMs no vmd saw exit go; those of the running ones
        // (and of one that runs unreachable, its record kept) stay.
        let mut live: std::collections::HashSet<PathBuf> = self
            .state
            .records()
            .into_iter()
            .flat_map(|r| r.cgroups)
            .collect();
        live.extend(self.lock().vms.values().flat_map(|v| v.cgroups.clone()));
        self.cgroups.remove_leftovers(&live);
        // Answers come in milliseconds; one that does not (a stopped
        // process) is waited for in the background, not before serving.
        let all = async { while asks.join_next().await.is_some() {} };
        if tokio::time::timeout(ASK_WAIT, all).await.is_err() {
            tokio::spawn(async move { while asks.join_next().await.is_some() {} });
        }
    }

    /// Asks re-attached VM `id`'s process for its run state and what its
    /// guest reported, which the record does not keep.
    async fn ask_state(&self, id: u32, name: &str, proc: Arc<VmProc>) {
        match proc.request_within(&Request::Status, ATTACH_ANSWER).await {
            Ok(api::vmproc::Reply::Status { state, guest }) => {
                let mut g = self.lock();
                let vm = g
                    .vms
                    .get_mut(&id)
                    .filter(|v| v.proc.as_ref().is_some_and(|p| Arc::ptr_eq(p, &proc)));
                if let Some(vm) = vm {
                    vm.state = match state {
                        api::vmproc::RunState::Running => VmState::Running,
                        api::vmproc::RunState::Paused => VmState::Paused,
                        api::vmproc::RunState::Stopping => VmState::Stopping,
                    };
                    vm.guest = guest;
                    vm.bump();
                }
            }
            Ok(other) => tracing::warn!(vm = %name, "state after re-attaching: {other:?}"),
            Err(e) => tracing::warn!(vm = %name, "state after re-attaching: {e}"),
        }
    }

    /// Re-attaches to the VM `rec` describes: its process, unless it
    /// exited meanwhile (None).
    async fn adopt_one(self: &Arc<Self>, rec: &Record) -> Result<Option<Arc<VmProc>>, Adopt> {
        let pid = rec.pid;
        let same = || persist::start_time(pid) == Some(rec.start_time);
        match persist::start_time(pid) {
            None => return Err(Adopt::Gone("its process is gone".into())),
            Some(_) if !same() => {
                return Err(Adopt::Gone(format!("pid {pid} is another process now")))
            }
            Some(_) => {}
        }
        if let Some(c) = &rec.comm {
            let now = persist::comm(pid).unwrap_or_default();
            if &now != c {
                return Err(Adopt::Gone(format!("pid {pid} runs {now:?}, not {c:?}")));
            }
        }
        let pidfd =
            persist::pidfd_open(pid).map_err(|e| Adopt::Gone(format!("pidfd_open({pid}): {e}")))?;
        // Checked again with the pidfd held: it names the process checked.
        if !same() {
            return Err(Adopt::Gone(format!("pid {pid} is another process now")));
        }
        self.place(rec);
        let sink: Arc<dyn Sink> = self.clone();
        let sock = self.state.socket_path(rec.id);
        let proc = match vmproc::attach(&sock, pid, pidfd, rec.id, &rec.name, sink).await {
            Ok(p) => p,
            Err(why) => {
                let mut g = self.lock();
                if let Some(vm) = g.vms.get_mut(&rec.id) {
                    vm.state = idle_state(&vm.def, vm.configured);
                    vm.last_exit = Some(format!("left running, unreachable: {why}"));
                    vm.bump();
                }
                return Err(Adopt::Failed(why));
            }
        };
        {
            let mut g = self.lock();
            let Some(vm) = g.vms.get_mut(&rec.id) else {
                return Ok(None);
            };
            // Its exit may have been seen already (`exited` made it idle);
            // its console's path may have come (and made it running).
            if matches!(vm.state, VmState::Stopped | VmState::Disabled) {
                return Ok(None);
            }
            if vm.state == VmState::Starting {
                vm.state = VmState::Running;
            }
            vm.proc = Some(proc.clone());
            self.save(vm);
            vm.bump();
        }
        tracing::info!(vm = %rec.name, pid, "re-attached");
        Ok(Some(proc))
    }

    /// Puts the VM `rec` describes at its recorded id, starting (see
    /// [`Daemon::adopt`]).
    fn place(&self, rec: &Record) {
        let mut g = self.lock();
        if g.vms.get(&rec.id).is_some_and(|v| v.def.name != rec.name) {
            let mut other = g.vms.remove(&rec.id).expect("checked");
            let id = g.next_id;
            g.next_id += 1;
            tracing::info!(vm = %other.def.name, "moves from id {} to {id}", rec.id);
            other.id = id;
            g.vms.insert(id, other);
        }
        let mut vm = match g.find_name(&rec.name) {
            Some(id) => g.vms.remove(&id).expect("found"),
            None => {
                tracing::info!(vm = %rec.name, "no longer in the configuration: listed as an ad-hoc VM");
                Vm::new(rec.id, rec.def.clone(), false)
            }
        };
        vm.id = rec.id;
        vm.def = rec.def.clone();
        vm.state = VmState::Starting;
        vm.tty = rec.tty.clone();
        vm.interfaces = rec.interfaces.clone();
        vm.disk_formats = rec.disk_formats.clone();
        vm.user_files = rec.user_files.clone();
        vm.has_run = true;
        vm.proc_start = Some(rec.start_time);
        vm.proc_comm = rec.comm.clone();
        vm.cgroups = rec.cgroups.clone();
        g.vms.insert(rec.id, vm);
        g.next_id = g.next_id.max(rec.id.saturating_add(1));
    }

    /// VM `id`, claimed for a start that failed before its process ran,
    /// is idle again, with `why` as its last exit.
    fn start_failed(&self, id: u32, why: &str) {
        let mut g = self.lock();
        if let Some(vm) = g.vms.get_mut(&id) {
            vm.state = idle_state(&vm.def, vm.configured);
            vm.last_exit = Some(why.to_owned());
            vm.bump();
        }
    }

    /// Sends a request to VM `id`'s process.
    ///
    /// A stop is answered at once by a VM process that works, so a stop
    /// gets [`STOP_ANSWER`] to be answered. A forced one that is not, or
    /// whose process does not exit soon after, ends with the process
    /// killed (see [`Daemon::force_stop`]); a graceful one fails, saying
    /// that a forced stop will do.
    pub async fn request(&self, id: u32, req: Request) -> Result<api::vmproc::Reply, Error> {
        let proc = {
            let g = self.lock();
            let vm = g
                .vms
                .get(&id)
                .ok_or_else(|| Error::NotFound(format!("no vm {id}")))?;
            vm.proc
                .clone()
                .ok_or_else(|| Error::Conflict(format!("vm {} is not running", vm.def.name)))?
        };
        match req {
            Request::Stop { force: true, .. } => self.force_stop(id, &proc, KILL_REAP).await,
            Request::Stop { force: false, .. } => proc
                .request_within(&req, STOP_ANSWER)
                .await
                .map_err(|e| match e.as_str() {
                    vmproc::NO_ANSWER => Error::VmProcess(format!(
                        "{e} within {} s: a forced stop (vmctl stop -f) kills it",
                        STOP_ANSWER.as_secs()
                    )),
                    _ => Error::VmProcess(e),
                }),
            _ => proc.request(&req).await.map_err(Error::VmProcess),
        }
    }

    /// Powers VM `id` off: asks its process, `proc`, for a forced stop
    /// and kills it if it does not answer within [`STOP_ANSWER`] (it is
    /// stopped or stuck: SIGKILL ends it all the same) or does not exit
    /// within [`FORCED_EXIT`] after answering. Returns once the process
    /// answered, or, when it was killed, once it has been reaped (at most
    /// `reap`): the VM is stopped then.
    async fn force_stop(
        &self,
        id: u32,
        proc: &Arc<VmProc>,
        reap: Duration,
    ) -> Result<api::vmproc::Reply, Error> {
        let req = Request::Stop {
            force: true,
            grace_secs: 0,
        };
        match proc.request_within(&req, STOP_ANSWER).await {
            Ok(r) => {
                proc.kill_unless_exited_within(
                    FORCED_EXIT,
                    format!(
                        "killed: the VM process did not exit within {} s of a forced stop",
                        FORCED_EXIT.as_secs()
                    ),
                );
                Ok(r)
            }
            Err(e) if e == vmproc::NO_ANSWER => {
                proc.kill(format!(
                    "killed: the VM process did not answer a forced stop within {} s",
                    STOP_ANSWER.as_secs()
                ));
                if self.wait_gone(id, proc, reap).await {
                    Ok(api::vmproc::Reply::Ok)
                } else {
                    Err(Error::VmProcess(format!(
                        "the VM process (pid {}) did not answer and has not ended {} s after SIGKILL",
                        proc.pid,
                        reap.as_secs()
                    )))
                }
            }
            Err(e) => Err(Error::VmProcess(e)),
        }
    }

    /// Waits until VM `id`'s process `proc` has ended and the VM shows
    /// it (or `bound` has passed: false).
    async fn wait_gone(&self, id: u32, proc: &Arc<VmProc>, bound: Duration) -> bool {
        let gone = |g: &Inner| {
            g.vms
                .get(&id)
                .is_none_or(|vm| !vm.proc.as_ref().is_some_and(|p| Arc::ptr_eq(p, proc)))
        };
        let mut rx = match self.lock().vms.get(&id) {
            Some(vm) => vm.changed.subscribe(),
            None => return true,
        };
        tokio::time::timeout(bound, async {
            while !gone(&self.lock()) {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Stops every running VM at once, for vmd's exit: each gracefully,
    /// its grace period cut to [`SHUTDOWN_GRACE`], powered off if still
    /// running when that has passed, and killed if its process does not
    /// answer; in parallel, so that no VM waits for another. Returns
    /// within [`SHUTDOWN_GRACE`] + [`STOP_ANSWER`] + [`FORCED_EXIT`] +
    /// [`KILL_WAIT`], 35 s (the bound vmd.8 gives).
    pub async fn shutdown(self: &Arc<Self>) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let running: Vec<(u32, Arc<VmProc>, u64)> = self
            .lock()
            .vms
            .values()
            .filter_map(|v| {
                let grace = v.def.grace_secs.min(SHUTDOWN_GRACE.as_secs());
                Some((v.id, v.proc.clone()?, grace))
            })
            .collect();
        let mut stops = tokio::task::JoinSet::new();
        for (id, proc, grace) in running {
            let d = self.clone();
            stops.spawn(async move { d.shutdown_one(id, proc, grace, deadline).await });
        }
        while stops.join_next().await.is_some() {}
    }

    /// One VM's part of [`Daemon::shutdown`].
    async fn shutdown_one(
        &self,
        id: u32,
        proc: Arc<VmProc>,
        grace_secs: u64,
        deadline: tokio::time::Instant,
    ) {
        let req = Request::Stop {
            force: false,
            grace_secs,
        };
        if let Err(e) = proc.request_within(&req, STOP_ANSWER).await {
            if e == vmproc::NO_ANSWER {
                // It cannot stop its guest: nothing to wait for.
                proc.kill(format!(
                    "killed: the VM process did not answer a stop within {} s",
                    STOP_ANSWER.as_secs()
                ));
                self.wait_gone(id, &proc, KILL_WAIT).await;
                return;
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if self.wait_gone(id, &proc, left).await {
            return;
        }
        // Still running when the grace period is over: powered off, or
        // killed (force_stop waits for that), or killed if it does not
        // exit after powering off (force_stop has set that up).
        if self.force_stop(id, &proc, KILL_WAIT).await.is_ok() {
            self.wait_gone(id, &proc, FORCED_EXIT + KILL_WAIT).await;
        }
    }

    pub fn set_state(&self, id: u32, state: VmState) {
        let mut g = self.lock();
        if let Some(vm) = g.vms.get_mut(&id) {
            if vm.running() {
                vm.state = state;
                vm.bump();
            }
        }
    }

    /// Waits until VM `id` is not running.
    pub async fn wait_stopped(&self, id: u32) -> Result<VmStatus, Error> {
        let mut rx = {
            let g = self.lock();
            let vm = g
                .vms
                .get(&id)
                .ok_or_else(|| Error::NotFound(format!("no vm {id}")))?;
            vm.changed.subscribe()
        };
        loop {
            {
                let g = self.lock();
                match g.vms.get(&id) {
                    Some(vm) if vm.running() => {}
                    Some(vm) => return Ok(vm.status()),
                    None => return Err(Error::NotFound(format!("vm {id} is gone"))),
                }
            }
            if rx.changed().await.is_err() {
                return Err(Error::NotFound(format!("vm {id} is gone")));
            }
        }
    }

    /// Hands the console pty to the VM's owner so they (and root) can use
    /// `vmctl console`, and nobody else can.
    fn own_tty(&self, path: &str, owner: Option<&Owner>) {
        let (uid, gid) = owner.map(auth::owner_ids).unwrap_or((Some(0), Some(0)));
        let c = match std::ffi::CString::new(path) {
            Ok(c) => c,
            Err(_) => return,
        };
        // SAFETY: plain syscalls on a NUL-terminated path.
        unsafe {
            libc::chown(c.as_ptr(), uid.unwrap_or(0), gid.unwrap_or(0));
            libc::chmod(c.as_ptr(), 0o660);
        }
    }
}

/// Why a recorded VM was not re-attached.
enum Adopt {
    /// Its process is not there any more: the record goes.
    Gone(String),
    /// It is there but could not be reached: the record stays.
    Failed(String),
}

/// How long vmd's start waits for the re-attached VMs' states.
const ASK_WAIT: Duration = Duration::from_secs(1);

/// How long a re-attached VM process gets to answer its first status.
const ATTACH_ANSWER: Duration = Duration::from_secs(5);

/// How long a VM process gets to build its VM (its console ready) before
/// the start fails and the process is killed.
pub(crate) const START_BOUND: Duration = Duration::from_secs(60);

/// How long a VM process gets to answer a stop. It answers at once
/// (the guest is asked, or powered off, afterwards): one that has not
/// after this long is stopped, traced or stuck.
const STOP_ANSWER: Duration = Duration::from_secs(3);

/// How long a VM process that answered a forced stop has to exit before
/// it is killed.
const FORCED_EXIT: Duration = Duration::from_secs(1);

/// How long vmd waits for a killed VM process to be reaped when it
/// shuts down (it exits then whether or not the process has gone).
const KILL_WAIT: Duration = Duration::from_secs(1);

/// How long a forced stop asked through the API waits for the VM process
/// it killed to be reaped (the kernel frees a large guest's memory
/// first), before it answers that the process has not ended yet.
const KILL_REAP: Duration = Duration::from_secs(5);

/// vmd's exit (SIGTERM): the grace period guests get, and the time after
/// which VMs still running are powered off. vmd.8 promises an exit within
/// `SHUTDOWN_GRACE + STOP_ANSWER + FORCED_EXIT + KILL_WAIT` (35 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

fn describe(status: Option<ExitStatus>, reason: Option<String>, tail: Option<String>) -> String {
    if let Some(r) = reason {
        return r;
    }
    // Not our child (re-attached): its parent got the status.
    let Some(status) = status else {
        return "exited".into();
    };
    if let Some(sig) = status.signal() {
        return format!("killed by signal {sig}");
    }
    match (status.code(), tail) {
        (Some(1), Some(t)) => format!("failed: {}", t.strip_prefix("vmm: ").unwrap_or(&t)),
        (Some(c), _) => format!("exited with status {c}"),
        (None, _) => "exited".into(),
    }
}

impl Sink for Daemon {
    fn event(&self, id: u32, event: Event) {
        match event {
            Event::Tty { path } => {
                let owner = {
                    let mut g = self.lock();
                    let Some(vm) = g.vms.get_mut(&id) else { return };
                    vm.tty = Some(path.clone());
                    if vm.state == VmState::Starting {
                        vm.state = VmState::Running;
                    }
                    // Its VM is built: the program is the VM process's own
                    // now (whatever wrapper exec'd it).
                    if let Some(c) = vm.proc.as_ref().and_then(|p| persist::comm(p.pid)) {
                        vm.proc_comm = Some(c);
                    }
                    self.save(vm);
                    vm.bump();
                    vm.def.owner.clone()
                };
                self.own_tty(&path, owner.as_ref());
            }
            Event::State { state } => {
                let s = match state {
                    api::vmproc::RunState::Running => VmState::Running,
                    api::vmproc::RunState::Paused => VmState::Paused,
                    api::vmproc::RunState::Stopping => VmState::Stopping,
                };
                self.set_state(id, s);
            }
            Event::Guest { guest } => {
                let mut g = self.lock();
                if let Some(vm) = g.vms.get_mut(&id) {
                    vm.guest = guest;
                    vm.guest_at = Some(std::time::Instant::now());
                    vm.bump();
                }
            }
            Event::Exited { reason } => {
                if let Some(vm) = self.lock().vms.get_mut(&id) {
                    vm.exit_reason = Some(reason);
                }
            }
        }
    }

    fn exited(&self, id: u32, status: Option<ExitStatus>, tail: Option<String>) {
        let mut g = self.lock();
        self.state.remove(id);
        let Some(vm) = g.vms.get_mut(&id) else { return };
        let mut why = describe(status, vm.exit_reason.take(), tail);
        // Killed by the kernel at its memory limit: said so.
        if let Some(oom) = crate::cgroup::oom_killed(&vm.cgroups) {
            why = format!("{why}: {oom}");
        }
        tracing::info!(vm = %vm.def.name, "stopped: {why}");
        vm.proc = None;
        vm.proc_start = None;
        vm.proc_comm = None;
        self.cgroups.remove(std::mem::take(&mut vm.cgroups));
        vm.tty = None;
        vm.last_exit = Some(why);
        vm.state = idle_state(&vm.def, vm.configured);
        vm.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_gets_the_cpu_model() {
        let mut def = VmDef::new("a");
        def.kernel = Some("/k".into());
        let plain = Daemon::vmm_args(&def, None).unwrap();
        assert!(!plain.iter().any(|a| a.starts_with("--cpu")), "{plain:?}");
        def.cpu = vmconf::CpuModel {
            vendor: Some("-weird vendr".into()),
            family: Some(6),
            model: Some(44),
            stepping: Some(2),
            hide: vec!["cx16".into(), "xsave".into()],
        };
        let a = Daemon::vmm_args(&def, None).unwrap();
        assert_eq!(
            a[a.len() - 5..],
            [
                "--cpu-vendor=-weird vendr",
                "--cpu-family=6",
                "--cpu-model=44",
                "--cpu-stepping=2",
                "--cpu-hide=cx16,xsave",
            ]
        );
        assert_eq!(a[..plain.len()], plain[..]);
    }
}
