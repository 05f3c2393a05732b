//! Slots of the per-CPU counters `mlag_counters`: one [`Block`] per CPU,
//! so the classifier finds all of its counters with one lookup per frame.

/// Frames the program saw.
pub const SEEN: u32 = 0;
/// Ethernet/IPv4 ARP replies among them.
pub const ARP_REPLIES: u32 = 1;
/// Replies classified `peer`.
pub const PEER: u32 = 2;
/// Replies classified `own`.
pub const OWN: u32 = 3;
/// Replies classified `shared`.
pub const SHARED: u32 = 4;
/// Frames too short or inconsistent for what they claim to be.
pub const MALFORMED: u32 = 5;
/// Replies to sync that found the ring buffer full (lost to the agent).
pub const RINGBUF_FULL: u32 = 6;
/// Replies whose destination is in none of the tables.
pub const UNMATCHED: u32 = 7;
/// Replies pushed into the ring buffer.
pub const CAPTURED: u32 = 8;
/// Replies to sync that were a frame the agent itself had just handed to
/// the receive path (`mlag_inject`), seen again by a generic-mode
/// classifier: not captured, so nothing echoes between the switches.
pub const ECHO_SUPPRESSED: u32 = 9;
/// ICMPv6 Neighbour Advertisements among the frames (`nd::parse`).
pub const NA_ADVERTS: u32 = 10;
/// Advertisements classified `peer`.
pub const NA_PEER: u32 = 11;
/// Advertisements classified `own`.
pub const NA_OWN: u32 = 12;
/// Advertisements classified `shared` (IPv6 VRRP MACs among them).
pub const NA_SHARED: u32 = 13;
/// Advertisements whose destination is in none of the tables (multicast
/// unsolicited ones among them).
pub const NA_UNMATCHED: u32 = 14;
/// IPv6 frames cut short or inconsistent on the way to an NA, and NAs that
/// break ND's rules (code, hop limit): never synced.
pub const NA_MALFORMED: u32 = 15;
/// Advertisements pushed into the ring buffer.
pub const NA_CAPTURED: u32 = 16;
/// Advertisements the agent itself had just injected, seen again by a
/// generic-mode classifier: not captured.
pub const NA_ECHO_SUPPRESSED: u32 = 17;
/// IPv6 frames with more extension headers than the ND rules follow
/// (`nd::MAX_EXT_HEADERS`): passed unclassified.
pub const IPV6_UNFOLLOWED: u32 = 18;
/// Number of slots.
pub const COUNT: u32 = 19;

/// Every counter of one CPU: the value of `mlag_counters`' one entry, so
/// the classifier finds them all with one lookup per frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// The counters, indexed by the slots above.
    pub slots: [u64; COUNT as usize],
    /// Not a counter: the agent's ring reader sleep that this CPU last
    /// woke (the classifier's wakeup rule, `sync-ebpf`), kept here because
    /// a capture has this block at hand already.
    pub woken_generation: u64,
}

const _: () = assert!(core::mem::size_of::<Block>() == 8 * (COUNT as usize + 1));

/// Slot names in slot order, as shown by the agent.
pub const NAMES: [&str; COUNT as usize] = [
    "seen",
    "arp_replies",
    "peer",
    "own",
    "shared",
    "malformed",
    "ringbuf_full",
    "unmatched",
    "captured",
    "echo_suppressed",
    "na_adverts",
    "na_peer",
    "na_own",
    "na_shared",
    "na_unmatched",
    "na_malformed",
    "na_captured",
    "na_echo_suppressed",
    "ipv6_unfollowed",
];
