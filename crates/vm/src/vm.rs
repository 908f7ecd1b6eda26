//! One VM: KVM objects, guest memory, devices, vCPU threads, lifecycle.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::acpi_pm::AcpiPm;
use devices::backdoor::{Backdoor, HostFacts, News};
use devices::i8042::{I8042, I8042_AUX_IRQ, I8042_PORT_LEN};
use devices::pci_host::{BarMove, PciEcam, PciHost, PciRoot};
use devices::rtc::Rtc;
use devices::serial::Serial;
use devices::threads::ThreadKind;
use devices::virtio::block::Block;
use devices::virtio::pci::{PciWiring, VirtioPci, BAR_SIZE as VIRTIO_BAR_SIZE};
use devices::virtio::scsi::Scsi;
use devices::virtio::VirtioDevice;
use devices::BusDevice;
use devices::{Bus, RegsDevice, SharedEvents, SharedIrq};
use guestrpc::backdoor::PORT_LB;
use guestrpc::host::{CommandStatus, GuestState, QueueFull, Tools, DEFAULT_TCLO_TIMEOUT_MS};
use guestrpc::tclo::{PowerState, TcloCommand};
use kvm_bindings::{
    kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_config, kvm_pit_state2,
    kvm_userspace_memory_region, CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::acpi::{create_acpi_tables, AcpiConfig};
use crate::boot::{self, BootConfig, KernelKind};
use crate::coalesced::CoalescedRing;
use crate::control::{Control, RunState, StopReason};
use crate::cpuid::{vcpu_cpuid, CpuidConfig};
use crate::firmware::Firmware;
use crate::irq::KvmIrqLine;
use crate::layout::*;
use crate::msi::{IntxLine, KvmIoEvents, KvmMsi, SharedLevelGsi};
use crate::regs::{setup_vcpu, write_boot_tables, EntryMode};
use crate::vcpu::{install_kick_handler, run_vcpu};
use crate::IoBuses;

/// Everything needed to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub mem_size: u64,
    pub vcpus: u32,
    pub boot: BootConfig,
    pub cpuid: CpuidConfig,
    /// When false, a guest reset ends the VM instead of rebooting it.
    pub reboot: bool,
    /// The VMware backdoor (guest tools channel) on ports 0x5658/0x5659.
    pub guest_tools: bool,
    /// The VM's UUID, as the backdoor reports it.
    pub uuid: [u8; 16],
    /// Virtio block devices, on PCI slots 1.. in this order.
    pub disks: Vec<DiskConfig>,
    /// Boot firmware instead of `boot`'s kernel (which is then ignored).
    pub firmware: Option<crate::firmware::FirmwareConfig>,
    /// An ISO image as a CD-ROM (a virtio-scsi MMC drive), on the PCI
    /// slot after the disks.
    pub cdrom: Option<PathBuf>,
    /// Network interfaces (virtio-net on taps), after the CD-ROM.
    pub nets: Vec<NetDevConfig>,
    /// A virtio-rng entropy device, last.
    pub rng: bool,
}

/// One network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetDevConfig {
    /// The tap: opened by name (creating it), or a descriptor vmd opened.
    pub tap: String,
    pub tap_fd: Option<i32>,
    /// None: a stable one from the VM's name and the interface's index.
    pub mac: Option<[u8; 6]>,
    /// Drop frames from the guest whose source MAC is not `mac`.
    pub locked: bool,
    /// A local interface: the VM process answers the guest's DHCP with
    /// these addresses (host side first), as OpenBSD's vmd does.
    pub local: Option<LocalNet>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNet {
    pub host: std::net::Ipv4Addr,
    pub guest: std::net::Ipv4Addr,
    pub prefix_len: u8,
    /// The hostname the DHCP server gives the guest.
    pub hostname: String,
}

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// None: recognised by the qcow2 magic, else raw.
    pub format: Option<disk::Format>,
    pub read_only: bool,
    /// What the guest reads as the disk's serial (GET_ID), at most 20 bytes.
    pub serial: String,
    /// Opened (with its base images) with this user's rights, not the
    /// process's: the user named it (see [`crate::creds`]).
    pub open_as: Option<crate::creds::Creds>,
}

impl DiskConfig {
    /// A disk whose serial is derived from its path: stable across
    /// restarts, distinct between images (FNV-1a of the absolute path).
    pub fn new(path: PathBuf, format: Option<disk::Format>, read_only: bool) -> DiskConfig {
        let abs = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in abs.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        DiskConfig {
            path,
            format,
            read_only,
            serial: format!("vmd-{h:016x}"),
            open_as: None,
        }
    }
}

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest powered off after its tools acknowledged a halt request
    /// (`OS_Halt`): a graceful shutdown asked for by the host.
    ToolsHalt,
    /// The guest reset and `reboot` was off.
    Reset,
    /// The guest crashed; the text has the vCPU registers.
    Crash(String),
    /// The host stopped it (`VmHandle::power_off`).
    Stopped,
}

