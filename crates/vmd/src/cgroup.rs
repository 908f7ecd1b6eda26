//! Each VM process in a control group of its own, which bounds the memory
//! and the tasks (processes and threads) it may take from the host: a
//! guest, or a VM process a guest took over, cannot take the host's
//! memory or fork it to death.
//!
//! What the host offers decides where, found once when vmd starts:
//! - cgroup v2 with the memory and pids controllers available to vmd's
//!   own cgroup (/proc/self/cgroup): VMs in `/vmd/vm-ID` below the
//!   hierarchy's root, where vmd may hand the controllers down from the
//!   root (see `setup_v2` for why not in vmd's own cgroup); where vmd is
//!   in a leaf `vmd` of a delegated cgroup B (systemd's
//!   DelegateSubgroup=vmd), in `B/vms/vm-ID`; else, where its own cgroup B
//!   is delegated to it (a container's), vmd moves itself into the leaf
//!   `B/vmd` (the "no internal processes" rule forbids B to hold
//!   processes once it hands controllers down) and VMs go in `B/vms/vm-ID`.
//! - else cgroup v1 memory and pids hierarchies: `vmd/vm-ID` under vmd's
//!   own cgroup in each (`/sys/fs/cgroup/memory/vmd/vm-ID`, `.../pids/...`).
//! - else none: VMs run unlimited, and vmd says why once, at start.
//!
//! A vmd on another state directory than the default (a test's, a second
//! vmd) nests its VMs one level further, in a directory named after its
//! state directory (`vmd/d-HASH/vm-ID`): VM ids repeat across daemons,
//! cgroups must not.
//!
//! The VM process enters its cgroups itself, before it touches guest
//! memory, so that every guest page is charged to them: vmd opens the
//! files that move a task and hands them over with its taps (`vmm
//! --cgroups`). Moving a whole process (`cgroup.procs`) write-locks the
//! kernel's global threadgroup lock, which waits for an RCU grace period
//! (6-8 ms here, per hierarchy) unless another move just took it; moving
//! one thread, the caller, does not. So on v1, vmd hands over `tasks`,
//! and the VM process writes itself in while it is still its only thread
//! (`--cgroup-files tasks`): ~0.05 ms. v2 has no such file
//! (`cgroup.threads` moves threads only within a domain), so there it
//! writes `cgroup.procs` from a thread while it builds its VM, which
//! hides part of the wait. Not between fork and exec: fork rather than
//! posix_spawn would cost more. Its cgroups go when it exits, whichever
//! vmd sees that; those of VMs no longer running go when vmd starts.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Memory a VM process may hold beyond its guest's RAM, as bytes: a fixed
/// part and 1/`OVERHEAD_DIVISOR` of the RAM. Measured (vmctl status,
/// /proc/PID/status, memory.usage_in_bytes): a VM process holds ~9 MiB
/// besides the guest memory it touched (8 MiB of it vmm's own mapped
/// program, ~1-3 MiB heap, thread stacks and device queues, with disks,
/// qcow2 caches and taps alike: README's P3). The cgroup is charged
/// more than that: KVM's kernel memory for the VM (vCPU state, the
/// memory slots' dirty bitmaps, and page tables that grow with the
/// guest's RAM: 1/512 of it for 4 KiB pages, more with shadow paging),
/// socket buffers, and the page cache of disk images read and written
/// through it (reclaimable: it makes the cgroup reclaim, not run out).
/// 64 MiB leaves a VM with little RAM several times what it was seen to
/// need; RAM/32 covers what grows with the RAM with room to spare. A
/// 512 MiB guest may so hold 592 MiB, a 4 GiB one 4.19 GiB.
pub const OVERHEAD_FIXED: u64 = 64 << 20;
pub const OVERHEAD_DIVISOR: u64 = 32;

/// Tasks a VM process may have beyond one per vCPU, disk and interface:
/// it runs 8 others (main, control, console, signals, virtio-rng, the
/// guest channel's and a stop's helpers, the file opener), and the
/// rest is margin for short-lived helpers. A fork bomb in a VM process a
/// guest took over stops there.
pub const PIDS_EXTRA: u64 = 32;

