//! KVM plumbing for PCI devices: MSI routes and irqfds, ioeventfds, and
//! INTx lines shared between functions.
//!
//! KVM keeps one GSI routing table per VM and `KVM_SET_GSI_ROUTING`
//! replaces all of it, so the table is rebuilt whole from what we keep
//! here: first the routes KVM sets up by default for the in-kernel
//! irqchip (GSIs 0-15 to both 8259s and the IOAPIC, 16-23 to the IOAPIC
//! only; dropping them would cut the legacy devices off), then one MSI
//! route per live MSI-X vector.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use devices::msix::{MsiMessage, MsiRoutes, MsiVector};
use devices::{IoEvents, IrqLine};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Pins of KVM's IOAPIC; GSIs from here on are ours for MSI.
const IOAPIC_PINS: u32 = 24;

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(gsi: u32, m: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = m.addr as u32;
    e.u.msi.address_hi = (m.addr >> 32) as u32;
    e.u.msi.data = m.data;
    e
}

/// The routes KVM installs at KVM_CREATE_IRQCHIP (kvm_setup_default_irq_routing).
fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            v.push(irqchip_entry(gsi, chip, gsi % 8));
        }
    }
    v
}

struct Table {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

/// MSI delivery over KVM: GSIs from 24 up, each with an irqfd.
pub struct KvmMsi {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
}

impl KvmMsi {
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmMsi {
            vm,
            table: Mutex::new(Table {
                next_gsi: IOAPIC_PINS,
                msi: BTreeMap::new(),
            }),
        }
    }

    fn commit(&self, t: &Table) -> io::Result<()> {
        let mut entries = default_routes();
        entries.extend(t.msi.iter().map(|(&gsi, &m)| msi_entry(gsi, m)));
        let mut routing = KvmIrqRouting::new(entries.len())
            .map_err(|e| io::Error::other(format!("routing table: {e:?}")))?;
        routing.as_mut_slice().copy_from_slice(&entries);
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

impl MsiRoutes for KvmMsi {
    fn allocate(&self, count: usize) -> io::Result<Vec<MsiVector>> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let fd = EventFd::new(libc::EFD_NONBLOCK)?;
            let gsi = t.next_gsi;
            self.vm
                .register_irqfd(&fd, gsi)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
            t.next_gsi += 1;
            out.push(MsiVector { gsi, fd });
        }
        Ok(out)
    }

    fn route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match msg {
            Some(m) => t.msi.insert(gsi, m) != Some(m),
            None => t.msi.remove(&gsi).is_some(),
        };
        if changed {
            self.commit(&t)?;
        }
        Ok(())
    }
}

/// ioeventfds on MMIO addresses, any access width.
pub struct KvmIoEvents(pub Arc<VmFd>);

impl IoEvents for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        self.0
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        self.0
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// A level-triggered IOAPIC pin that several PCI functions may share
/// (wired-OR, as INTx lines are on a real board): high while any of them
/// asserts it.
pub struct SharedLevelGsi {
    vm: Arc<VmFd>,
    gsi: u32,
    asserted: Mutex<u32>,
}

impl SharedLevelGsi {
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> Arc<Self> {
        Arc::new(SharedLevelGsi {
            vm,
            gsi,
            asserted: Mutex::new(0),
        })
    }

    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    fn change(&self, up: bool) {
        let mut n = self.asserted.lock().unwrap_or_else(|e| e.into_inner());
        let before = *n;
        *n = if up {
            before + 1
        } else {
            before.saturating_sub(1)
        };
        if (before == 0) != (*n == 0) {
            if let Err(e) = self.vm.set_irq_line(self.gsi, *n > 0) {
                log::error!("KVM_IRQ_LINE gsi {}: {e}", self.gsi);
            }
        }
    }
}

/// One function's INTA# on a [`SharedLevelGsi`].
pub struct IntxLine {
    pin: Arc<SharedLevelGsi>,
    high: Mutex<bool>,
}

impl IntxLine {
    pub fn new(pin: Arc<SharedLevelGsi>) -> Self {
        IntxLine {
            pin,
            high: Mutex::new(false),
        }
    }
}

impl IrqLine for IntxLine {
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }

    fn set_level(&self, high: bool) {
        let mut h = self.high.lock().unwrap_or_else(|e| e.into_inner());
        if *h != high {
            *h = high;
            self.pin.change(high);
        }
    }
}