#[derive(Debug)]
pub enum VmError {
    KvmOpen(kvm_ioctls::Error),
    Kvm(&'static str, kvm_ioctls::Error),
    TooManyVcpus {
        asked: u32,
        max: u32,
    },
    NoVcpus,
    MemoryTooSmall {
        asked: u64,
        min: u64,
    },
    MemoryTooLarge {
        asked: u64,
        host: u64,
    },
    Memory(String),
    Device(String),
    /// A disk image cannot be used; the text names it.
    Disk(String),
    Acpi(String),
    Boot(boot::BootError),
    Firmware(crate::firmware::FirmwareError),
    /// The CPU identity asked for cannot be shown (`CpuidConfig::check`).
    Cpuid(String),
}

fn mib(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}G", b >> 30)
    } else if b >= 1 << 20 {
        format!("{}M", b >> 20)
    } else {
        format!("{}K", b >> 10)
    }
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::KvmOpen(e) => {
                let hint = match e.errno() {
                    libc::ENOENT => " (is the kvm module loaded?)",
                    libc::EACCES | libc::EPERM => " (are you in the kvm group?)",
                    _ => "",
                };
                write!(f, "cannot open /dev/kvm: {e}{hint}")
            }
            VmError::Kvm(what, e) => write!(f, "KVM: {what}: {e}"),
            VmError::TooManyVcpus { asked, max } => {
                write!(
                    f,
                    "{asked} vCPUs asked, this host's KVM allows at most {max}"
                )
            }
            VmError::NoVcpus => write!(f, "a VM needs at least one vCPU"),
            VmError::MemoryTooSmall { asked, min } => {
                write!(
                    f,
                    "memory size {} is too small, the minimum is {}",
                    mib(*asked),
                    mib(*min)
                )
            }
            VmError::MemoryTooLarge { asked, host } => write!(
                f,
                "memory size {} is more than this host has ({} in all)",
                mib(*asked),
                mib(*host)
            ),
            VmError::Memory(e) => write!(f, "cannot allocate guest memory: {e}"),
            VmError::Device(e) => write!(f, "device setup: {e}"),
            VmError::Disk(e) => write!(f, "disk {e}"),
            VmError::Acpi(e) => write!(f, "ACPI tables: {e}"),
            VmError::Boot(e) => write!(f, "{e}"),
            VmError::Firmware(e) => write!(f, "{e}"),
            VmError::Cpuid(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for VmError {}

impl From<boot::BootError> for VmError {
    fn from(e: boot::BootError) -> Self {
        VmError::Boot(e)
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm(what, e)
}

/// Highest vCPU count our MADT can describe (xAPIC ids 0..=254).
pub const MAX_VCPUS: u32 = 254;

fn host_memory() -> u64 {
    // SAFETY: sysinfo only writes the struct we pass.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut si) } != 0 {
        return u64::MAX;
    }
    (si.totalram as u64).saturating_mul(u64::from(si.mem_unit))
}

/// Random bytes from the kernel; a clock-derived fill if getrandom fails
/// (they seed cookies and UUIDs, which guard against confusion, not
/// attackers).
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0x5eed);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
    b
}

fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes())
}

/// A random (version 4) UUID.
pub fn random_uuid() -> [u8; 16] {
    let mut u: [u8; 16] = random_bytes();
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Power-on state of the interrupt controllers, restored on guest reset.
struct IrqchipSnapshot {
    chips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
}

struct VcpuSlot {
    fd: Option<VcpuFd>,
    lapic: kvm_lapic_state,
}

/// A handle other threads use to control a running VM.
#[derive(Clone)]
pub struct VmHandle {
    ctl: Arc<Control>,
    acpi_pm: Arc<Mutex<AcpiPm>>,
    serial: Arc<Mutex<Serial>>,
    backdoor: Option<Arc<Mutex<Backdoor>>>,
    /// Kept apart from the device so that waiting takes no device lock.
    tools_news: Option<Arc<News>>,
}

/// The guest tools were turned off for this VM (`VmConfig::guest_tools`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoGuestTools;

impl fmt::Display for NoGuestTools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("this VM has no guest tools channel")
    }
}

impl VmHandle {
    /// Stops all vCPUs at once; `Vm::run` returns `VmExit::Stopped`.
    pub fn power_off(&self) {
        self.ctl.stop(StopReason::Host);
    }