/// The memory limit of a VM with `ram` bytes of guest RAM.
pub fn memory_limit(ram: u64) -> u64 {
    ram.saturating_add(OVERHEAD_FIXED)
        .saturating_add(ram / OVERHEAD_DIVISOR)
}

/// The task limit of a VM with `cpus` vCPUs and `devices` disks and
/// interfaces (each may get a thread of its own).
pub fn pids_limit(cpus: u32, devices: usize) -> u64 {
    u64::from(cpus)
        .saturating_add(devices as u64)
        .saturating_add(PIDS_EXTRA)
}

/// How long the removal of a VM's cgroup is retried: the kernel frees a
/// cgroup a moment after its last task has gone.
const REMOVE_TRIES: u32 = 50;
const REMOVE_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug)]
enum Mode {
    /// VMs go in `dir/vm-ID` (cgroup v2).
    V2 { dir: PathBuf },
    /// VMs go in `memory/vm-ID` and `pids/vm-ID` (cgroup v1).
    V1 { memory: PathBuf, pids: PathBuf },
    /// VMs run unlimited (--no-cgroups, or the host has no controllers).
    Off,
    /// The host has the controllers, but vmd could not set its cgroups up:
    /// VMs are not started (`why`), rather than run unlimited unawares.
    Broken(String),
}

pub struct Cgroups {
    mode: Mode,
    /// Cgroups whose removal is being retried in the background; a start
    /// that makes one again takes it off first (see [`Cgroups::create`]).
    removing: Mutex<HashSet<PathBuf>>,
}

/// A VM's cgroups, made for its start: their paths (kept in its record)
/// and the files that move a task into them (`tasks` on v1, else
/// `cgroup.procs`), open for the VM process to write itself in.
pub struct Prepared {
    pub paths: Vec<PathBuf>,
    movers: Vec<OwnedFd>,
    kind: MoverKind,
}

/// Which file [`Prepared`] hands over: vmm's `--cgroup-files`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoverKind {
    /// `cgroup.procs`: moves the whole process.
    Procs,
    /// v1's `tasks`: moves the writing thread only (the process, while it
    /// has one thread), without the wait for an RCU grace period.
    Tasks,
}

impl MoverKind {
    fn file(self) -> &'static str {
        match self {
            MoverKind::Procs => "cgroup.procs",
            MoverKind::Tasks => "tasks",
        }
    }

    /// vmm's `--cgroup-files` value.
    pub fn arg(self) -> &'static str {
        match self {
            MoverKind::Procs => "procs",
            MoverKind::Tasks => "tasks",
        }
    }
}

impl Prepared {
    /// Its paths, and what the VM process (`vmm --cgroups N
    /// --cgroup-files KIND`) writes itself in with, before it touches
    /// guest memory.
    pub fn into_parts(self) -> (Vec<PathBuf>, Vec<OwnedFd>, MoverKind) {
        (self.paths, self.movers, self.kind)
    }
}

impl Cgroups {
    /// Finds what the host offers and sets vmd's part of it up, for a
    /// vmd on `state_dir` (`default`: the default one). Logs what it found.
    pub fn setup(disabled: bool, state_dir: &Path, default: bool) -> Arc<Cgroups> {
        let mode = if disabled {
            tracing::info!("cgroups: not used (--no-cgroups): VM processes are not limited");
            Mode::Off
        } else {
            let tag = (!default).then(|| tag(state_dir));
            match detect(tag.as_deref()) {
                Ok(Some(m)) => {
                    tracing::info!("cgroups: VM processes are limited in {}", m.describe());
                    m
                }
                Ok(None) => {
                    tracing::warn!(
                        "cgroups: the host offers neither cgroup v2 with the memory and pids \
                         controllers nor cgroup v1 memory and pids hierarchies: VM processes \
                         are not limited"
                    );
                    Mode::Off
                }
                Err(why) => {
                    tracing::error!(
                        "cgroups: {why}: VMs will not start (vmd --no-cgroups runs them unlimited)"
                    );
                    Mode::Broken(why)
                }
            }
        };
        Arc::new(Cgroups {
            mode,
            removing: Mutex::new(HashSet::new()),
        })
    }

