//! Consecutive UDP datagrams of one flow handed to the tap as one frame.
//!
//! Every write to a tap runs the host's whole receive path for that frame
//! in the writer's thread: skb allocation, the IP layer, a route lookup,
//! the UDP socket lookup and enqueue. For a guest sending UDP datagrams
//! back to back that is most of the I/O thread's time (~2 us of ~2.4 per
//! 1400-byte datagram here). So a TX pass merges the datagrams of one
//! flow that the guest queued one after another into a single UDP
//! segmentation offload frame (`VIRTIO_NET_HDR_GSO_UDP_L4`, which taps
//! take since Linux 6.2; [`super::tap::Tap::udp_gso`]), and the kernel
//! cuts it back into the same datagrams (`__udp_gso_segment`) for the
//! socket, the bridge or the wire after one pass through its receive
//! path. A pass merges only what the guest had already queued: nothing
//! waits for more.
//!
//! What comes out must be what went in, bit for bit, wherever the kernel
//! segments the frame (before a local socket, or leaving by a device
//! without USO, where it also computes the checksums). So a run takes
//! only datagrams the kernel's segmentation gives back unchanged: IPv4
//! without options or fragmentation and with a good header checksum, no
//! Ethernet padding, UDP whose checksum the run verified (a datagram
//! with a wrong one goes out alone, for the kernel to drop as before; one
//! with none, 0, too, as segmentation would give it one) or, from a
//! driver that negotiated VIRTIO_NET_F_CSUM, a partial checksum holding
//! the right pseudo-header sum; and each datagram after the first with
//! the same Ethernet header, TOS, flags, TTL, addresses and ports, the
//! next IP identification (segmentation counts up from the first's) and
//! the same payload size, but for a shorter last one. Anything else ends
//! the run. Decided without I/O.
//!
//! What changes for the host: its packet filters and captures on the
//! tap's side see one large datagram where the guest sent several, as
//! they do for any GSO frame (a TSO guest's, a GRO'd one's).

use super::filter::ETH_HLEN;
use super::hdr::{Hdr, FLAG_NEEDS_CSUM, GSO_NONE};
use super::NET_HDR_LEN;

/// `VIRTIO_NET_HDR_GSO_UDP_L4`.
pub(super) const GSO_UDP_L4: u8 =
    virtio_bindings::bindings::virtio_net::VIRTIO_NET_HDR_GSO_UDP_L4 as u8;
/// Where the IPv4 header, the UDP header and the payload start.
const IP: usize = ETH_HLEN;
const UDP: usize = IP + 20;
const DATA: usize = UDP + 8;
/// The UDP checksum's offset in its header.
const UDP_CHECK: usize = 6;
/// Most datagrams in one frame: the kernel's UDP_MAX_SEGMENTS (64 until
/// Linux 6.10, 128 since).
pub const MAX_SEGS: usize = 64;
/// Longest IPv4 datagram, which the merged one must fit as well.
const MAX_IP_LEN: usize = 65535;

/// A frame a run can take, as [`check`] found it: its payload's length.
#[derive(Clone, Copy, Debug)]
pub struct Datagram {
    len: usize,
}

/// The merged frame [`UdpRun::finish`] hands over.
pub struct Merged<'a> {
    /// The virtio header and the frame, to write to the tap.
    pub frame: &'a [u8],
    /// Datagrams in it.
    pub datagrams: u64,
    /// Their Ethernet frames' bytes, as they came from the guest.
    pub bytes: u64,
}

/// Datagrams being merged: the first one's virtio header and frame as the
/// guest sent them, then the others' payloads.
pub struct UdpRun {
    buf: Vec<u8>,
    datagrams: usize,
    seg_len: usize,
    /// A shorter datagram ended it.
    closed: bool,
    bytes: u64,
}

impl Default for UdpRun {
    fn default() -> Self {
        UdpRun::new()
    }
}

impl UdpRun {
    pub fn new() -> UdpRun {
        UdpRun {
            buf: Vec::with_capacity(NET_HDR_LEN + ETH_HLEN + MAX_IP_LEN),
            datagrams: 0,
            seg_len: 0,
            closed: false,
            bytes: 0,
        }
    }

