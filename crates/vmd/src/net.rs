//! The host side of VM networks, as OpenBSD's vmd does it in its privileged
//! process (priv.c): each `switch` is a Linux bridge, each VM interface a
//! tap that vmd opens, configures and hands to the VM process as a file
//! descriptor (the VM process needs no network privilege), and a `local
//! interface` gets its host-side address here while the VM process serves
//! the guest's DHCP.
//!
//! Taps are not persistent: the VM process holds the only descriptor, so
//! a tap (and its bridge membership and address) goes away with the VM.
//! Bridges vmd created are removed when vmd exits (unless it leaves its
//! VMs running: the next vmd takes them over); bridges it found are
//! never removed.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use api::v1::InterfaceStatus;
use hostnet::Netlink;
use tokio::sync::OnceCell;
use vmconf::{format_lladdr, Globals, Interface, Switch, VmDef};

#[derive(Default)]
pub struct HostNet {
    /// Connected on first use: a vmd without networks never needs netlink
    /// (nor CAP_NET_ADMIN).
    nl: OnceCell<Netlink>,
    /// Bridges this vmd created (and so removes at exit).
    created: Mutex<BTreeSet<String>>,
}

/// What one VM start needs from the host network: the taps, the VM
/// process's `--net` arguments for them (`fd=control`, in that order),
/// and what `vmctl status` shows.
pub struct Prepared {
    pub fds: Vec<OwnedFd>,
    pub args: Vec<String>,
    pub status: Vec<InterfaceStatus>,
}

impl HostNet {
    async fn nl(&self) -> Result<&Netlink, String> {
        self.nl
            .get_or_try_init(|| async { Netlink::connect().await.map_err(|e| e.to_string()) })
            .await
    }

    /// Creates (if missing) and sets up every enabled switch as vm.conf
    /// says: at start, on reload and `vmctl reset switches`. Returns one
    /// message per switch that could not be set up; the others are.
    pub async fn configure_switches(&self, switches: &[Switch]) -> Vec<String> {
        let mut errors = Vec::new();
        for sw in switches.iter().filter(|s| s.enabled) {
            if let Err(e) = self.configure_switch(sw).await {
                errors.push(format!("switch {}: {e}", sw.name));
            }
        }
        errors
    }

    async fn configure_switch(&self, sw: &Switch) -> Result<(), String> {
        let nl = self.nl().await?;
        if nl
            .ensure_bridge(&sw.interface)
            .await
            .map_err(|e| e.to_string())?
        {
            tracing::info!(switch = %sw.name, "created bridge {}", sw.interface);
            self.created
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(sw.interface.clone());
        }
        if let Some(g) = &sw.group {
            let n = hostnet::parse_group(g).map_err(|e| e.to_string())?;
            nl.set_group(&sw.interface, n)
                .await
                .map_err(|e| e.to_string())?;
        }
        nl.set_up(&sw.interface, sw.up)
            .await
            .map_err(|e| e.to_string())
    }