    /// The directories VMs' cgroups are made in.
    fn dirs(&self) -> Vec<&Path> {
        match &self.mode {
            Mode::V2 { dir } => vec![dir],
            // One hierarchy may have both controllers (mounted together).
            Mode::V1 { memory, pids } if memory == pids => vec![memory],
            Mode::V1 { memory, pids } => vec![memory, pids],
            Mode::Off | Mode::Broken(_) => vec![],
        }
    }

    /// Makes VM `id`'s cgroups with its limits (`ram` bytes of memory,
    /// `cpus` vCPUs, `devices` disks and interfaces). None: cgroups are
    /// not used.
    pub async fn create(
        &self,
        id: u32,
        ram: u64,
        cpus: u32,
        devices: usize,
    ) -> Result<Option<Prepared>, String> {
        if let Mode::Broken(why) = &self.mode {
            return Err(format!("cannot limit the VM: {why} (see vmd --no-cgroups)"));
        }
        let dirs = self.dirs();
        if dirs.is_empty() {
            return Ok(None);
        }
        let mem = memory_limit(ram);
        let pids = pids_limit(cpus, devices);
        let kind = match self.mode {
            Mode::V1 { .. } => MoverKind::Tasks,
            _ => MoverKind::Procs,
        };
        let mut made = Prepared {
            paths: Vec::new(),
            movers: Vec::new(),
            kind,
        };
        for dir in dirs {
            let path = dir.join(format!("vm-{id}"));
            let r = self.make(&path).await.and_then(|()| {
                made.paths.push(path.clone());
                match &self.mode {
                    Mode::V1 { memory, pids: p } => {
                        // Each v1 hierarchy's own limits (both where one
                        // has both controllers).
                        if dir == memory.as_path() {
                            v1_memory(&path, mem)?;
                        }
                        if dir == p.as_path() {
                            write(&path.join("pids.max"), &pids.to_string())?;
                        }
                    }
                    _ => v2_limits(&path, mem, pids)?,
                }
                // Handed to the VM process on its control socket; it
                // writes itself in before it touches guest memory.
                let file = path.join(kind.file());
                let mover = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                made.movers.push(mover.into());
                Ok(())
            });
            if let Err(e) = r {
                for p in &made.paths {
                    let _ = std::fs::remove_dir(p);
                }
                return Err(format!("cgroup of vm {id}: {e}"));
            }
        }
        Ok(Some(made))
    }