    /// Adds datagram `d` (`frame` behind the virtio header `hdr`, as
    /// [`check`] found it) if it continues the run, or starts the run if
    /// it is empty; whether it did (if not: send the run, then the
    /// datagram starts the next).
    pub fn push(&mut self, hdr: &[u8; NET_HDR_LEN], frame: &[u8], d: Datagram) -> bool {
        if self.datagrams == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(hdr);
            self.buf.extend_from_slice(frame);
            self.datagrams = 1;
            self.seg_len = d.len;
            self.closed = false;
            self.bytes = frame.len() as u64;
            return true;
        }
        if !self.continues(hdr, frame, d.len) {
            return false;
        }
        self.buf.extend_from_slice(&frame[DATA..]);
        self.datagrams += 1;
        self.closed = d.len < self.seg_len;
        self.bytes += frame.len() as u64;
        true
    }

    fn continues(&self, hdr: &[u8; NET_HDR_LEN], f: &[u8], len: usize) -> bool {
        let first = &self.buf[NET_HDR_LEN..];
        let ip_len = self.buf.len() - NET_HDR_LEN - IP + len;
        let next_id = be16(first, IP + 4).wrapping_add(self.datagrams as u16);
        !self.closed
            && self.datagrams < MAX_SEGS
            && len <= self.seg_len
            && ip_len <= MAX_IP_LEN
            // Both verified or both partial.
            && hdr[0] == self.buf[0]
            && f[..ETH_HLEN] == first[..ETH_HLEN]
            && f[IP + 1] == first[IP + 1]
            && be16(f, IP + 4) == next_id
            && f[IP + 6..IP + 9] == first[IP + 6..IP + 9]
            && f[IP + 12..UDP + 4] == first[IP + 12..UDP + 4]
    }

    /// The run as one frame for the tap, and empties it: a GSO frame for
    /// two or more datagrams, the one datagram as the guest sent it else.
    pub fn finish(&mut self) -> Option<Merged<'_>> {
        if self.datagrams == 0 {
            return None;
        }
        let datagrams = std::mem::take(&mut self.datagrams);
        if datagrams > 1 {
            let (h, f) = self.buf.split_at_mut(NET_HDR_LEN);
            let udp_len = f.len() - UDP;
            f[IP + 2..IP + 4].copy_from_slice(&((udp_len + 20) as u16).to_be_bytes());
            f[IP + 10..IP + 12].fill(0);
            let c = !fold(sum(&f[IP..UDP]));
            f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
            f[UDP + 4..UDP + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            // A partial checksum: the pseudo header's sum, which the
            // kernel adjusts for each segment's length.
            let p = fold(pseudo(f, udp_len));
            f[UDP + UDP_CHECK..UDP + UDP_CHECK + 2].copy_from_slice(&p.to_be_bytes());
            h[0] = FLAG_NEEDS_CSUM;
            h[1] = GSO_UDP_L4;
            h[2..4].copy_from_slice(&(DATA as u16).to_le_bytes());
            h[4..6].copy_from_slice(&(self.seg_len as u16).to_le_bytes());
            h[6..8].copy_from_slice(&(UDP as u16).to_le_bytes());
            h[8..10].copy_from_slice(&(UDP_CHECK as u16).to_le_bytes());
            h[10..12].fill(0);
        }
        Some(Merged {
            frame: &self.buf,
            datagrams: datagrams as u64,
            bytes: self.bytes,
        })
    }
}