    /// Pauses all vCPUs; returns when every vCPU is parked. False if the
    /// VM is stopping.
    pub fn pause(&self) -> bool {
        self.ctl.request_pause() && self.ctl.wait_parked()
    }

    pub fn resume(&self) -> bool {
        self.ctl.resume()
    }

    pub fn state(&self) -> RunState {
        self.ctl.run_state()
    }

    /// Presses the ACPI power button (a graceful shutdown request to a
    /// guest OS without guest tools).
    pub fn press_power_button(&self) {
        self.acpi_pm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .press_power_button();
    }

    /// Runs `f` on the guest tools state (TCLO queue, guestinfo store, what
    /// the guest reported), with command timeouts brought up to date.
    pub fn with_tools<R>(&self, f: impl FnOnce(&mut Tools) -> R) -> Result<R, NoGuestTools> {
        let b = self.backdoor.as_ref().ok_or(NoGuestTools)?;
        let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(b.tools()))
    }

    /// Queues a command for the guest tools (TCLO); returns its id.
    pub fn tools_command(
        &self,
        cmd: TcloCommand<String>,
    ) -> Result<Result<u64, QueueFull>, NoGuestTools> {
        self.with_tools(|t| t.queue(cmd))
    }

    /// Where a queued tools command is.
    pub fn tools_status(&self, id: u64) -> Option<CommandStatus> {
        self.with_tools(|t| t.command_status(id)).ok().flatten()
    }

    /// What the guest's tools reported (default when there are no tools).
    pub fn guest_state(&self) -> GuestState {
        self.with_tools(|t| t.guest_state().clone())
            .unwrap_or_default()
    }

    /// Waits until the guest tools report something after the report
    /// count `seen` (see `Tools::reports`), at most `timeout`; returns the
    /// count then (`seen` on a timeout). `None` without guest tools.
    pub fn wait_guest_news(&self, seen: u64, timeout: Duration) -> Option<u64> {
        Some(self.tools_news.as_ref()?.wait(seen, timeout))
    }

    /// Milliseconds on the clock `GuestState`'s times are stamped with.
    pub fn tools_now_ms(&self) -> Option<u64> {
        let b = self.backdoor.as_ref()?;
        Some(b.lock().unwrap_or_else(|e| e.into_inner()).now_ms())
    }

    /// Feeds console input to the serial port; returns bytes accepted.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(bytes)
    }
}

pub struct Vm {
    /// First, so that it is dropped (joined) before the memory it names.
    slots: PendingSlots,
    cfg: VmConfig,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    io: Arc<IoBuses>,
    ctl: Arc<Control>,
    vcpus: Vec<VcpuSlot>,
    irqchip: IrqchipSnapshot,
    handle: VmHandle,
    kind: KernelKind,
    boots: u32,
    /// Reset with the VM: on a PC the firmware reinitialises the keyboard
    /// controller at every boot, so the next kernel must not find the
    /// configuration the last one left.
    i8042: Arc<Mutex<I8042>>,
    /// Virtio devices on PCI, reset with the VM.
    pci_devices: Vec<Arc<Mutex<VirtioPci>>>,
    /// Their slots on bus 0, for the ACPI `_PRT`.
    pci_slots: Vec<u8>,
    /// The BIOS, when the VM boots firmware instead of a kernel.
    firmware: Option<Firmware>,
}

/// The guest's memory slots, being registered with KVM from a thread of
/// their own. KVM_SET_USER_MEMORY_REGION waits for an SRCU grace period
/// (~7 ms per slot on this PVM host, by strace: half a VM's start), and
/// nothing before the vCPUs are set up needs the slots: building the
/// devices and loading the guest (which writes guest memory through our
/// own mapping) go on meanwhile. Joined before the vCPUs' registers and
/// MSRs are set (an MSR may make KVM touch guest memory) and on drop
/// (before the memory is unmapped).
struct PendingSlots(Option<JoinHandle<Result<(), VmError>>>);

impl PendingSlots {
    fn register(
        vm: &Arc<VmFd>,
        slots: Vec<(&'static str, kvm_userspace_memory_region)>,
    ) -> Result<Self, VmError> {
        let vm = vm.clone();
        let register = move || -> Result<(), VmError> {
            for (what, r) in slots {
                // SAFETY: each names a mapping the Vm owns (guest RAM, the
                // firmware's ROM) for as long as the KVM VM exists; the Vm
                // joins this before it drops either.
                unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err(what))?;
            }
            Ok(())
        };
        std::thread::Builder::new()
            .name("memory-slots".into())
            .spawn(register)
            .map(|h| PendingSlots(Some(h)))
            .map_err(|e| VmError::Device(format!("a thread to register guest memory: {e}")))
    }

