//! `net`: a polling virtio-net driver at CPL3 with a minimal IPv4 stack
//! (ARP, IPv4, ICMP echo, UDP, a DHCP client) for tests and benchmarks:
//! `rt::net` (its module comment describes the driver and the stack), run
//! from the command line. The same guest runs on QEMU's `virtio-net-pci`
//! and on our VMM's device.
//!
//! # Command line (`key=value` words; numbers decimal or `0x` hex)
//! | key | default | meaning |
//! |---|---|---|
//! | `pcicfg=cf8` | auto | configuration mechanism #1 instead of ECAM (as in `blk`) |
//! | `pcimem=0xADDR` | none | where to put memory BARs the firmware left unassigned (as in `blk`) |
//! | `mrg=0` | 1 | do not negotiate VIRTIO_NET_F_MRG_RXBUF even if offered |
//! | `ip=A.B.C.D[/P]` | none | static address, prefix `P` (default 24) |
//! | `gw=A.B.C.D` | none | router for a static address |
//! | `dhcp=1` | 0 | get the address by DHCP (overrides `ip=`) |
//! | `echo=PORT` | none | answer UDP datagrams to PORT by sending them back |
//! | `count=N` | 0 | `echo`: stop after N datagrams (0: only silence ends it) |
//! | `blast=N` | 0 | send N UDP datagrams to `to=` as fast as the TX ring allows |
//! | `to=A.B.C.D:PORT` | none | `blast` destination |
//! | `size=BYTES` | 1400 | `blast` UDP payload size (at most MTU - 28) |
//! | `sport=PORT` | 40000 | `blast` source port |
//! | `srcmac=XX:XX:XX:XX:XX:XX` | the device's | source MAC of every frame sent (see below) |
//! | `timeout_ms=T` | 10000 | longest wait: link up, ARP, DHCP, TX completion; for `echo`, the silence that ends it |
//!
//! The steps run in this order: device set-up, address (`dhcp` or `ip`),
//! `blast`, `echo`. `blast` and `echo` need an address.
//!
//! `srcmac=` makes the guest claim another MAC than its device's (a
//! spoofing guest, for tests of `locked lladdr`): every frame it sends
//! (ARP, DHCP, echo replies, blast) carries that source address, and it
//! also names itself by it where a protocol asks (ARP sender hardware
//! address, DHCP `chaddr` and client identifier). Frames addressed to
//! either MAC are taken. The device is set up as usual: the driver never
//! writes the device's MAC (read-only in virtio 1.x, and there is no
//! VIRTIO_NET_F_CTRL_MAC_ADDR here); a virtio-net device sends whatever
//! frame it is given.
//!
//! # Serial output
//! After rt's `testguest net: boot via ...` line:
//! * `net: device 00:<dd>.<f> mac <xx:xx:xx:xx:xx:xx> features 0x<hex>
//!   mtu <n|->`: `dd`, `f` in hex; `features` the negotiated bits; `mac`
//!   from the configuration space (VIRTIO_NET_F_MAC), else generated
//!   (locally administered, from the TSC); `mtu` the configuration field
//!   if VIRTIO_NET_F_MTU was negotiated, else `-`;
//! * `srcmac=`: `net: srcmac <xx:xx:xx:xx:xx:xx>`, the MAC sent from;
//! * `dhcp=1`: `net: dhcp ip <a.b.c.d>/<prefix> router <r|-> server <s>`
//!   (`-`: the ACK named no router; the prefix from the subnet mask
//!   option, 24 without one);
//! * `ip=`: `net: ip <a.b.c.d>/<prefix>`;
//! * `blast=N`: `net: blast <N> datagrams <bytes> bytes cycles=<C>
//!   exits=<E>`: `bytes` = N × size (UDP payload), `C` TSC cycles from the
//!   first datagram queued to the last one completed by the device, `E`
//!   TX queue notifications (MMIO writes, one VM exit each);
//! * `echo=PORT`: `net: echo port <PORT> ready` once it listens, then
//!   `net: echoed <n>` when `count` datagrams were echoed or after
//!   `timeout_ms` of silence (with `count=N`, fewer than N is a failure);
//! * `net: done`, then power-off.
//!
//! Any failure prints `net: FAIL <why>` (`net: FAIL dhcp <why>` for DHCP)
//! and powers off.
//!
//! The stack answers ARP requests and ICMP echo requests for the guest's
//! address only while the guest waits for ARP or DHCP, blasts or echoes:
//! it is polled, never interrupted.
#![no_std]
#![no_main]

use core::fmt;

use rt::net::{self, finish_udp, parse_ip, parse_mac, Ip, Mac, Net, Options, Router, UdpAddr};
use rt::pci::{Access, MemWindow, Pci};
use rt::println;
use rt::virtio;

rt::guest!("net", main);