/// Whether frame `f` behind a virtio header saying `hdr` (already
/// checked against what the driver negotiated) is a datagram a run can
/// take.
pub fn check(hdr: &Hdr, f: &[u8]) -> Option<Datagram> {
    let partial = match hdr.flags {
        0 => false,
        FLAG_NEEDS_CSUM => {
            if usize::from(hdr.csum_start) != UDP || usize::from(hdr.csum_offset) != UDP_CHECK {
                return None;
            }
            true
        }
        _ => return None,
    };
    if hdr.gso_type != GSO_NONE
        || f.len() <= DATA
        || f[12..14] != [0x08, 0x00]
        || f[IP] != 0x45
        || usize::from(be16(f, IP + 2)) != f.len() - IP
        // Neither more fragments nor an offset (nor the reserved bit);
        // DF as the guest likes.
        || be16(f, IP + 6) & !0x4000 != 0
        || f[IP + 9] != libc::IPPROTO_UDP as u8
        || usize::from(be16(f, UDP + 4)) != f.len() - UDP
        || fold(sum(&f[IP..UDP])) != 0xffff
    {
        return None;
    }
    let ok = if partial {
        be16(f, UDP + UDP_CHECK) == fold(pseudo(f, f.len() - UDP))
    } else {
        be16(f, UDP + UDP_CHECK) != 0 && fold(pseudo(f, f.len() - UDP) + sum(&f[UDP..])) == 0xffff
    };
    ok.then_some(Datagram {
        len: f.len() - DATA,
    })
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// The sum of the pseudo header of the UDP datagram in frame `f`.
fn pseudo(f: &[u8], udp_len: usize) -> u64 {
    sum(&f[IP + 12..UDP]) + u64::from(libc::IPPROTO_UDP as u16) + udp_len as u64
}

/// The Internet checksum's sum of `data`, unfolded: big-endian 32-bit
/// words (the compiler makes vector adds of them), which fold to the
/// same 16-bit ones' complement sum since 2^16 = 1 modulo 0xffff; an odd
/// tail is padded with zeros, as the checksum pads it.
fn sum(data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    let mut s: u64 = (&mut words)
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum();
    let mut tail = [0u8; 4];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    s += u64::from(u32::from_be_bytes(tail));
    s
}

/// Folds a sum to 16 bits, end-around carries added back in.
fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const PLAIN: [u8; NET_HDR_LEN] = [0; NET_HDR_LEN];

    /// What the worker does with a frame: sends it alone (`Never`), or
    /// offers it to the run, which takes it or not.
    #[derive(Debug, PartialEq)]
    enum Push {
        Added,
        Breaks,
        Never,
    }

    impl UdpRun {
        fn offer(&mut self, hdr: &[u8; NET_HDR_LEN], frame: &[u8]) -> Push {
            match check(&Hdr::parse(hdr), frame) {
                None => Push::Never,
                Some(d) if self.push(hdr, frame, d) => Push::Added,
                Some(_) => Push::Breaks,
            }
        }
    }
    /// Where [`datagram`]s go.
    pub(in crate::virtio::net) const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    /// The virtio header of a datagram with a partial checksum.
    pub(in crate::virtio::net) fn partial_hdr() -> [u8; NET_HDR_LEN] {
        let mut h = [0u8; NET_HDR_LEN];
        h[0] = FLAG_NEEDS_CSUM;
        h[6..8].copy_from_slice(&(UDP as u16).to_le_bytes());
        h[8..10].copy_from_slice(&(UDP_CHECK as u16).to_le_bytes());
        h
    }

    /// A datagram as a guest sends it from 100.64.1.3 to 100.64.1.2:5000:
    /// full checksums, or (`partial`) the pseudo header's sum in the UDP
    /// checksum.
    pub(in crate::virtio::net) fn datagram(
        id: u16,
        sport: u16,
        payload: &[u8],
        partial: bool,
    ) -> Vec<u8> {
        datagram_to(DST_MAC, id, sport, payload, partial)
    }

    /// A [`datagram`] to Ethernet address `dst`.
    pub(in crate::virtio::net) fn datagram_to(
        dst: [u8; 6],
        id: u16,
        sport: u16,
        payload: &[u8],
        partial: bool,
    ) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 8, 0]);
        let udp_len = 8 + payload.len();
        f.extend_from_slice(&[0x45, 0x10]);
        f.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&[0x40, 0, 64, 17, 0, 0, 100, 64, 1, 3, 100, 64, 1, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&5000u16.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        let c = !fold(sum(&f[IP..UDP]));
        f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
        let p = pseudo(&f, udp_len);
        let c = if partial {
            fold(p)
        } else {
            match !fold(p + sum(&f[UDP..])) {
                0 => 0xffff,
                c => c,
            }
        };
        f[UDP + 6..UDP + 8].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// `n` bytes that differ from datagram to datagram (`i`).
    pub(in crate::virtio::net) fn payload(i: usize, n: usize) -> Vec<u8> {
        (0..n).map(|k| (i * 7 + k) as u8).collect()
    }

    /// The kernel's segmentation of a UDP GSO frame for a device without
    /// checksum offload (`__udp_gso_segment`, `inet_gso_segment`, then
    /// `skb_checksum_help`): the headers copied, the IP identification
    /// counting up, lengths and both checksums computed per segment.
    fn segment(h: &[u8], f: &[u8]) -> Vec<Vec<u8>> {
        let hd = Hdr::parse(h.try_into().unwrap());
        assert_eq!((hd.flags, hd.gso_type), (FLAG_NEEDS_CSUM, GSO_UDP_L4));
        assert_eq!(
            (hd.hdr_len, hd.csum_start, hd.csum_offset),
            (DATA as u16, UDP as u16, 6)
        );
        assert_eq!(usize::from(be16(f, IP + 2)), f.len() - IP);
        assert_eq!(fold(sum(&f[IP..UDP])), 0xffff, "merged IP header checksum");
        assert_eq!(be16(f, UDP + 6), fold(pseudo(f, f.len() - UDP)));
        let id = be16(f, IP + 4);
        f[DATA..]
            .chunks(usize::from(hd.gso_size))
            .enumerate()
            .map(|(i, p)| {
                let mut s = f[..DATA].to_vec();
                s.extend_from_slice(p);
                let udp_len = 8 + p.len();
                s[IP + 2..IP + 4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
                s[IP + 4..IP + 6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
                s[IP + 10..IP + 12].fill(0);
                let c = !fold(sum(&s[IP..UDP]));
                s[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
                s[UDP + 4..UDP + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
                let p = fold(pseudo(&s, udp_len));
                s[UDP + 6..UDP + 8].copy_from_slice(&p.to_be_bytes());
                assert!(crate::virtio::net::hdr::complete_checksum(
                    &mut s,
                    UDP,
                    UDP + 6
                ));
                s
            })
            .collect()
    }

    fn finish(run: &mut UdpRun) -> (Vec<u8>, u64) {
        let m = run.finish().expect("a run");
        (m.frame.to_vec(), m.datagrams)
    }

    #[test]
    fn a_burst_segments_back_into_the_guests_datagrams() {
        for (partial, last) in [(false, 1400), (false, 77), (true, 1400), (true, 3)] {
            let h = if partial { partial_hdr() } else { PLAIN };
            let sent: Vec<Vec<u8>> = (0..10)
                .map(|i| {
                    let n = if i == 9 { last } else { 1400 };
                    datagram(
                        0xfffa_u16.wrapping_add(i as u16),
                        40000,
                        &payload(i, n),
                        partial,
                    )
                })
                .collect();
            let mut run = UdpRun::new();
            for f in &sent {
                assert_eq!(run.offer(&h, f), Push::Added);
            }
            let bytes: usize = sent.iter().map(Vec::len).sum();
            let m = run.finish().unwrap();
            assert_eq!((m.datagrams, m.bytes), (10, bytes as u64));
            let (h2, f2) = m.frame.split_at(NET_HDR_LEN);
            let got = segment(h2, f2);
            if partial {
                // The guest's frames carried partial checksums; a device
                // without offload finishes them the same way.
                let mut want = sent.clone();
                for w in &mut want {
                    assert!(crate::virtio::net::hdr::complete_checksum(w, UDP, UDP + 6));
                }
                assert_eq!(got, want);
            } else {
                assert_eq!(got, sent);
            }
            assert!(run.finish().is_none());
        }
    }

    #[test]
    fn a_single_datagram_goes_out_as_it_came() {
        let f = datagram(7, 40000, &payload(0, 100), false);
        let mut h = PLAIN;
        h[10] = 1; // num_buffers, meaningless on TX, kept as given
        let mut run = UdpRun::new();
        assert_eq!(run.offer(&h, &f), Push::Added);
        let (out, n) = finish(&mut run);
        assert_eq!(n, 1);
        assert_eq!(out, [&h[..], &f[..]].concat());
        assert!(run.finish().is_none());
    }

    #[test]
    fn what_segmentation_would_not_give_back_is_never_taken() {
        let good = datagram(1, 40000, &payload(0, 200), false);
        let mut cases: Vec<(&str, [u8; NET_HDR_LEN], Vec<u8>)> = Vec::new();
        let mut bad_csum = good.clone();
        bad_csum[DATA] ^= 1;
        cases.push(("wrong UDP checksum", PLAIN, bad_csum));
        let mut no_csum = good.clone();
        no_csum[UDP + 6..UDP + 8].fill(0);
        cases.push(("no UDP checksum", PLAIN, no_csum));
        let mut bad_ip = good.clone();
        bad_ip[IP + 8] -= 1; // TTL changed, checksum not
        cases.push(("wrong IP header checksum", PLAIN, bad_ip));
        let mut padded = good.clone();
        padded.push(0);
        cases.push(("Ethernet padding", PLAIN, padded));
        cases.push(("no payload", PLAIN, datagram(1, 40000, &[], false)));
        let mut frag = datagram(1, 40000, &payload(0, 200), false);
        frag[IP + 6] = 0x20; // MF
        cases.push(("a fragment", PLAIN, frag));
        let mut partial_bad = datagram(1, 40000, &payload(0, 200), true);
        partial_bad[UDP + 7] ^= 1;
        cases.push(("wrong pseudo-header sum", partial_hdr(), partial_bad));
        let mut partial_elsewhere = partial_hdr();
        partial_elsewhere[8] = 4;
        cases.push((
            "partial checksum elsewhere",
            partial_elsewhere,
            datagram(1, 40000, &payload(0, 200), true),
        ));
        let mut tso = PLAIN;
        tso[1] = 1;
        cases.push(("a GSO frame", tso, good.clone()));
        let mut tcp = good.clone();
        tcp[IP + 9] = 6;
        cases.push(("TCP", PLAIN, tcp));
        let mut vlan = good.clone();
        vlan.splice(12..12, [0x81, 0x00, 0, 5]);
        cases.push(("an 802.1Q tag", PLAIN, vlan));
        cases.push(("a runt", PLAIN, good[..30].to_vec()));
        for (what, h, f) in cases {
            let mut run = UdpRun::new();
            assert_eq!(run.offer(&h, &f), Push::Never, "{what}");
            assert!(run.finish().is_none(), "{what}");
        }
    }

    #[test]
    fn a_run_ends_where_the_flow_or_the_sizes_change() {
        let first = datagram(10, 40000, &payload(0, 500), false);
        let mut cases = vec![
            (
                "IP identification not next",
                datagram(12, 40000, &payload(1, 500), false),
            ),
            ("another port", datagram(11, 40001, &payload(1, 500), false)),
            (
                "larger payload",
                datagram(11, 40000, &payload(1, 501), false),
            ),
        ];
        let mut ttl = datagram(11, 40000, &payload(1, 500), false);
        ttl[IP + 8] = 63;
        ttl[IP + 10..IP + 12].fill(0);
        let c = !fold(sum(&ttl[IP..UDP]));
        ttl[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
        cases.push(("another TTL", ttl));
        let mut mac = datagram(11, 40000, &payload(1, 500), false);
        mac[0] = 4;
        cases.push(("another destination MAC", mac));
        for (what, f) in cases {
            let mut run = UdpRun::new();
            assert_eq!(run.offer(&PLAIN, &first), Push::Added);
            assert_eq!(run.offer(&PLAIN, &f), Push::Breaks, "{what}");
            let (out, n) = finish(&mut run);
            assert_eq!((out, n), ([&PLAIN[..], &first[..]].concat(), 1), "{what}");
            assert_eq!(run.offer(&PLAIN, &f), Push::Added, "{what} starts the next");
        }
        // Verified and partial checksums do not mix.
        let mut run = UdpRun::new();
        assert_eq!(run.offer(&PLAIN, &first), Push::Added);
        let p = datagram(11, 40000, &payload(1, 500), true);
        assert_eq!(run.offer(&partial_hdr(), &p), Push::Breaks);
        // A shorter datagram is the last.
        let mut run = UdpRun::new();
        assert_eq!(run.offer(&PLAIN, &first), Push::Added);
        assert_eq!(
            run.offer(&PLAIN, &datagram(11, 40000, &payload(1, 499), false)),
            Push::Added
        );
        assert_eq!(
            run.offer(&PLAIN, &datagram(12, 40000, &payload(2, 499), false)),
            Push::Breaks
        );
    }

    #[test]
    fn a_run_stays_within_one_ip_datagram_and_the_kernels_segment_count() {
        // 1472-byte payloads: 44 fit in 65535 bytes of IP datagram.
        let mut run = UdpRun::new();
        let mut n = 0u16;
        while run.offer(&PLAIN, &datagram(n, 1, &payload(0, 1472), false)) == Push::Added {
            n += 1;
        }
        assert_eq!(n, 44);
        let m = run.finish().unwrap();
        assert!(m.frame.len() - NET_HDR_LEN - IP <= MAX_IP_LEN);
        // 8-byte payloads: the segment count ends it.
        let mut run = UdpRun::new();
        let mut n = 0u16;
        while run.offer(&PLAIN, &datagram(n, 1, &payload(0, 8), false)) == Push::Added {
            n += 1;
        }
        assert_eq!(usize::from(n), MAX_SEGS);
    }

    #[test]
    fn sums_match_a_16_bit_word_sum() {
        for n in 0..40 {
            let d = payload(n, n);
            let mut s: u32 = 0;
            for w in d.chunks(2) {
                s += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
            assert_eq!(fold(sum(&d)), fold(u64::from(s)), "{n} bytes");
        }
    }
}
