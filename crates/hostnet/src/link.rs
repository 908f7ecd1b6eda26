//! Links, bridges, ports, groups and addresses over rtnetlink.

use std::fmt;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec};

use crate::{valid_ifname, Error};

/// A route netlink socket (NETLINK_ROUTE) in one network namespace.
///
/// Every method names links by name and resolves the name per call, so a
/// `Netlink` holds no state about links and may be shared (`&self`) by
/// concurrent tasks. Cloning gives another handle on the same socket.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

/// A link as the kernel described it, with the parts vmd looks at.
struct Link {
    index: u32,
    message: LinkMessage,
}

impl Link {
    /// IFLA_INFO_KIND, "" when the kernel gives none (lo, physical NICs).
    fn kind(&self) -> String {
        self.message
            .attributes
            .iter()
            .filter_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .flatten()
            .find_map(|info| match info {
                LinkInfo::Kind(kind) => Some(kind.to_string()),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn is_bridge(&self) -> bool {
        self.kind() == InfoKind::Bridge.to_string()
    }

    /// IFLA_MASTER: the index of the link this one is a port of.
    fn controller(&self) -> Option<u32> {
        self.message.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(index) if *index != 0 => Some(*index),
            _ => None,
        })
    }

    fn name(&self) -> Option<String> {
        self.message.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
    }
}

/// The words for a link kind in "X exists and is not a bridge (it is ...)".
fn describe_kind(kind: &str) -> String {
    if kind.is_empty() {
        "it has no link kind, like a physical NIC".to_string()
    } else {
        format!("it is a {kind}")
    }
}

/// `what` failed with the rtnetlink error `e`.
fn nl_error(what: impl fmt::Display, e: rtnetlink::Error) -> Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => match msg.raw_code().checked_abs() {
            Some(errno) if errno != 0 => Error::errno(what, errno),
            _ => Error::new(format!(
                "{what}: the kernel answered with an unexpected acknowledgement"
            )),
        },
        rtnetlink::Error::RequestFailed => {
            Error::new(format!("{what}: the netlink connection is closed"))
        }
        rtnetlink::Error::UnexpectedMessage(_) => {
            Error::new(format!("{what}: unexpected netlink reply from the kernel"))
        }
        other => Error::new(format!("{what}: {other}")),
    }
}

/// The kernel's errno behind an rtnetlink error, if it is one.
fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.raw_code().checked_abs(),
        _ => None,
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(Error::new(format!(
            "invalid interface name {name:?}: 1 to 15 characters, none of them '/', ':' or white space"
        )))
    }
}