    /// Waits until every slot is registered; the first failure, once.
    fn wait(&mut self) -> Result<(), VmError> {
        match self.0.take() {
            None => Ok(()),
            Some(h) => h.join().unwrap_or_else(|_| {
                Err(VmError::Device(
                    "registering guest memory: the thread panicked".into(),
                ))
            }),
        }
    }
}

impl Drop for PendingSlots {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

/// A virtio-net device on its tap.
fn build_net(n: &NetDevConfig, index: usize) -> Result<devices::virtio::net::Net, VmError> {
    use devices::virtio::net::{tap::Tap, Net, NetConfig, DEFAULT_MTU};
    let err = |e: std::io::Error| VmError::Device(format!("interface {index}: {e}"));
    let tap = match n.tap_fd {
        // SAFETY: the descriptor was handed to this process for this tap.
        Some(fd) => unsafe { Tap::from_raw_fd(fd, n.tap.clone()) },
        None => Tap::open(&n.tap),
    }
    .map_err(err)?;
    let key = n
        .local
        .as_ref()
        .map_or(n.tap.as_bytes(), |l| l.hostname.as_bytes());
    let mac = n
        .mac
        .unwrap_or_else(|| netcfg::mac::stable_mac(key, index as u8));
    let dhcp = match &n.local {
        Some(l) => {
            let host_mac = tap.hw_addr().map_err(err)?;
            Some(netcfg::dhcp::DhcpServer::new(
                mac,
                host_mac,
                l.host,
                l.guest,
                l.prefix_len,
                &l.hostname,
            ))
        }
        None => None,
    };
    let name = format!("net{index} ({})", tap.name());
    Ok(Net::new(
        tap,
        NetConfig {
            mac,
            mtu: DEFAULT_MTU,
            locked: n.locked,
            dhcp,
        },
        name,
    ))
}

/// Moves a BAR's range on the MMIO bus. A BAR the guest parks at 0 or
/// over another range (firmware does so while sizing) is left unmapped
/// until it moves somewhere usable.
fn move_bar(bus: &mut Bus, dev: &Arc<Mutex<dyn BusDevice>>, m: BarMove) {
    let _ = bus.remove(m.old_addr);
    if m.new_addr == 0 {
        return;
    }
    if let Err(e) = bus.insert(dev.clone(), m.new_addr, m.len) {
        log::warn!(
            "PCI BAR {} moved to {:#x}: {e}; left unmapped",
            m.bar,
            m.new_addr
        );
    }
}

/// The PCI host with the virtio devices on bus 0: slot 0 is the host
/// bridge, disks follow from slot 1, BARs one after the other from the
/// start of the MMIO hole.
#[allow(clippy::type_complexity)]
fn build_pci(
    cfg: &VmConfig,
    vm: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
    events: &SharedEvents,
    mmio: &Arc<RwLock<Bus>>,
) -> Result<(Arc<Mutex<PciHost>>, Vec<Arc<Mutex<VirtioPci>>>, Vec<u8>), VmError> {
    let mut root = PciRoot::new();
    let mut devices: Vec<Arc<Mutex<VirtioPci>>> = Vec::new();
    let mut by_slot: Vec<(u8, Arc<Mutex<dyn BusDevice>>)> = Vec::new();
    let msi = Arc::new(KvmMsi::new(vm.clone()));
    let ioevents = Arc::new(KvmIoEvents(vm.clone()));
    let mut pins: Vec<Arc<SharedLevelGsi>> = Vec::new();
    let mut next_bar = PCI_MMIO_START;
    let mut models: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let open = || disk::open(&d.path, d.format, d.read_only);
        let image = match &d.open_as {
            Some(user) => user
                .run(open)
                .map_err(|e| VmError::Disk(format!("{}: {e}", d.path.display())))?,
            None => open(),
        }
        .map_err(|e| VmError::Disk(e.to_string()))?;
        let name = format!("disk{i} ({})", d.path.display());
        models.push(Box::new(Block::new(image, d.read_only, &d.serial, name)));
    }
    if let Some(iso) = &cfg.cdrom {
        // An ISO is raw whatever its first bytes say, and only read.
        let image = disk::open(iso, Some(disk::Format::Raw), true)
            .map_err(|e| VmError::Disk(format!("(cdrom) {e}")))?;
        let serial = DiskConfig::new(iso.clone(), None, true).serial;
        let name = format!("cdrom ({})", iso.display());
        models.push(Box::new(Scsi::new(image, &serial, name)));
    }
    for (i, n) in cfg.nets.iter().enumerate() {
        models.push(Box::new(build_net(n, i)?));
    }
    if cfg.rng {
        models.push(Box::new(devices::virtio::rng::Rng::new()));
    }
    for model in models {
        let slot = root
            .free_device_number()
            .ok_or_else(|| VmError::Device("no free PCI slot".into()))?;
        let gsi = pci_intx_gsi(slot);
        let pin = match pins.iter().find(|p| p.gsi() == gsi) {
            Some(p) => p.clone(),
            None => {
                let p = SharedLevelGsi::new(vm.clone(), gsi);
                pins.push(p.clone());
                p
            }
        };
        if next_bar + VIRTIO_BAR_SIZE > PCI_MMIO_END {
            return Err(VmError::Device("PCI memory window is full".into()));
        }
        let wiring = PciWiring {
            bar_addr: next_bar,
            intx: Arc::new(IntxLine::new(pin)),
            intx_line: gsi as u8,
            msi: msi.clone(),
            ioevents: ioevents.clone(),
        };
        let dev = VirtioPci::new(model, mem.clone(), wiring)
            .map_err(|e| VmError::Device(format!("virtio-pci: {e}")))?;
        let dev = Arc::new(Mutex::new(dev));
        root.add_device(slot, dev.clone())
            .map_err(|e| VmError::Device(e.to_string()))?;
        mmio.write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dev.clone(), next_bar, VIRTIO_BAR_SIZE)
            .map_err(|e| VmError::Device(e.to_string()))?;
        by_slot.push((slot, dev.clone()));
        devices.push(dev);
        next_bar += VIRTIO_BAR_SIZE;
    }
    let slots = by_slot.iter().map(|(s, _)| *s).collect();
    let mut host = PciHost::new(root, events.clone());
    let bus = mmio.clone();
    host.set_bar_move_handler(Box::new(move |slot, m| {
        if m.bar != 0 {
            return;
        }
        if let Some((_, dev)) = by_slot.iter().find(|(s, _)| *s == slot) {
            let mut bus = bus.write().unwrap_or_else(|e| e.into_inner());
            move_bar(&mut bus, dev, m);
        }
    }));
    Ok((Arc::new(Mutex::new(host)), devices, slots))
}

