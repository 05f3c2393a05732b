//! Where an ICMPv6 Neighbour Advertisement (RFC 4861 §4.4) sits in an
//! Ethernet frame: the ND rules of the classifier, shared with the agent,
//! written against [`crate::arp::Frame`] like the ARP rules.
//!
//! ```text
//!  link (arp::link: up to two tags) | IPv6 header (40)            | ext. headers | ICMPv6 NA
//!  ... ethertype 0x86dd             | ver/tc/flow plen nh hlim    | 0 or 60,     | 136 code csum
//!                                   | src (16) dst (16)           | at most 2    | R S O rsvd
//!                                   |                             |              | target (16) options...
//! ```
//!
//! Rules, in order (each bounded, every read checked):
//! 1. The link layer as for ARP ([`crate::arp::link`]); anything but IPv6
//!    after at most two tags is [`Parsed::Other`].
//! 2. A full 40-byte IPv6 header with version 6, and a frame that holds the
//!    whole payload its payload length announces (Ethernet padding after it
//!    is fine); otherwise [`Parsed::Malformed`].
//! 3. Extension headers: at most [`MAX_EXT_HEADERS`] Hop-by-Hop (0) or
//!    Destination Options (60) headers are skipped (each must fit in the
//!    payload). A third one is not followed: [`Parsed::Unfollowed`] (passed,
//!    counted). Any other next header (a Fragment header included: RFC 6980
//!    forbids fragmented ND and the kernel ignores it) is [`Parsed::Other`].
//! 4. ICMPv6 (58) needs 8 bytes in the payload (header and one word, as
//!    every ICMPv6 message). Type 136 is an advertisement: its 24 fixed bytes must
//!    be inside the payload, its code 0 and the IPv6 hop limit 255 — the
//!    kernel discards an NA breaking either rule, so such a frame is
//!    counted malformed and never synced. Other ICMPv6 types are `Other`.
//!
//! Options are not needed to classify (the class comes from the Ethernet
//! destination); [`addresses`] reads them for the agent, bounded to
//! [`MAX_OPTIONS`].

use crate::arp::{self, Frame, Link};

/// IPv6 ethertype.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IPv6 fixed header length.
pub const IPV6_HLEN: usize = 40;
/// Next header: Hop-by-Hop Options.
pub const NH_HOP_BY_HOP: u8 = 0;
/// Next header: Destination Options.
pub const NH_DEST_OPTS: u8 = 60;
/// Next header: ICMPv6.
pub const NH_ICMPV6: u8 = 58;
/// ICMPv6 type of a Neighbour Solicitation.
pub const ICMPV6_NS: u8 = 135;
/// ICMPv6 type of a Neighbour Advertisement.
pub const ICMPV6_NA: u8 = 136;
/// Smallest ICMPv6 message: type, code, checksum and one word of body.
pub const ICMPV6_MIN_LEN: usize = 8;
/// Fixed part of an NA: type, code, checksum, flags, reserved, target.
pub const NA_LEN: usize = 24;
/// Hop limit every ND message must carry (RFC 4861 §7.1.2).
pub const ND_HOP_LIMIT: u8 = 255;
/// Extension headers skipped before giving up.
pub const MAX_EXT_HEADERS: usize = 2;
/// Options [`addresses`] looks at before giving up.
pub const MAX_OPTIONS: usize = 8;
/// ND option: Target Link-Layer Address.
pub const OPT_TARGET_LLADDR: u8 = 2;
/// NA flag bits (byte 4 of the message).
pub const FLAG_ROUTER: u8 = 0x80;
/// Solicited flag.
pub const FLAG_SOLICITED: u8 = 0x40;
/// Override flag.
pub const FLAG_OVERRIDE: u8 = 0x20;
/// ff02::1, all nodes.
pub const ALL_NODES: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// Ethernet MAC of ff02::1 (33:33 + low 32 bits, RFC 2464 §7).
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// What the ND rules found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a Neighbour Advertisement (not IPv6, other ICMPv6, other
    /// protocols, fragments, more than two tags).
    Other,
    /// IPv6 whose extension-header chain is longer than this parser follows
    /// ([`MAX_EXT_HEADERS`]): passed unclassified, counted.
    Unfollowed,
    /// IPv6 or an NA cut short or breaking ND's rules.
    Malformed(MalformedReason),
    /// A Neighbour Advertisement.
    Advert(Advert),
}

/// Why an IPv6 frame was counted as malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MalformedReason {
    /// The link layer was (see [`arp::MalformedReason`]).
    Link(arp::MalformedReason),
    /// Shorter than the 40-byte IPv6 header.
    TruncatedIpv6,
    /// The version nibble is not 6.
    BadIpVersion,
    /// The frame ends before the payload length says the packet does.
    TruncatedPayload,
    /// An extension header runs past the payload.
    TruncatedExtHeader,
    /// ICMPv6 with fewer than 8 bytes in the payload.
    TruncatedIcmpv6,
    /// An ICMPv6 type 136 whose 24 fixed bytes are not all in the payload.
    TruncatedNa,
    /// An NA with a code other than 0.
    BadNaCode,
    /// An NA with a hop limit other than 255.
    BadHopLimit,
}