fn no_interface(name: &str) -> Error {
    Error {
        message: format!("no interface {name}"),
        errno: Some(libc::ENODEV),
    }
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and
    /// spawns its connection task on the current tokio runtime (which needs
    /// its I/O driver enabled). The socket stays in that namespace whatever
    /// thread later uses it.
    pub async fn connect() -> Result<Netlink, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::new("opening a netlink socket: no tokio runtime to run it on"))?;
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| match e.raw_os_error() {
                Some(errno) => Error::errno("opening a netlink socket", errno),
                None => Error::new(format!("opening a netlink socket: {e}")),
            })?;
        runtime.spawn(connection);
        Ok(Netlink { handle })
    }

    /// The link `name`, None if there is none.
    async fn find(&self, name: &str) -> Result<Option<Link>, Error> {
        check_name(name)?;
        let mut replies = self.handle.link().get().match_name(name).execute();
        match replies.try_next().await {
            Ok(Some(message)) => Ok(Some(Link {
                index: message.header.index,
                message,
            })),
            Ok(None) => Err(Error::new(format!(
                "looking up interface {name}: no reply from the kernel"
            ))),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_error(format_args!("looking up interface {name}"), e)),
        }
    }

    /// The link `name`, or the error "no interface NAME".
    async fn get(&self, name: &str) -> Result<Link, Error> {
        self.find(name).await?.ok_or_else(|| no_interface(name))
    }

    /// The name of the link with index `index`, None if there is none.
    async fn name_of(&self, index: u32) -> Result<Option<String>, Error> {
        let mut replies = self.handle.link().get().match_index(index).execute();
        match replies.try_next().await {
            Ok(Some(message)) => Ok(Link { index, message }.name()),
            Ok(None) => Ok(None),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_error(format_args!("looking up interface #{index}"), e)),
        }
    }

    /// Sends RTM_SETLINK with `message` for the link `name`; ENODEV becomes
    /// "no interface NAME".
    async fn set(&self, name: &str, what: String, message: LinkMessage) -> Result<(), Error> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| match errno_of(&e) {
                Some(libc::ENODEV) => no_interface(name),
                _ => nl_error(what, e),
            })
    }

    /// The kind of link `name` ("bridge", "tun", "veth", "dummy", ... from
    /// IFLA_INFO_KIND; "" when the kernel gives none), None if absent.
    pub async fn link_kind(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.find(name).await?.map(|link| link.kind()))
    }

    /// Creates bridge `name` if missing, administratively down (vmd brings it
    /// up with [`Netlink::set_up`]). Ok(true): created now. Ok(false): a
    /// bridge of that name already existed (left as it is). Err: it exists
    /// and is not a bridge (and is left untouched), or it cannot be created.
    pub async fn ensure_bridge(&self, name: &str) -> Result<bool, Error> {
        let not_a_bridge = |kind: &str| {
            Error::new(format!(
                "{name} exists and is not a bridge ({})",
                describe_kind(kind)
            ))
        };
        if let Some(link) = self.find(name).await? {
            return if link.is_bridge() {
                Ok(false)
            } else {
                Err(not_a_bridge(&link.kind()))
            };
        }
        // NLM_F_CREATE | NLM_F_EXCL: never touches a link that appeared since.
        let message = LinkMessageBuilder::<LinkBridge>::new(name).build();
        match self.handle.link().add(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => match self.find(name).await? {
                Some(link) if link.is_bridge() => Ok(false),
                Some(link) => Err(not_a_bridge(&link.kind())),
                None => Err(nl_error(format_args!("creating bridge {name}"), e)),
            },
            Err(e) => Err(nl_error(format_args!("creating bridge {name}"), e)),
        }
    }

    /// Deletes link `name` (Ok if it is already gone).
    pub async fn delete_link(&self, name: &str) -> Result<(), Error> {
        let Some(link) = self.find(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(nl_error(format_args!("deleting interface {name}"), e)),
        }
    }

    /// Sets the link administratively up or down.
    pub async fn set_up(&self, name: &str, up: bool) -> Result<(), Error> {
        let link = self.get(name).await?;
        let builder = LinkUnspec::new_with_index(link.index);
        let message = if up { builder.up() } else { builder.down() }.build();
        let what = format!("setting {name} {}", if up { "up" } else { "down" });
        self.set(name, what, message).await
    }

    /// Whether the link is administratively up (IFF_UP).
    pub async fn is_up(&self, name: &str) -> Result<bool, Error> {
        let link = self.get(name).await?;
        Ok(link.message.header.flags.contains(LinkFlags::Up))
    }

    /// Makes `name` a port of bridge `bridge` (IFLA_MASTER / controller),
    /// moving it from any bridge it was a port of.
    pub async fn set_master(&self, name: &str, bridge: &str) -> Result<(), Error> {
        let link = self.get(name).await?;
        let master = self.get(bridge).await?;
        if !master.is_bridge() {
            return Err(Error::new(format!(
                "adding {name} to bridge {bridge}: {bridge} is not a bridge ({})",
                describe_kind(&master.kind())
            )));
        }
        let message = LinkUnspec::new_with_index(link.index)
            .controller(master.index)
            .build();
        self.set(name, format!("adding {name} to bridge {bridge}"), message)
            .await
    }

    /// The bridge `name` is a port of, if any (by name).
    pub async fn master(&self, name: &str) -> Result<Option<String>, Error> {
        let link = self.get(name).await?;
        match link.controller() {
            Some(index) => self.name_of(index).await,
            None => Ok(None),
        }
    }

    /// Sets the link's interface group (IFLA_GROUP; `ip link set dev X group
    /// N`).
    pub async fn set_group(&self, name: &str, group: u32) -> Result<(), Error> {
        let link = self.get(name).await?;
        let message = LinkUnspec::new_with_index(link.index)
            .link_group(group)
            .build();
        self.set(
            name,
            format!("setting the group of {name} to {group}"),
            message,
        )
        .await
    }

    /// The link's group number (0, "default", unless set).
    pub async fn group(&self, name: &str) -> Result<u32, Error> {
        let link = self.get(name).await?;
        Ok(link
            .message
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Group(group) => Some(*group),
                _ => None,
            })
            .unwrap_or(0))
    }

    /// Adds an address (IPv4 or IPv6) with prefix length; one that is already
    /// there is not an error.
    pub async fn add_addr(&self, name: &str, addr: IpAddr, prefix_len: u8) -> Result<(), Error> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(Error::new(format!(
                "adding {addr}/{prefix_len} to {name}: the prefix length is 0 to {max}"
            )));
        }
        let link = self.get(name).await?;
        match self
            .handle
            .address()
            .add(link.index, addr, prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Err(no_interface(name)),
            Err(e) => Err(nl_error(
                format_args!("adding {addr}/{prefix_len} to {name}"),
                e,
            )),
        }
    }

    /// The addresses on the link (IPv4 and IPv6, link-local ones included).
    pub async fn addrs(&self, name: &str) -> Result<Vec<(IpAddr, u8)>, Error> {
        let link = self.get(name).await?;
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error(format_args!("listing the addresses of {name}"), e))?;
        Ok(messages
            .iter()
            .filter_map(|message| {
                // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
                // peer on point-to-point links, and the only one IPv6 gives.
                let local = message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let address = message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                local.or(address).map(|ip| (ip, message.header.prefix_len))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// vmd runs these on a multi-threaded runtime, from spawned tasks.
    #[allow(dead_code)]
    fn futures_are_send(nl: &Netlink, ip: IpAddr) {
        assert_send(&Netlink::connect());
        assert_send(&nl.link_kind("x"));
        assert_send(&nl.ensure_bridge("x"));
        assert_send(&nl.delete_link("x"));
        assert_send(&nl.set_up("x", true));
        assert_send(&nl.is_up("x"));
        assert_send(&nl.set_master("x", "y"));
        assert_send(&nl.master("x"));
        assert_send(&nl.set_group("x", 1));
        assert_send(&nl.group("x"));
        assert_send(&nl.add_addr("x", ip, 24));
        assert_send(&nl.addrs("x"));
    }

    #[test]
    fn kinds() {
        assert_eq!(describe_kind("veth"), "it is a veth");
        assert!(describe_kind("").contains("no link kind"));
    }
}
