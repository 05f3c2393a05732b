//! Slots of the per-CPU counter array `mlag_counters`.

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
/// Number of slots.
pub const COUNT: u32 = 10;

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
];