#[derive(Debug)]
enum Fail {
    Net(net::Error),
    Msg(&'static str),
    Echo { got: u64, want: u64 },
}

impl From<net::Error> for Fail {
    fn from(e: net::Error) -> Fail {
        Fail::Net(e)
    }
}

impl From<virtio::Error> for Fail {
    fn from(e: virtio::Error) -> Fail {
        Fail::Net(e.into())
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Fail::Net(e) => write!(f, "{e}"),
            Fail::Msg(why) => write!(f, "{why}"),
            Fail::Echo { got, want } => {
                write!(f, "echo: silence after {got} of {want} datagrams")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Echo and blast.

fn echo(net: &mut Net, port: u16, count: u64) -> Result<(), Fail> {
    println!("net: echo port {port} ready");
    let mut n = 0u64;
    let mut deadline = virtio::deadline_us(net.timeout_us);
    while count == 0 || n < count {
        if rt::io::rdtsc() > deadline {
            break;
        }
        let Some(d) = net.poll()? else {
            net.tx.reclaim()?;
            rt::io::pause();
            continue;
        };
        if d.from.dport != port || d.from.dst_ip != net.ip {
            continue;
        }
        net.reply_udp(&d)?;
        n += 1;
        deadline = virtio::deadline_us(net.timeout_us);
    }
    net.tx.flush(net.timeout_us)?;
    println!("net: echoed {n}");
    if count != 0 && n < count {
        return Err(Fail::Echo {
            got: n,
            want: count,
        });
    }
    Ok(())
}

fn blast(net: &mut Net, n: u64, to: ([u8; 4], u16), size: usize) -> Result<(), Fail> {
    let mtu = usize::from(net.mtu.unwrap_or(1500)).min(1500);
    if size + 28 > mtu {
        return Err(Fail::Msg("blast: size= larger than the MTU allows"));
    }
    let dst_mac = net.resolve(to.0)?;
    let a = UdpAddr {
        src_mac: net.src_mac,
        dst_mac,
        src_ip: net.ip,
        dst_ip: to.0,
        sport: rt::cmdline::get_u64("sport", 40000) as u16,
        dport: to.1,
    };
    let exits0 = net.tx.notifications();
    let start = rt::io::rdtsc();
    let mut sent = 0u64;
    let mut stalled = virtio::deadline_us(net.timeout_us);
    while sent < n {
        let mut added = false;
        while sent < n {
            let id = net.ip_id.wrapping_add(1);
            let seq = sent;
            if !net.tx.try_send(|f| {
                let p = &mut f[net::UDP_DATA..net::UDP_DATA + size];
                p.fill(seq as u8);
                let k = size.min(8);
                p[..k].copy_from_slice(&seq.to_be_bytes()[..k]);
                finish_udp(f, &a, size, id)
            })? {
                break;
            }
            net.ip_id = id;
            sent += 1;
            added = true;
        }
        if added {
            net.tx.kick();
            stalled = virtio::deadline_us(net.timeout_us);
        } else {
            if rt::io::rdtsc() > stalled {
                return Err(net::Error::Timeout("blast TX completions").into());
            }
            rt::io::pause();
        }
        // Keep answering ARP while blasting.
        net.poll()?;
    }
    net.tx.flush(net.timeout_us)?;
    let cycles = rt::io::rdtsc() - start;
    println!(
        "net: blast {n} datagrams {} bytes cycles={cycles} exits={}",
        n * size as u64,
        net.tx.notifications() - exits0
    );
    Ok(())
}

// ---------------------------------------------------------------------------

fn main() -> ! {
    match run() {
        Ok(()) => println!("net: done"),
        Err(e) => println!("net: FAIL {e}"),
    }
    rt::power::power_off()
}

fn run() -> Result<(), Fail> {
    use rt::cmdline::{get, get_u64};
    let pci = match get("pcicfg") {
        Some("cf8") => Pci::with_access(Access::Cf8),
        _ => Pci::open(),
    };
    let opts = Options {
        mrg: get_u64("mrg", 1) != 0,
        timeout_us: get_u64("timeout_ms", 10_000).saturating_mul(1000),
    };
    let mut net = Net::open(&pci, MemWindow::from_cmdline(), &opts)?;
    println!(
        "net: device {} mac {} features {:#x} mtu {}",
        net.dev.function.bdf,
        Mac(net.mac),
        net.dev.features(),
        MtuLine(net.mtu)
    );
    if let Some(v) = get("srcmac") {
        net.src_mac = parse_mac(v).ok_or(Fail::Msg("bad srcmac= (want xx:xx:xx:xx:xx:xx)"))?;
        println!("net: srcmac {}", Mac(net.src_mac));
    }
    if get_u64("dhcp", 0) != 0 {
        let lease = net.dhcp()?;
        println!(
            "net: dhcp ip {}/{} router {} server {}",
            Ip(lease.ip),
            lease.prefix,
            Router(lease.router),
            Ip(lease.server)
        );
    } else if let Some(v) = get("ip") {
        let (addr, prefix) = v.split_once('/').unwrap_or((v, "24"));
        let ip = parse_ip(addr).ok_or(Fail::Msg("bad ip="))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or(Fail::Msg("bad prefix in ip="))?;
        net.ip = ip;
        net.prefix = prefix;
        if let Some(g) = get("gw") {
            net.router = Some(parse_ip(g).ok_or(Fail::Msg("bad gw="))?);
        }
        println!("net: ip {}/{}", Ip(ip), prefix);
    }
    let blast_n = get_u64("blast", 0);
    let echo_port = get("echo").map(|_| get_u64("echo", 0));
    if (blast_n > 0 || echo_port.is_some()) && net.ip == [0; 4] {
        return Err(Fail::Msg("blast= and echo= need ip= or dhcp=1"));
    }
    if blast_n > 0 {
        let to = get("to")
            .and_then(|t| {
                let (ip, port) = t.split_once(':')?;
                Some((parse_ip(ip)?, port.parse::<u16>().ok()?))
            })
            .ok_or(Fail::Msg("blast= needs to=A.B.C.D:PORT"))?;
        let size = get_u64("size", 1400) as usize;
        blast(&mut net, blast_n, to, size)?;
    }
    if let Some(port) = echo_port {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(Fail::Msg("bad echo= port"))?;
        echo(&mut net, port, get_u64("count", 0))?;
    }
    net.tx.flush(net.timeout_us)?;
    net.dev.check()?;
    Ok(())
}

struct MtuLine(Option<u16>);

impl fmt::Display for MtuLine {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Some(m) => write!(f, "{m}"),
            None => write!(f, "-"),
        }
    }
}
