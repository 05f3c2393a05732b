//! The one random source: the kernel's (`getrandom`). Boot ids, nonces and
//! client-id suffixes all come from here, so a test or a review finds every
//! use of randomness in one place.

/// Fills `bytes` from the kernel's random source. The kernel's source does
/// not fail once the system has booted; if it ever did, continuing with
/// predictable nonces would be worse than stopping.
pub fn fill(bytes: &mut [u8]) {
    getrandom::fill(bytes).expect("the kernel's random source");
}

/// A random non-zero u64 (0 is kept for "none" in the wire formats).
pub fn nonzero_u64() -> u64 {
    let mut bytes = [0u8; 8];
    fill(&mut bytes);
    u64::from_ne_bytes(bytes).max(1)
}

/// A random id for this run of the agent; a new one tells the peer (and the
/// fabric) that this agent restarted.
pub fn boot_id() -> u64 {
    nonzero_u64()
}