    /// The bridges this vmd created (or took over from the vmd before it).
    pub fn created(&self) -> Vec<String> {
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Takes over bridges the previous vmd created and left for its VMs:
    /// they are this vmd's to remove at its exit.
    pub fn take_over(&self, names: Vec<String>) {
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(names);
    }

    /// Removes the bridges this vmd created (at exit).
    pub async fn remove_created(&self) {
        let names: Vec<String> =
            std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if names.is_empty() {
            return;
        }
        let Ok(nl) = self.nl().await else { return };
        for b in names {
            match nl.delete_link(&b).await {
                Ok(()) => tracing::info!("removed bridge {b}"),
                Err(e) => tracing::warn!("removing bridge {b}: {e}"),
            }
        }
    }

    /// Opens and configures the taps of VM `vmid` (`def`): on error nothing
    /// stays behind (the taps vanish with their descriptors; a bridge
    /// created on the way stays, as a configured switch).
    pub async fn prepare(
        &self,
        vmid: u32,
        def: &VmDef,
        switches: &[Switch],
        globals: &Globals,
    ) -> Result<Prepared, String> {
        let mut p = Prepared {
            fds: Vec::new(),
            args: Vec::new(),
            status: Vec::new(),
        };
        for (idx, iface) in def.interfaces.iter().enumerate() {
            self.prepare_one(&mut p, vmid, idx, iface, def, switches, globals)
                .await
                .map_err(|e| format!("vm {}: interface {idx}: {e}", def.name))?;
        }
        Ok(p)
    }

    #[allow(clippy::too_many_arguments)]
    async fn prepare_one(
        &self,
        p: &mut Prepared,
        vmid: u32,
        idx: usize,
        iface: &Interface,
        def: &VmDef,
        switches: &[Switch],
        globals: &Globals,
    ) -> Result<(), String> {
        if iface.rdomain.is_some() {
            return Err("rdomain is not supported on Linux".into());
        }
        let sw = match &iface.switch {
            Some(name) => {
                let sw = switches
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| format!("unknown switch {name}"))?;
                if !sw.enabled {
                    return Err(format!("switch {name} is disabled"));
                }
                if sw.rdomain.is_some() {
                    return Err(format!("switch {name}: rdomain is not supported on Linux"));
                }
                Some(sw)
            }
            None => None,
        };
        let group = iface
            .group
            .as_ref()
            .or(sw.and_then(|s| s.group.as_ref()))
            .map(|g| hostnet::parse_group(g).map_err(|e| e.to_string()))
            .transpose()?;
        let local = if iface.local {
            let prefix6 = globals
                .local_inet6
                .then_some((globals.local_prefix6.addr, globals.local_prefix6.len));
            let a = netcfg::local::local_addrs(
                (globals.local_prefix.addr, globals.local_prefix.len),
                prefix6,
                vmid,
                idx as u32,
            )
            .map_err(|e| e.to_string())?;
            Some(a)
        } else {
            None
        };

        let (fd, tap) = hostnet::open_tap(iface.name.as_deref().unwrap_or("tap%d"))
            .map_err(|e| e.to_string())?;
        let nl = self.nl().await?;
        let e = |e: hostnet::Error| e.to_string();
        if let Some(sw) = sw {
            self.configure_switch(sw).await?;
            nl.set_master(&tap, &sw.interface).await.map_err(e)?;
        }
        if let Some(g) = group {
            nl.set_group(&tap, g).await.map_err(e)?;
        }
        if let Some(a) = &local {
            nl.add_addr(&tap, IpAddr::V4(a.host4), netcfg::local::PREFIX_LEN4)
                .await
                .map_err(e)?;
            if let Some((host6, _)) = a.inet6 {
                nl.add_addr(&tap, IpAddr::V6(host6), netcfg::local::PREFIX_LEN6)
                    .await
                    .map_err(e)?;
            }
        }
        nl.set_up(&tap, iface.up).await.map_err(e)?;

        let mac = iface
            .lladdr
            .unwrap_or_else(|| netcfg::mac::stable_mac(def.name.as_bytes(), idx as u8));
        let locked = iface.locked || sw.is_some_and(|s| s.locked);
        let mut arg = format!("--net=tap={tap},fd=control,mac={}", format_lladdr(&mac));
        if locked {
            arg.push_str(",locked");
        }
        if local.is_some() {
            arg.push_str(&format!(
                ",local={vmid}:{idx},prefix={}",
                globals.local_prefix
            ));
            // The name the DHCP server gives the guest, in hostname
            // characters (so never a comma that would end the setting).
            if let Some(h) = netcfg::dhcp::sanitize_hostname(&def.name) {
                arg.push_str(&format!(",hostname={h}"));
            }
        }
        p.fds.push(fd);
        p.args.push(arg);
        p.status.push(InterfaceStatus {
            tap,
            switch: sw.map(|s| s.name.clone()),
            bridge: sw.map(|s| s.interface.clone()),
            lladdr: format_lladdr(&mac),
            locked,
            local: local.map(|a| format!("{}/{}", a.host4, netcfg::local::PREFIX_LEN4)),
            guest: local.map(|a| a.guest4.to_string()),
        });
        Ok(())
    }
}