impl Vm {
    /// Builds the VM and loads the kernel; nothing runs until `run`.
    /// `serial_out` receives what the guest writes to COM1.
    /// The VM, built and loaded: ready to [`Vm::run`].
    pub fn new(cfg: VmConfig, serial_out: Box<dyn Write + Send>) -> Result<Vm, VmError> {
        let mut v = Vm::build(cfg, serial_out)?;
        v.load_guest()?;
        Ok(v)
    }

    /// The VM built, its memory mapped but not yet touched: the kernel or
    /// firmware is loaded by [`Vm::load_guest`]. Between the two the
    /// caller may do what must happen before guest memory is charged to
    /// anyone (vmm enters the VM's cgroups meanwhile).
    pub fn build(cfg: VmConfig, serial_out: Box<dyn Write + Send>) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::KvmOpen)?;
        if cfg.vcpus == 0 {
            return Err(VmError::NoVcpus);
        }
        let max = (kvm.get_max_vcpus() as u32).min(MAX_VCPUS);
        if cfg.vcpus > max {
            return Err(VmError::TooManyVcpus {
                asked: cfg.vcpus,
                max,
            });
        }
        if cfg.mem_size < MIN_MEM {
            return Err(VmError::MemoryTooSmall {
                asked: cfg.mem_size,
                min: MIN_MEM,
            });
        }
        let host = host_memory();
        if cfg.mem_size > host {
            return Err(VmError::MemoryTooLarge {
                asked: cfg.mem_size,
                host,
            });
        }

        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        // Intel VMX needs three pages for the real-mode TSS just below the
        // BIOS; other KVM flavours accept and ignore it.
        vm.set_tss_address(0xfffb_d000)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        // The speaker port 0x61 stays in the kernel with the PIT: Linux
        // reads it in its PIT-based TSC calibration.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        // The CMOS index port, as QEMU does: see `coalesced` (its ring is
        // mapped once there is a vCPU). Registered before the memory slots
        // are: both take KVM's slots lock, which a slot's registration
        // holds through its SRCU grace period.
        let coalesced_pio = kvm.check_extension(Cap::CoalescedPio);
        if coalesced_pio {
            vm.register_coalesced_mmio(IoEventAddress::Pio(RTC_INDEX_PORT.into()), 1)
                .map_err(kvm_err("KVM_REGISTER_COALESCED_MMIO"))?;
        }

        let ranges: Vec<(GuestAddress, usize)> = ram_regions(cfg.mem_size)
            .into_iter()
            .map(|(a, l)| (GuestAddress(a), l as usize))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges)
            .map_err(|e| VmError::Memory(e.to_string()))?;
        let mut slots: Vec<(&'static str, kvm_userspace_memory_region)> = mem
            .iter()
            .enumerate()
            .map(|(slot, region)| {
                let r = kvm_userspace_memory_region {
                    slot: slot as u32,
                    guest_phys_addr: region.start_addr().0,
                    memory_size: region.len(),
                    userspace_addr: region.as_ptr() as u64,
                    flags: 0,
                };
                ("KVM_SET_USER_MEMORY_REGION", r)
            })
            .collect();

        let firmware = match &cfg.firmware {
            Some(fc) => {
                let fw = Firmware::load(&fc.bios).map_err(VmError::Firmware)?;
                // Read-only where KVM can do it: a guest write to its ROM
                // then exits as MMIO and is dropped, as on a flash chip.
                let flags = if kvm.check_extension(Cap::ReadonlyMem) {
                    kvm_bindings::KVM_MEM_READONLY
                } else {
                    0
                };
                let r = kvm_userspace_memory_region {
                    slot: mem.num_regions() as u32,
                    guest_phys_addr: fw.rom_base(),
                    memory_size: fw.rom_len(),
                    userspace_addr: fw.rom_host_addr(),
                    flags,
                };
                slots.push(("KVM_SET_USER_MEMORY_REGION (firmware)", r));
                Some(fw)
            }
            None => None,
        };

        let ctl = Arc::new(Control::new());
        let events: SharedEvents = ctl.clone();
        let irq = |gsi| -> SharedIrq { Arc::new(KvmIrqLine::new(vm.clone(), gsi)) };
        let serial = Arc::new(Mutex::new(Serial::new(irq(IRQ_COM1), serial_out)));
        let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(
            irq(IRQ_SCI),
            events.clone(),
            S5_SLP_TYP,
        )));
        let low = cfg.mem_size.min(MMIO_HOLE_START);
        let mut rtc = Rtc::new(low, cfg.mem_size - low);
        if let Some(fc) = &cfg.firmware {
            for (index, value) in crate::firmware::cmos_settings(fc.boot, cfg.vcpus) {
                rtc.set_nvram(index, value);
            }
        }
        let mut pio = Bus::new();
        let dev_err = |e: devices::BusError| VmError::Device(e.to_string());
        pio.insert(serial.clone(), 0x3f8, 8).map_err(dev_err)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(
            irq(IRQ_KBD),
            irq(I8042_AUX_IRQ),
            events.clone(),
        )));
        pio.insert(i8042.clone(), 0x60, I8042_PORT_LEN)
            .map_err(dev_err)?;
        pio.insert(Arc::new(Mutex::new(rtc)), u64::from(RTC_INDEX_PORT), 2)
            .map_err(dev_err)?;
        let mmio = Arc::new(RwLock::new(Bus::new()));
        let (pci_host, pci_devices, pci_slots) = build_pci(&cfg, &vm, &mem, &events, &mmio)?;
        pio.insert(pci_host.clone(), 0xcf8, 8).map_err(dev_err)?;
        // The ECAM only where the ACPI tables announce it: they describe
        // no PCI bus when it would be empty.
        if crate::acpi::has_pci(&pci_slots) {
            mmio.write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    Arc::new(Mutex::new(PciEcam(pci_host))),
                    PCI_ECAM_ADDR,
                    PCI_ECAM_SIZE,
                )
                .map_err(dev_err)?;
        }
        pio.insert(acpi_pm.clone(), u64::from(PM1A_EVT_PORT), 12)
            .map_err(dev_err)?;
        if cfg.firmware.is_some() {
            // Only firmware reads it; a kernel booted directly has no use
            // for it (and Linux's qemu_fw_cfg driver is not wanted there).
            pio.insert(
                Arc::new(Mutex::new(devices::fw_cfg::FwCfg::new(cfg.vcpus as u16))),
                u64::from(devices::fw_cfg::FW_CFG_PORT),
                devices::fw_cfg::FW_CFG_PORT_LEN,
            )
            .map_err(dev_err)?;
        }
        pio.insert(
            Arc::new(Mutex::new(devices::debugcon::DebugCon::new())),
            u64::from(devices::debugcon::DEBUGCON_PORT),
            1,
        )
        .map_err(dev_err)?;
        // The memory slots, from a thread, now that the PCI devices' I/O
        // event descriptors are registered: those take KVM's slots lock
        // too, and would wait out the slots' grace period. Dropped (joined)
        // before `mem` and `firmware`, declared above it, should the build
        // fail below.
        let slots = PendingSlots::register(&vm, slots)?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        cfg.cpuid.check(&supported).map_err(VmError::Cpuid)?;
        let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
        let mut tsc_khz_bsp = 0;
        for i in 0..cfg.vcpus {
            let fd = vm
                .create_vcpu(u64::from(i))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            // 0 if KVM cannot say; guests then calibrate the TSC themselves.
            let tsc_khz = fd.get_tsc_khz().unwrap_or(0);
            if i == 0 {
                tsc_khz_bsp = tsc_khz;
            }
            let cpuid: CpuId = vcpu_cpuid(&supported, i, cfg.vcpus, tsc_khz, &cfg.cpuid);
            fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            let lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
            vcpus.push(VcpuSlot {
                fd: Some(fd),
                lapic,
            });
        }

        let coalesced = match vcpus.first().and_then(|v| v.fd.as_ref()) {
            Some(fd) if coalesced_pio => {
                let ring = CoalescedRing::map(fd).map_err(|e| {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    VmError::Kvm(
                        "mmap of the coalesced I/O ring",
                        kvm_ioctls::Error::new(errno),
                    )
                })?;
                Some(Mutex::new(ring))
            }
            _ => None,
        };

        let backdoor = cfg.guest_tools.then(|| {
            let facts = HostFacts {
                tsc_hz: u64::from(tsc_khz_bsp) * 1000,
                mem_size: cfg.mem_size,
                uuid: cfg.uuid,
            };
            Arc::new(Mutex::new(Backdoor::new(
                facts,
                random_u64(),
                DEFAULT_TCLO_TIMEOUT_MS,
            )))
        });
        let io = Arc::new(IoBuses {
            pio,
            mmio,
            regs_dev: backdoor
                .clone()
                .map(|b| -> (u16, Arc<Mutex<dyn RegsDevice>>) { (PORT_LB, b) }),
            sync_regs: kvm.check_extension(Cap::SyncRegs),
            coalesced,
        });

        let irqchip = IrqchipSnapshot {
            chips: [
                KVM_IRQCHIP_PIC_MASTER,
                KVM_IRQCHIP_PIC_SLAVE,
                KVM_IRQCHIP_IOAPIC,
            ]
            .into_iter()
            .map(|id| {
                let mut c = kvm_irqchip {
                    chip_id: id,
                    ..Default::default()
                };
                vm.get_irqchip(&mut c).map(|_| c)
            })
            .collect::<Result<_, _>>()
            .map_err(kvm_err("KVM_GET_IRQCHIP"))?,
            pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
        };

        install_kick_handler();
        let handle = VmHandle {
            ctl: ctl.clone(),
            acpi_pm,
            serial,
            tools_news: backdoor
                .as_ref()
                .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).news()),
            backdoor,
        };
        let v = Vm {
            slots,
            cfg,
            vm,
            mem,
            io,
            ctl,
            vcpus,
            irqchip,
            handle,
            kind: KernelKind::Elf64,
            boots: 0,
            i8042,
            pci_devices,
            pci_slots,
            firmware,
        };
        Ok(v)
    }

    pub fn handle(&self) -> VmHandle {
        self.handle.clone()
    }

    /// What kind of kernel was loaded.
    pub fn kernel_kind(&self) -> KernelKind {
        self.kind
    }

    /// How many times the guest has been started (1 + reboots).
    pub fn boots(&self) -> u32 {
        self.boots
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// (Re)loads kernel and firmware tables and puts every vCPU in its
    /// power-on state: after [`Vm::build`], the first time guest memory
    /// is touched; again at every reset.
    pub fn load_guest(&mut self) -> Result<(), VmError> {
        if let Some(fw) = &self.firmware {
            // Firmware builds its own tables and finds its own way.
            fw.copy_low(&self.mem).map_err(VmError::Firmware)?;
            self.kind = KernelKind::Firmware;
            return self.setup_vcpus(EntryMode::Reset);
        }
        let acpi = AcpiConfig {
            num_cpus: self.cfg.vcpus,
            mem_size: self.cfg.mem_size,
            pci_slots: self.pci_slots.clone(),
        };
        let rsdp =
            create_acpi_tables(&self.mem, &acpi).map_err(|e| VmError::Acpi(e.to_string()))?;
        // The MP table beside them, saying what the MADT says: Linux's scan
        // for it costs seconds of emulated CPL0 here when there is none.
        let mp = crate::mptable::MpConfig {
            num_cpus: self.cfg.vcpus,
            lapic_version: self
                .vcpus
                .first()
                .map_or(crate::mptable::KVM_LAPIC_VERSION, |s| {
                    crate::mptable::lapic_version(&s.lapic)
                }),
        };
        crate::mptable::create_mp_table(&self.mem, &mp)
            .map_err(|e| VmError::Acpi(e.to_string()))?;
        // Before the first run RAM is as mmap made it: zero.
        let ram_is_zero = self.boots == 0;
        let (entry, kind) = boot::load(
            &self.mem,
            self.cfg.mem_size,
            acpi.has_pci(),
            &self.cfg.boot,
            rsdp,
            ram_is_zero,
        )?;
        write_boot_tables(&self.mem, entry).map_err(|e| VmError::Boot(e.into()))?;
        self.kind = kind;
        self.setup_vcpus(entry)
    }

    /// Puts every vCPU in its power-on state, the boot CPU at `entry`.
    fn setup_vcpus(&mut self, entry: EntryMode) -> Result<(), VmError> {
        self.slots.wait()?;
        for (i, slot) in self.vcpus.iter().enumerate() {
            let fd = slot.fd.as_ref().expect("vCPUs are parked between runs");
            let boot: Option<EntryMode> = (i == 0).then_some(entry);
            setup_vcpu(fd, boot, &slot.lapic).map_err(kvm_err("vCPU setup"))?;
            // APs wait for INIT/SIPI from the boot CPU, as on hardware.
            let state = if i == 0 {
                KVM_MP_STATE_RUNNABLE
            } else {
                KVM_MP_STATE_UNINITIALIZED
            };
            fd.set_mp_state(kvm_mp_state { mp_state: state })
                .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        }
        Ok(())
    }

    /// Puts interrupt controllers back to power-on and reloads the guest.
    fn reset(&mut self) -> Result<(), VmError> {
        for c in &self.irqchip.chips {
            self.vm.set_irqchip(c).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        self.vm
            .set_pit2(&self.irqchip.pit)
            .map_err(kvm_err("KVM_SET_PIT2"))?;
        if let Some(b) = &self.handle.backdoor {
            b.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
        self.i8042.lock().unwrap_or_else(|e| e.into_inner()).reset();
        for dev in &self.pci_devices {
            let moves = dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .power_on_reset();
            let any: Arc<Mutex<dyn BusDevice>> = dev.clone();
            let mut bus = self.io.mmio.write().unwrap_or_else(|e| e.into_inner());
            for m in moves {
                move_bar(&mut bus, &any, m);
            }
        }
        self.load_guest()
    }

    /// Runs the guest until it powers off, crashes, is stopped by the host,
    /// or resets with `reboot` off. Guest resets with `reboot` on restart
    /// the guest in place.
    pub fn run(&mut self) -> Result<VmExit, VmError> {
        loop {
            self.boots += 1;
            let reason = self.run_once();
            match reason {
                StopReason::Reset if self.cfg.reboot => {
                    log::info!("guest reset: rebooting");
                    self.reset()?;
                }
                StopReason::Reset => return Ok(VmExit::Reset),
                StopReason::PowerOff => {
                    let state = self.handle.guest_state().last_state_change;
                    let halted =
                        state.is_some_and(|s| s.ok && s.power_state() == Some(PowerState::Halt));
                    return Ok(if halted {
                        VmExit::ToolsHalt
                    } else {
                        VmExit::PowerOff
                    });
                }
                StopReason::Crash(s) => return Ok(VmExit::Crash(s)),
                StopReason::Host => return Ok(VmExit::Stopped),
            }
        }
    }

    fn run_once(&mut self) -> StopReason {
        let n = self.vcpus.len() as u32;
        self.ctl.begin(n);
        let threads: Vec<JoinHandle<VcpuFd>> = self
            .vcpus
            .iter_mut()
            .enumerate()
            .map(|(i, slot)| {
                let fd = slot.fd.take().expect("vCPU fd present");
                let (ctl, io) = (self.ctl.clone(), self.io.clone());
                devices::threads::spawn(ThreadKind::Vcpu, &format!("vcpu{i}"), move || {
                    run_vcpu(fd, i as u32, ctl, io)
                })
                .expect("spawning a vCPU thread")
            })
            .collect();
        {
            use std::os::unix::thread::JoinHandleExt;
            self.ctl
                .set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
        }
        let reason = loop {
            if let Some(r) = self.ctl.wait_stop(Duration::from_secs(3600)) {
                break r;
            }
        };
        // Kick again until all are out: a stop that raced with the thread
        // list being published would otherwise leave a vCPU in KVM_RUN.
        while !self.ctl.wait_all_out(Duration::from_millis(100)) {
            self.ctl.kick_all();
        }
        self.ctl.set_threads(Vec::new());
        for (slot, t) in self.vcpus.iter_mut().zip(threads) {
            slot.fd = Some(t.join().expect("vCPU thread does not panic"));
        }
        reason
    }
}