    /// Makes cgroup `path` anew: one left behind (by a VM process that
    /// just exited, or that a vmd never saw exit) is removed first.
    async fn make(&self, path: &Path) -> Result<(), String> {
        self.removing.lock().unwrap().remove(path);
        for _ in 0..REMOVE_TRIES {
            match std::fs::create_dir(path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
            match std::fs::remove_dir(path) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    tokio::time::sleep(REMOVE_PAUSE).await
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Err(format!(
            "{}: is there already, and a process is still in it",
            path.display()
        ))
    }

    /// Removes the cgroups `paths` of a VM whose process exited, in the
    /// background, retrying until the kernel lets it.
    pub fn remove(self: &Arc<Self>, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            return;
        }
        self.removing.lock().unwrap().extend(paths.iter().cloned());
        let me = self.clone();
        tokio::spawn(async move {
            for path in paths {
                for n in 0.. {
                    {
                        let mut removing = me.removing.lock().unwrap();
                        // Made again for a new start meanwhile: its own now.
                        if !removing.contains(&path) {
                            break;
                        }
                        match std::fs::remove_dir(&path) {
                            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && n < REMOVE_TRIES => {
                            }
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                tracing::warn!("cannot remove cgroup {}: {e}", path.display());
                                removing.remove(&path);
                                break;
                            }
                            _ => {
                                removing.remove(&path);
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(REMOVE_PAUSE).await;
                }
            }
        });
    }

    /// Waits (a few seconds at most) until the cgroups of the VMs that
    /// exited are removed, for vmd's exit.
    pub async fn settle(&self) {
        for _ in 0..REMOVE_TRIES + 10 {
            if self.removing.lock().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(REMOVE_PAUSE).await;
        }
    }

    /// Removes the cgroups of VMs that are not running (`live`: the paths
    /// of those that are), left by VM processes whose exit no vmd saw.
    /// One try each: a cgroup a process is still in stays.
    pub fn remove_leftovers(&self, live: &HashSet<PathBuf>) {
        for dir in self.dirs() {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let ours = e.file_name().to_str().is_some_and(|n| {
                    n.strip_prefix("vm-")
                        .is_some_and(|id| id.parse::<u32>().is_ok())
                });
                if !ours || live.contains(&path) || !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                match std::fs::remove_dir(&path) {
                    Ok(()) => tracing::info!("removed cgroup {}: its VM is gone", path.display()),
                    Err(e) => tracing::warn!("cgroup {} stays: {e}", path.display()),
                }
            }
        }
    }

    /// Removes the cgroups a record of a VM that is gone names, if they
    /// are in no directory of ours (made by a vmd in another cgroup).
    pub fn remove_gone(&self, paths: &[PathBuf]) {
        for p in paths {
            // Only what a vmd made: a VM's cgroup, not whatever a record says.
            let vm = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vm-"));
            if vm && p.starts_with("/sys/fs/cgroup") {
                let _ = std::fs::remove_dir(p);
            }
        }
    }

    /// Removes the directories this vmd made for its VMs' cgroups, if no
    /// VM's is left in them (at exit; shared ones stay while in use).
    pub fn remove_dirs(&self) {
        for dir in self.dirs() {
            if std::fs::remove_dir(dir).is_ok() {
                // The shared parent of a vmd with a state directory of its own.
                if let Some(parent) = dir.parent() {
                    if dir
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("d-"))
                    {
                        let _ = std::fs::remove_dir(parent);
                    }
                }
            }
        }
    }
}

/// Why the kernel killed the process of a VM whose cgroups are `paths`,
/// if it did for want of memory: the OOM killer acted in them
/// (`oom_kill` in v2's memory.events, v1's memory.oom_control).
pub fn oom_killed(paths: &[PathBuf]) -> Option<String> {
    paths.iter().find_map(|p| {
        let kills = ["memory.events", "memory.oom_control"]
            .iter()
            .find_map(|f| std::fs::read_to_string(p.join(f)).ok())?
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())?;
        if kills == 0 {
            return None;
        }
        let limit = ["memory.max", "memory.limit_in_bytes"]
            .iter()
            .find_map(|f| std::fs::read_to_string(p.join(f)).ok())
            .and_then(|s| s.trim().parse::<u64>().ok());
        Some(match limit {
            Some(l) => format!("out of memory: its cgroup's limit is {} MiB", l >> 20),
            None => "out of memory: at its cgroup's limit".into(),
        })
    })
}

