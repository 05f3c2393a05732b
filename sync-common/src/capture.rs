//! What the XDP program hands the agent through the ring buffer (ARP
//! replies and, since ND sync, Neighbour Advertisements), and the key
//! type of its MAC tables.

/// Bytes of each captured frame kept in a record. An Ethernet/IPv4 ARP reply
/// with two tags ends at byte 50, a Neighbour Advertisement with two tags
/// and its target link-layer option at byte 94; the rest leaves room for
/// padding, trailers and an extension header. A longer NA is captured cut
/// short and refused by the agent (`invalid_records`).
pub const CAPTURE_BYTES: usize = 128;
const _: () = assert!(CAPTURE_BYTES.is_power_of_two());

/// Ring buffer size in bytes (a power-of-two multiple of the page size).
/// 4 MiB holds 24,966 records of 168 bytes (header included): 55 ms of
/// replies at 450,000 a second, the time the agent's reader may go without
/// a CPU before anything is lost. At 1 MiB (14 ms) a reader sharing a busy
/// 2-CPU machine with compiles lost replies at that rate in some runs
/// (`cargo xtask bench dataplane`, paced run: up to 13% of them).
pub const CAPTURE_RING_BYTES: u32 = 1 << 22;

/// Entries in each MAC table.
pub const MAC_TABLE_ENTRIES: u32 = 1024;

/// Entries in the classifier's one MAC-to-class table (`mlag_mac_class`):
/// room for the peer, own and shared tables full at once.
pub const MAC_CLASS_ENTRIES: u32 = 3 * MAC_TABLE_ENTRIES;

/// Bits of the classifier's MAC prefilter (`mlag_mac_filter`, an array of
/// `u64` words): the bit of every MAC in the class table is set, so a
/// destination whose bit is clear (most unmatched replies) is known to be
/// in no table without a hash lookup.
pub const MAC_FILTER_BITS: u32 = 1 << 16;

/// Words of the MAC prefilter.
pub const MAC_FILTER_WORDS: u32 = MAC_FILTER_BITS / 64;

/// The prefilter bit of `mac`: the MAC folded to 16 bits (XOR of its
/// three 16-bit thirds, read little-endian), so MACs that differ in any
/// byte spread out.
#[inline(always)]
pub fn mac_filter_bit(mac: &[u8; 6]) -> u32 {
    mac_word_filter_bit(crate::arp::mac_word(mac))
}

/// [`mac_filter_bit`] of a MAC as one integer (`arp::mac_word`): two
/// shifts and two XORs in the classifier.
#[inline(always)]
pub fn mac_word_filter_bit(mac: u64) -> u32 {
    ((mac ^ (mac >> 16) ^ (mac >> 32)) & 0xffff) as u32
}

const _: () = assert!(MAC_FILTER_BITS == 1 << 16);

/// How a reply is sorted by its destination MAC (SPEC 1.2).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The destination is the peer switch: the reply must reach the peer.
    Peer = 1,
    /// The destination is this switch: learnt here, synced when the policy
    /// says so.
    Own = 2,
    /// The destination is a MAC both switches own (VRRP, configured shared
    /// MACs): learnt locally only.
    Shared = 3,
    /// None of the above (e.g. another host's MAC, broadcast).
    Unmatched = 4,
}

impl Class {
    /// Decodes the `class` byte of a [`CaptureRecord`].
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Peer),
            2 => Some(Self::Own),
            3 => Some(Self::Shared),
            4 => Some(Self::Unmatched),
            _ => None,
        }
    }

    /// Stable lower-case name used in CLI output and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Own => "own",
            Self::Shared => "shared",
            Self::Unmatched => "unmatched",
        }
    }
}

/// Which table a destination MAC was found in; the order of the checks is the
/// classification rule: shared beats peer beats own.
#[inline(always)]
pub fn classify(in_shared: bool, in_peer: bool, in_own: bool) -> Class {
    if in_shared {
        Class::Shared
    } else if in_peer {
        Class::Peer
    } else if in_own {
        Class::Own
    } else {
        Class::Unmatched
    }
}