/// Location and tags of a Neighbour Advertisement inside a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advert {
    /// Ethernet destination MAC: what the NA is classified by.
    pub dst_mac: [u8; 6],
    /// VLAN id of the outer tag, 0 if untagged.
    pub outer_vlan: u16,
    /// VLAN id of the inner tag, 0 if fewer than two tags.
    pub inner_vlan: u16,
    /// Number of tags seen (0..=2).
    pub vlan_count: u8,
    /// Offset of the IPv6 header.
    pub ip_offset: u16,
    /// Offset of the ICMPv6 message.
    pub na_offset: u16,
    /// End of the IPv6 packet (the payload length's end; padding after it).
    pub ip_end: u16,
    /// The R/S/O flag byte.
    pub flags: u8,
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// The target address.
    pub target: [u8; 16],
}

impl Advert {
    /// Whether the Solicited flag is set.
    pub fn solicited(&self) -> bool {
        self.flags & FLAG_SOLICITED != 0
    }
}

/// Applies the ND rules to `frame`.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F) -> Parsed {
    match arp::link(frame) {
        Ok(link) => parse_after(frame, &link),
        Err(reason) => Parsed::Malformed(MalformedReason::Link(reason)),
    }
}

/// The ND rules for a frame whose link layer [`arp::link`] already read.
#[inline(always)]
pub fn parse_after<F: Frame + ?Sized>(frame: &F, link: &Link) -> Parsed {
    if link.ethertype != ETHERTYPE_IPV6 {
        return Parsed::Other;
    }
    let ip = link.offset;
    let Some(head) = frame.read::<8>(ip) else {
        return Parsed::Malformed(MalformedReason::TruncatedIpv6);
    };
    if frame.read::<1>(ip + IPV6_HLEN - 1).is_none() {
        return Parsed::Malformed(MalformedReason::TruncatedIpv6);
    }
    if head[0] >> 4 != 6 {
        return Parsed::Malformed(MalformedReason::BadIpVersion);
    }
    let payload_len = u16::from_be_bytes([head[4], head[5]]) as usize;
    let mut next = head[6];
    let hop_limit = head[7];
    let end = ip + IPV6_HLEN + payload_len;
    if end > frame.frame_len() {
        return Parsed::Malformed(MalformedReason::TruncatedPayload);
    }
    let mut at = ip + IPV6_HLEN;
    // Unrolled by hand (MAX_EXT_HEADERS steps) for the verifier.
    if next == NH_HOP_BY_HOP || next == NH_DEST_OPTS {
        match skip_ext(frame, at, end) {
            Some((n, len)) => {
                next = n;
                at += len;
            }
            None => return Parsed::Malformed(MalformedReason::TruncatedExtHeader),
        }
        if next == NH_HOP_BY_HOP || next == NH_DEST_OPTS {
            match skip_ext(frame, at, end) {
                Some((n, len)) => {
                    next = n;
                    at += len;
                }
                None => return Parsed::Malformed(MalformedReason::TruncatedExtHeader),
            }
            if next == NH_HOP_BY_HOP || next == NH_DEST_OPTS {
                return Parsed::Unfollowed;
            }
        }
    }
    if next != NH_ICMPV6 {
        return Parsed::Other;
    }
    // The ICMPv6 header and the first word of its body (8 bytes, as every
    // ICMPv6 message has) must be inside the payload.
    if at + ICMPV6_MIN_LEN > end {
        return Parsed::Malformed(MalformedReason::TruncatedIcmpv6);
    }
    let Some(fixed) = frame.read::<8>(at) else {
        return Parsed::Malformed(MalformedReason::TruncatedIcmpv6);
    };
    if fixed[0] != ICMPV6_NA {
        return Parsed::Other;
    }
    if at + NA_LEN > end {
        return Parsed::Malformed(MalformedReason::TruncatedNa);
    }
    if fixed[1] != 0 {
        return Parsed::Malformed(MalformedReason::BadNaCode);
    }
    if hop_limit != ND_HOP_LIMIT {
        return Parsed::Malformed(MalformedReason::BadHopLimit);
    }
    // Read here, while the bounds checks are fresh: the kernel side needs
    // them after helper calls, where the verifier would have forgotten them.
    let (Some(src_mac), Some(target)) = (frame.read::<6>(6), frame.read::<16>(at + 8)) else {
        return Parsed::Malformed(MalformedReason::TruncatedNa);
    };
    Parsed::Advert(Advert {
        dst_mac: link.dst_mac,
        outer_vlan: link.outer_vlan,
        inner_vlan: link.inner_vlan,
        vlan_count: link.vlan_count,
        ip_offset: ip as u16,
        na_offset: at as u16,
        ip_end: end as u16,
        flags: fixed[4],
        src_mac,
        target,
    })
}