impl Mode {
    fn describe(&self) -> String {
        match self {
            Mode::V2 { dir } => format!("cgroup v2, {}/vm-ID", dir.display()),
            Mode::V1 { memory, pids } => format!(
                "cgroup v1, {}/vm-ID and {}/vm-ID",
                memory.display(),
                pids.display()
            ),
            Mode::Off => "nothing".into(),
            Mode::Broken(why) => why.clone(),
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{}: {value}: {e}", path.display()))
}

/// cgroup v2 limits: memory.max, as much again of swap (memory.swap.max,
/// where the kernel has swap accounting), pids.max.
fn v2_limits(path: &Path, mem: u64, pids: u64) -> Result<(), String> {
    write(&path.join("memory.max"), &mem.to_string())?;
    let swap = path.join("memory.swap.max");
    if swap.exists() {
        write(&swap, &mem.to_string())?;
    }
    write(&path.join("pids.max"), &pids.to_string())
}

/// cgroup v1 memory limits: memory.limit_in_bytes, and memory and swap
/// together twice that (memory.memsw.limit_in_bytes, where the kernel
/// has swap accounting): as v2's, at most as much again in swap.
fn v1_memory(path: &Path, mem: u64) -> Result<(), String> {
    write(&path.join("memory.limit_in_bytes"), &mem.to_string())?;
    let memsw = path.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        write(&memsw, &mem.saturating_mul(2).to_string())?;
    }
    Ok(())
}

/// The name of the directory a vmd on state directory `dir` keeps its
/// VMs' cgroups in, under the shared one: stable across restarts (the
/// next vmd finds what the last left), distinct across state directories
/// (FNV-1a of the path).
fn tag(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in dir.as_os_str().as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("d-{h:016x}")
}

/// One cgroup mount: where, its root, v2 or the v1 controllers it has.
struct Mount {
    point: PathBuf,
    root: String,
    v2: bool,
    options: Vec<String>,
}

fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let v2 = match *r.first()? {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(Mount {
                point: PathBuf::from(unescape(f.get(4)?)),
                root: unescape(f.get(3)?),
                v2,
                options: r.get(2)?.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where cgroup `path` (as /proc/self/cgroup names it) is under `m`.
fn under(m: &Mount, path: &str) -> PathBuf {
    let rel = if m.root == "/" {
        path
    } else {
        path.strip_prefix(m.root.as_str()).unwrap_or(path)
    };
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        m.point.clone()
    } else {
        m.point.join(rel)
    }
}

/// What the host offers, set up: Ok(None) where it offers nothing.
fn detect(tag: Option<&str>) -> Result<Option<Mode>, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let mounts = mounts();
    // cgroup v2, with both controllers available to vmd's cgroup.
    let v2_path = own.lines().find_map(|l| l.strip_prefix("0::"));
    if let (Some(path), Some(m)) = (v2_path, mounts.iter().find(|m| m.v2)) {
        let here = under(m, path);
        let controllers =
            std::fs::read_to_string(here.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            return setup_v2(m, &here, tag).map(Some);
        }
    }
    // cgroup v1 memory and pids hierarchies.
    let v1 = |ctrl: &str| -> Option<PathBuf> {
        let m = mounts
            .iter()
            .find(|m| !m.v2 && m.options.iter().any(|o| o == ctrl))?;
        let path = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls.split(',').any(|c| c == ctrl).then_some(path)
        })?;
        Some(under(m, path))
    };
    if let (Some(memory), Some(pids)) = (v1("memory"), v1("pids")) {
        let dir = |base: PathBuf| match tag {
            Some(t) => base.join("vmd").join(t),
            None => base.join("vmd"),
        };
        let (memory, pids) = (dir(memory), dir(pids));
        for d in [&memory, &pids] {
            create_dir_all(d)?;
        }
        return Ok(Some(Mode::V1 { memory, pids }));
    }
    Ok(None)
}

/// mkdir -p, for cgroup directories another vmd may remove meanwhile
/// (when it exits, the shared `vmd` one if empty): retried.
fn create_dir_all(d: &Path) -> Result<(), String> {
    let mut last = None;
    for _ in 0..5 {
        match std::fs::create_dir_all(d) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(format!("{}: {}", d.display(), last.expect("tried")))
}

/// Hands the memory and pids controllers down from cgroup `dir`.
fn delegate(dir: &Path) -> Result<(), String> {
    let have = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let wanted: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| !have.split_whitespace().any(|h| h == *c))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let line = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(dir.join("cgroup.subtree_control"), &line).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EBUSY) {
            " (other processes are in it: run vmd in a cgroup of its own, as \
             systemd's Delegate=yes gives it)"
        } else {
            ""
        };
        format!(
            "{}/cgroup.subtree_control: {line}: {e}{hint}",
            dir.display()
        )
    })
}

