//! Where an ARP reply sits in an Ethernet frame: the one set of parsing rules
//! used by the XDP classifier and by the agent when it reads captured frames.
//!
//! ```text
//!  0      6      12          (up to two tags)        +0     +2     +4 +5 +6   +8
//! +------+------+------+ ... [0x88a8|0x8100][TCI] ... +------+------+--+--+----+-----+-----+-----+-----+
//! | dst  | src  | type |                              | htype| ptype|hl|pl| op | sha | spa | tha | tpa |
//! +------+------+------+                              +------+------+--+--+----+-----+-----+-----+-----+
//!                                                      ARP (Ethernet/IPv4: 28 bytes)
//! ```
//!
//! The rules are written against the [`Frame`] trait so the kernel reads the
//! packet through bounds-checked pointers and userspace through a slice.

/// Ethernet header length without tags.
pub const ETH_HLEN: usize = 14;
/// 802.1Q customer tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// 802.1ad service tag (QinQ outer tag).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// IPv4 (as the ARP protocol type).
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// ARP hardware type Ethernet.
pub const ARP_HTYPE_ETHERNET: u16 = 1;
/// ARP request opcode.
pub const ARP_OP_REQUEST: u16 = 1;
/// ARP reply opcode.
pub const ARP_OP_REPLY: u16 = 2;
/// Length of an Ethernet/IPv4 ARP payload.
pub const ARP_ETH_IPV4_LEN: usize = 28;
/// Most VLAN tags the classifier looks through.
pub const MAX_VLAN_TAGS: usize = 2;

/// Read access to a frame. Implementations must return `None` for any read
/// that would go past the end of the frame.
pub trait Frame {
    /// The `N` bytes at `offset`, or `None` if the frame is shorter.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
    /// Length of the whole frame in bytes (the ND rules compare the IPv6
    /// payload length with it).
    fn frame_len(&self) -> usize;
}

impl Frame for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let bytes = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len()
    }
}

/// What the parser found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not an Ethernet/IPv4 ARP reply (including ARP requests, IP, IPv6,
    /// frames with more than two tags): passed without further work.
    Other,
    /// The frame claims to be something it is too short or inconsistent for.
    Malformed(MalformedReason),
    /// An Ethernet/IPv4 ARP reply.
    ArpReply(ArpReply),
}

/// Why a frame was counted as malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MalformedReason {
    /// Shorter than an Ethernet header.
    TruncatedEthernet,
    /// A VLAN ethertype with fewer than 4 bytes of tag after it.
    TruncatedVlanTag,
    /// An Ethernet/IPv4 ARP header cut short.
    TruncatedArp,
    /// Ethernet/IPv4 ARP whose address lengths are not 6 and 4.
    BadArpAddressLength,
}

/// Location and tags of an ARP reply inside a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpReply {
    /// Ethernet destination MAC: what the reply is classified by.
    pub dst_mac: [u8; 6],
    /// VLAN id of the outer tag, 0 if untagged.
    pub outer_vlan: u16,
    /// VLAN id of the inner tag, 0 if fewer than two tags.
    pub inner_vlan: u16,
    /// Number of tags seen (0..=2).
    pub vlan_count: u8,
    /// Offset of the ARP payload in the frame.
    pub arp_offset: u16,
}

#[inline(always)]
fn read_u16<F: Frame + ?Sized>(frame: &F, offset: usize) -> Option<u16> {
    frame.read::<2>(offset).map(u16::from_be_bytes)
}

/// The Ethernet header and up to two VLAN tags of a frame: where the
/// payload starts and what it is. Shared by the ARP and the ND rules
/// ([`crate::nd`]), so the classifier walks the tags once per frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Ethernet destination MAC. Read here, at the frame's start, where the
    /// bounds check is one the kernel verifier can follow: read after the
    /// rules' variable-offset checks, the compiler drops its check as
    /// implied by them, and the verifier, which cannot see that, refuses
    /// the program.
    pub dst_mac: [u8; 6],
    /// Ethertype after the tags.
    pub ethertype: u16,
    /// Offset of the payload (after the tags).
    pub offset: usize,
    /// VLAN id of the outer tag, 0 if untagged.
    pub outer_vlan: u16,
    /// VLAN id of the inner tag, 0 if fewer than two tags.
    pub inner_vlan: u16,
    /// Number of tags seen (0..=2).
    pub vlan_count: u8,
}

/// Whether a frame whose outermost ethertype is `ethertype` can hold a
/// reply either rule follows: ARP, IPv6, or a tag to look through. The
/// classifier leaves every other frame (most of a port's traffic) after
/// reading these two bytes ([`link_if_may_hold_reply`]).
#[inline(always)]
pub fn may_hold_reply(ethertype: u16) -> bool {
    matches!(
        ethertype,
        ETHERTYPE_ARP | ETHERTYPE_VLAN | ETHERTYPE_QINQ | crate::nd::ETHERTYPE_IPV6
    )
}

/// Reads the Ethernet header and looks through at most two 0x8100/0x88a8
/// tags. A third tag is left as the ethertype (so the frame is `Other` to
/// both the ARP and the ND rules).
#[inline(always)]
pub fn link<F: Frame + ?Sized>(frame: &F) -> Result<Link, MalformedReason> {
    let Some(ethertype) = read_u16(frame, 12) else {
        return Err(MalformedReason::TruncatedEthernet);
    };
    link_from(frame, ethertype)
}

/// [`link`] for a frame whose outermost ethertype [`may_hold_reply`]; `None`
/// (after reading only the ethertype) for any other frame.
#[inline(always)]
pub fn link_if_may_hold_reply<F: Frame + ?Sized>(
    frame: &F,
) -> Result<Option<Link>, MalformedReason> {
    let Some(ethertype) = read_u16(frame, 12) else {
        return Err(MalformedReason::TruncatedEthernet);
    };
    if !may_hold_reply(ethertype) {
        return Ok(None);
    }
    link_from(frame, ethertype).map(Some)
}