/// One Hop-by-Hop / Destination Options header at `at`: its next header
/// and length, if it fits before `end`.
#[inline(always)]
fn skip_ext<F: Frame + ?Sized>(frame: &F, at: usize, end: usize) -> Option<(u8, usize)> {
    let [next, len] = frame.read::<2>(at)?;
    let len = (len as usize + 1) * 8;
    if at + len > end {
        return None;
    }
    Some((next, len))
}

/// The addresses of an advertisement, read by the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NdAddresses {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// IPv6 source (the advertising node).
    pub src_ip: [u8; 16],
    /// IPv6 destination.
    pub dst_ip: [u8; 16],
    /// Target address: the address whose link-layer address is advertised.
    pub target: [u8; 16],
    /// The R/S/O flag byte.
    pub flags: u8,
    /// The Target Link-Layer Address option, if present (the MAC the
    /// kernel learns; an NA without it only confirms reachability).
    pub target_mac: Option<[u8; 6]>,
}

/// Reads the addresses (and the first Target Link-Layer Address option) of
/// the advertisement `advert` found by [`parse`] in `frame`.
pub fn addresses<F: Frame + ?Sized>(frame: &F, advert: &Advert) -> Option<NdAddresses> {
    let ip = advert.ip_offset as usize;
    let na = advert.na_offset as usize;
    let end = advert.ip_end as usize;
    let mut target_mac = None;
    let mut at = na + NA_LEN;
    for _ in 0..MAX_OPTIONS {
        if at + 2 > end {
            break;
        }
        let [kind, units] = frame.read::<2>(at)?;
        let len = units as usize * 8;
        if len == 0 || at + len > end {
            // A zero-length option is invalid (RFC 4861 §4.6): stop reading.
            break;
        }
        if kind == OPT_TARGET_LLADDR && len == 8 {
            target_mac = Some(frame.read::<6>(at + 2)?);
            break;
        }
        at += len;
    }
    Some(NdAddresses {
        src_mac: advert.src_mac,
        src_ip: frame.read::<16>(ip + 8)?,
        dst_ip: frame.read::<16>(ip + 24)?,
        target: advert.target,
        flags: advert.flags,
        target_mac,
    })
}

/// The ICMPv6 checksum of `message` (checksum field included as it is)
/// between `src` and `dst` (RFC 8200 §8.1 pseudo-header). Writing the
/// result into a message whose checksum field was zero makes it valid.
pub fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], message: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for pair in &mut chunks {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    };
    add(src);
    add(dst);
    add(&(message.len() as u32).to_be_bytes());
    add(&[0, 0, 0, NH_ICMPV6]);
    add(message);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// How [`rewrite`] readdresses an advertisement for this switch's kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Keep the IPv6 destination (it is this switch's own address: the NA
    /// answers this switch's solicitation); only the Ethernet destination
    /// becomes `mac`.
    Unicast {
        /// The receiving port's MAC.
        mac: [u8; 6],
    },
    /// Readdress to all nodes (ff02::1, 33:33:00:00:00:01) and clear the
    /// Solicited flag: the kernel only takes an NA addressed to one of its
    /// own addresses or a group it joined, and refuses a multicast NA that
    /// claims to be solicited. It then treats it as unsolicited.
    AllNodes,
}

/// Rewrites `frame` (an advertisement, as [`parse`] found it) for delivery
/// to this switch's kernel and fixes the ICMPv6 checksum. False when the
/// frame does not hold the advertisement.
pub fn rewrite(frame: &mut [u8], advert: &Advert, delivery: Delivery) -> bool {
    let ip = advert.ip_offset as usize;
    let na = advert.na_offset as usize;
    let end = advert.ip_end as usize;
    if end > frame.len() || na + NA_LEN > end || ip + IPV6_HLEN > na {
        return false;
    }
    match delivery {
        Delivery::Unicast { mac } => frame[..6].copy_from_slice(&mac),
        Delivery::AllNodes => {
            frame[..6].copy_from_slice(&ALL_NODES_MAC);
            frame[ip + 24..ip + 40].copy_from_slice(&ALL_NODES);
            frame[na + 4] &= !FLAG_SOLICITED;
        }
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&frame[ip + 8..ip + 24]);
    dst.copy_from_slice(&frame[ip + 24..ip + 40]);
    // The checksum covers the upper-layer packet: from the ICMPv6 header to
    // the end of the IPv6 payload.
    frame[na + 2..na + 4].copy_from_slice(&[0, 0]);
    let sum = icmpv6_checksum(&src, &dst, &frame[na..end]);
    frame[na + 2..na + 4].copy_from_slice(&sum.to_be_bytes());
    true
}