/// Sets cgroup v2 up for vmd in cgroup `here` of mount `m`.
fn setup_v2(m: &Mount, here: &Path, tag: Option<&str>) -> Result<Mode, String> {
    // In a leaf `vmd` of a cgroup delegated to it, as systemd's
    // DelegateSubgroup=vmd puts it: the VMs' beside it.
    if here != m.point && here.file_name().is_some_and(|n| n == "vmd") {
        let base = here.parent().expect("not the root");
        delegate(base)?;
        return nest(&base.join("vms"), tag);
    }
    // Else below the hierarchy's root, in `/vmd`, as firecracker's jailer
    // and docker's cgroupfs driver make theirs: the unit vmd runs in stays
    // a leaf, so systemd can start vmd in it again (`systemctl restart`)
    // while VMs run. (Were the VMs' cgroups in the unit's, the unit would
    // hand controllers down and could hold no process: systemd before 254,
    // Debian 12's, fails such a start with EBUSY, status 219/CGROUP.)
    let root = delegate(&m.point).and_then(|()| nest(&m.point.join("vmd"), tag));
    let root_err = match root {
        Ok(mode) => return Ok(mode),
        Err(e) if here == m.point => return Err(e),
        Err(e) => e,
    };
    // Else in vmd's own cgroup, delegated to it (a container's): vmd moves
    // into a leaf `vmd` of it, the VMs' go beside it.
    let _ = std::fs::remove_dir(m.point.join("vmd"));
    let leaf = here.join("vmd");
    let own = create_dir_all(&leaf)
        .and_then(|()| {
            std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
                .map_err(|e| format!("{}/cgroup.procs: moving vmd there: {e}", leaf.display()))
        })
        .and_then(|()| delegate(here))
        .and_then(|()| nest(&here.join("vms"), tag));
    own.map_err(|e| format!("{root_err}; {e}"))
}

/// Makes `dir` (and `dir/tag`), each handing the controllers down.
fn nest(dir: &Path, tag: Option<&str>) -> Result<Mode, String> {
    create_dir_all(dir)?;
    delegate(dir)?;
    let mut dir = dir.to_path_buf();
    if let Some(t) = tag {
        dir = dir.join(t);
        create_dir_all(&dir)?;
        delegate(&dir)?;
    }
    Ok(Mode::V2 { dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(memory_limit(32 << 20), (32 << 20) + (64 << 20) + (1 << 20));
        assert_eq!(memory_limit(4 << 30), (4 << 30) + (64 << 20) + (128 << 20));
        assert_eq!(pids_limit(4, 2), 38);
    }

    #[test]
    fn tags_differ_and_last() {
        assert_eq!(
            tag(Path::new("/nonexistent/a")),
            tag(Path::new("/nonexistent/a"))
        );
        assert_ne!(
            tag(Path::new("/nonexistent/a")),
            tag(Path::new("/nonexistent/b"))
        );
        assert_eq!(tag(Path::new("/x")).len(), 18);
    }

    /// Where cgroup v2's VM cgroups go, on a directory standing in for
    /// the hierarchy (plain files: every write succeeds).
    #[test]
    fn v2_places() {
        let top = std::env::temp_dir().join(format!("vmd-cgroup-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let m = Mount {
            point: top.clone(),
            root: "/".into(),
            v2: true,
            options: vec![],
        };
        let unit = top.join("system.slice/vmd.service");
        std::fs::create_dir_all(&unit).unwrap();
        // Below the root, the unit left a leaf.
        let Mode::V2 { dir } = setup_v2(&m, &unit, Some("d-1")).unwrap() else {
            panic!()
        };
        assert_eq!(dir, top.join("vmd/d-1"));
        for d in [&top, &top.join("vmd"), &dir] {
            let c = std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap();
            assert_eq!(c, "+memory +pids", "{}", d.display());
        }
        assert!(!unit.join("vmd").exists());
        // In a leaf `vmd` of a delegated cgroup: beside it.
        let Mode::V2 { dir } = setup_v2(&m, &unit.join("vmd"), None).unwrap() else {
            panic!()
        };
        assert_eq!(dir, unit.join("vms"));
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }

    #[test]
    fn paths_under_mounts() {
        let m = Mount {
            point: "/sys/fs/cgroup/memory".into(),
            root: "/".into(),
            v2: false,
            options: vec![],
        };
        assert_eq!(under(&m, "/"), PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            under(&m, "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
        let m = Mount {
            root: "/a".into(),
            ..m
        };
        assert_eq!(under(&m, "/a/b"), PathBuf::from("/sys/fs/cgroup/memory/b"));
    }
}