/// Key of the MAC tables: a MAC padded to 8 bytes so keys are aligned
/// (and the classifier builds one with a single store).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacKey {
    /// The MAC address.
    pub mac: [u8; 6],
    /// Always zero.
    pub pad: [u8; 2],
}

impl MacKey {
    /// Key for `mac`.
    #[inline(always)]
    pub const fn new(mac: [u8; 6]) -> Self {
        Self { mac, pad: [0; 2] }
    }

    /// Key for a MAC as one integer (`arp::mac_word`; the top 16 bits are
    /// ignored).
    #[inline(always)]
    pub const fn from_word(mac: u64) -> Self {
        // SAFETY: MacKey is 8 plain bytes (asserted below) with no invalid
        // values; little-endian bytes put the MAC first and the zeroed top
        // 16 bits in `pad`.
        unsafe { core::mem::transmute::<[u8; 8], Self>((mac & 0xffff_ffff_ffff).to_le_bytes()) }
    }
}

/// Tag in the top byte of `skb->mark` of a frame the agent sends on the
/// loopback device for `mlag_inject_tc` to hand to the receive path of
/// another interface: the kernels where `BPF_PROG_RUN` refuses live frames
/// (EPERM on some hardened builds) still reach the full ARP/ND learning
/// path this way, through a tc redirect to the interface's ingress.
pub const INJECT_SKB_MARK_TAG: u32 = 0x4d00_0000;
/// The bits of `skb->mark` that must equal [`INJECT_SKB_MARK_TAG`].
pub const INJECT_SKB_MARK_TAG_BITS: u32 = 0xff00_0000;

/// The `skb->mark` asking `mlag_inject_tc` to redirect a frame to the
/// ingress of `ifindex`; `None` for an ifindex that does not fit the 24
/// bits below the tag.
#[inline(always)]
pub const fn inject_skb_mark(ifindex: u32) -> Option<u32> {
    if ifindex == 0 || ifindex & INJECT_SKB_MARK_TAG_BITS != 0 {
        None
    } else {
        Some(INJECT_SKB_MARK_TAG | ifindex)
    }
}

/// The interface a tagged `skb->mark` names (see [`inject_skb_mark`]).
#[inline(always)]
pub const fn inject_target(mark: u32) -> Option<u32> {
    if mark & INJECT_SKB_MARK_TAG_BITS == INJECT_SKB_MARK_TAG && mark != INJECT_SKB_MARK_TAG {
        Some(mark & !INJECT_SKB_MARK_TAG_BITS)
    } else {
        None
    }
}

/// What `mlag_inject` leaves for the classifier (one per CPU): the reply it
/// is handing to the receive path right now.
///
/// `BPF_PROG_RUN` with live frames runs the injected frame through the
/// receive path synchronously, on the calling CPU, with bottom halves off:
/// a classifier attached in generic (skb) mode sees that very frame next on
/// this CPU, and recognises it here. Driver-mode attachments never see
/// injected frames, so a mark may stay armed; it expires after
/// [`INJECT_MARK_TTL_NS`] and must match the reply exactly (port, sender IP
/// and MAC, destination MAC), so it cannot hide a later genuine reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectMark {
    /// `bpf_ktime_get_ns()` when armed; 0 = not armed.
    pub armed_at_ns: u64,
    /// Interface the frame is injected on.
    pub ifindex: u32,
    /// ARP sender IP of the injected reply.
    pub sender_ip: [u8; 4],
    /// ARP sender MAC.
    pub sender_mac: [u8; 6],
    /// Ethernet destination (the receiving port's MAC after the rewrite).
    pub dst_mac: [u8; 6],
}

/// How long an [`InjectMark`] stays valid: far longer than the synchronous
/// receive path takes (microseconds), far shorter than any retransmission.
pub const INJECT_MARK_TTL_NS: u64 = 1_000_000;

impl InjectMark {
    /// Whether this mark stands for the reply described, at time `now_ns`.
    #[inline(always)]
    pub fn matches(
        &self,
        now_ns: u64,
        ifindex: u32,
        sender_ip: [u8; 4],
        sender_mac: [u8; 6],
        dst_mac: [u8; 6],
    ) -> bool {
        self.armed_at_ns != 0
            && now_ns.wrapping_sub(self.armed_at_ns) < INJECT_MARK_TTL_NS
            && self.ifindex == ifindex
            && self.sender_ip == sender_ip
            && self.sender_mac == sender_mac
            && self.dst_mac == dst_mac
    }
}