/// The rest of [`link`], from the outermost ethertype already read.
#[inline(always)]
fn link_from<F: Frame + ?Sized>(frame: &F, mut ethertype: u16) -> Result<Link, MalformedReason> {
    let Some(dst_mac) = frame.read::<6>(0) else {
        return Err(MalformedReason::TruncatedEthernet);
    };
    let mut offset = ETH_HLEN;
    let mut vlans = [0u16; MAX_VLAN_TAGS];
    let mut vlan_count = 0usize;
    // Unrolled by hand (two steps) so the kernel verifier sees bounded work.
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        let (Some(tci), Some(next)) = (read_u16(frame, offset), read_u16(frame, offset + 2)) else {
            return Err(MalformedReason::TruncatedVlanTag);
        };
        vlans[0] = tci & 0x0fff;
        vlan_count = 1;
        ethertype = next;
        offset += 4;
        if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            let (Some(tci), Some(next)) = (read_u16(frame, offset), read_u16(frame, offset + 2))
            else {
                return Err(MalformedReason::TruncatedVlanTag);
            };
            vlans[1] = tci & 0x0fff;
            vlan_count = 2;
            ethertype = next;
            offset += 4;
        }
    }
    Ok(Link {
        dst_mac,
        ethertype,
        offset,
        outer_vlan: vlans[0],
        inner_vlan: vlans[1],
        vlan_count: vlan_count as u8,
    })
}

/// Applies the classifier's parsing rules to `frame`.
///
/// Bounded work: at most two tags are looked through, every read is checked.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F) -> Parsed {
    match link(frame) {
        Ok(link) => parse_after(frame, &link),
        Err(reason) => Parsed::Malformed(reason),
    }
}

/// The ARP rules for a frame whose link layer [`link`] already read.
#[inline(always)]
pub fn parse_after<F: Frame + ?Sized>(frame: &F, link: &Link) -> Parsed {
    let offset = link.offset;
    if link.ethertype != ETHERTYPE_ARP {
        return Parsed::Other;
    }
    let Some(header) = frame.read::<8>(offset) else {
        return Parsed::Malformed(MalformedReason::TruncatedArp);
    };
    let htype = u16::from_be_bytes([header[0], header[1]]);
    let ptype = u16::from_be_bytes([header[2], header[3]]);
    let opcode = u16::from_be_bytes([header[6], header[7]]);
    if htype != ARP_HTYPE_ETHERNET || ptype != ETHERTYPE_IPV4 {
        return Parsed::Other;
    }
    if header[4] != 6 || header[5] != 4 {
        return Parsed::Malformed(MalformedReason::BadArpAddressLength);
    }
    if frame.read::<1>(offset + ARP_ETH_IPV4_LEN - 1).is_none() {
        return Parsed::Malformed(MalformedReason::TruncatedArp);
    }
    if opcode != ARP_OP_REPLY {
        return Parsed::Other;
    }
    Parsed::ArpReply(ArpReply {
        dst_mac: link.dst_mac,
        outer_vlan: link.outer_vlan,
        inner_vlan: link.inner_vlan,
        vlan_count: link.vlan_count,
        arp_offset: offset as u16,
    })
}

/// The addresses inside an Ethernet/IPv4 ARP payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ArpAddresses {
    /// Opcode (1 request, 2 reply).
    pub opcode: u16,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol (IPv4) address.
    pub sender_ip: [u8; 4],
    /// Target hardware address.
    pub target_mac: [u8; 6],
    /// Target protocol (IPv4) address.
    pub target_ip: [u8; 4],
}

/// Reads the addresses of the ARP payload at `arp_offset` (as found by
/// [`parse`]).
pub fn addresses<F: Frame + ?Sized>(frame: &F, arp_offset: usize) -> Option<ArpAddresses> {
    let at = |delta: usize| arp_offset.checked_add(delta);
    Some(ArpAddresses {
        opcode: read_u16(frame, at(6)?)?,
        sender_mac: frame.read::<6>(at(8)?)?,
        sender_ip: frame.read::<4>(at(14)?)?,
        target_mac: frame.read::<6>(at(18)?)?,
        target_ip: frame.read::<4>(at(24)?)?,
    })
}

/// True for the IPv4 and IPv6 VRRP virtual router MACs
/// (00:00:5e:00:01:xx and 00:00:5e:00:02:xx, RFC 5798 §7.3).
#[inline(always)]
pub fn is_vrrp_mac(mac: &[u8; 6]) -> bool {
    is_vrrp_word(mac_word(mac))
}

/// [`is_vrrp_mac`] for a MAC as one integer ([`mac_word`]).
#[inline(always)]
pub fn is_vrrp_word(mac: u64) -> bool {
    // 00:00:5e:00 little-endian, then the fifth byte 1 or 2.
    mac & 0xffff_ffff == 0x005e_0000 && ((mac >> 32) as u8).wrapping_sub(1) < 2
}

/// A MAC as one integer: its six bytes little-endian in the low 48 bits,
/// the top 16 zero. The classifier sorts a destination MAC by the `_word`
/// forms of the rules (a few register operations, where the byte forms
/// would take each byte apart), and the byte forms are written on them, so
/// both sides apply the same rules.
#[inline(always)]
pub fn mac_word(mac: &[u8; 6]) -> u64 {
    u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
}

/// The IPv4 VRRP virtual MAC for a virtual router id.
pub fn vrrp_v4_mac(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

/// The IPv6 VRRP virtual MAC for a virtual router id.
pub fn vrrp_v6_mac(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x02, vrid]
}