const _: () = assert!(core::mem::size_of::<InjectMark>() == 32);

/// [`InjectMark`] for a Neighbour Advertisement (per CPU, its own map):
/// names the advertisement by port, target address and both MACs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectMark6 {
    /// `bpf_ktime_get_ns()` when armed; 0 = not armed.
    pub armed_at_ns: u64,
    /// Interface the frame is injected on.
    pub ifindex: u32,
    /// NA target address.
    pub target: [u8; 16],
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination (after the agent's rewrite).
    pub dst_mac: [u8; 6],
}

impl InjectMark6 {
    /// Whether this mark stands for the advertisement described, at `now_ns`.
    #[inline(always)]
    pub fn matches(
        &self,
        now_ns: u64,
        ifindex: u32,
        target: &[u8; 16],
        src_mac: &[u8; 6],
        dst_mac: &[u8; 6],
    ) -> bool {
        self.armed_at_ns != 0
            && now_ns.wrapping_sub(self.armed_at_ns) < INJECT_MARK_TTL_NS
            && self.ifindex == ifindex
            && self.target == *target
            && self.src_mac == *src_mac
            && self.dst_mac == *dst_mac
    }
}

const _: () = assert!(core::mem::size_of::<InjectMark6>() == 40);

/// One ARP reply the agent should sync, as written by the XDP program.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CaptureRecord {
    /// `bpf_ktime_get_ns()` at capture (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Interface the frame arrived on.
    pub ifindex: u32,
    /// Length of the frame on the wire.
    pub frame_len: u16,
    /// Bytes of `frame` that hold the frame (`min(frame_len, CAPTURE_BYTES)`).
    pub captured_len: u16,
    /// Outer VLAN id (0 when untagged).
    pub outer_vlan: u16,
    /// Inner VLAN id (0 unless double-tagged).
    pub inner_vlan: u16,
    /// Number of VLAN tags (0..=2).
    pub vlan_count: u8,
    /// A [`Class`] as `u8`.
    pub class: u8,
    /// Offset of the ARP payload in `frame` (of the ICMPv6 message for a
    /// Neighbour Advertisement: the agent re-parses either way).
    pub arp_offset: u16,
    /// The first `captured_len` bytes of the frame.
    pub frame: [u8; CAPTURE_BYTES],
}

const _: () = assert!(core::mem::size_of::<CaptureRecord>() == 24 + CAPTURE_BYTES);
const _: () = assert!(core::mem::align_of::<CaptureRecord>() == 8);
const _: () = assert!(core::mem::size_of::<MacKey>() == 8);
const _: () = assert!(core::mem::align_of::<MacKey>() == 8);

impl CaptureRecord {
    /// The captured bytes of the frame.
    pub fn frame_bytes(&self) -> &[u8] {
        let len = (self.captured_len as usize).min(CAPTURE_BYTES);
        &self.frame[..len]
    }
}

#[cfg(test)]
mod inject_mark_tests {
    use super::*;

    #[test]
    fn a_port_survives_the_mark_round_trip_and_untagged_marks_name_nothing() {
        for ifindex in [1, 2, 4_096, 0x00ff_ffff] {
            let mark = inject_skb_mark(ifindex).unwrap();
            assert_eq!(mark & INJECT_SKB_MARK_TAG_BITS, INJECT_SKB_MARK_TAG);
            assert_eq!(inject_target(mark), Some(ifindex));
        }
        assert_eq!(inject_skb_mark(0), None);
        assert_eq!(inject_skb_mark(1 << 24), None);
        // Marks other software sets: no tag, or the bare tag, or another top byte.
        for mark in [0, 1, 0x4000, INJECT_SKB_MARK_TAG, 0x4e00_0002, 0xca6c] {
            assert_eq!(inject_target(mark), None, "mark {mark:#x}");
        }
    }
}
