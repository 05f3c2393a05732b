//! Bits of the policy word (slot 0 of the `mlag_policy` array), set live by
//! the agent.

/// Sync replies classified `own` to the peer (SPEC 1.2; on by default).
pub const SYNC_OWN: u32 = 1 << 0;
/// Treat every VRRP virtual MAC as shared, configured or not.
pub const VRRP_PREFIX_IS_SHARED: u32 = 1 << 1;
/// The agent's defaults.
pub const DEFAULT: u32 = SYNC_OWN | VRRP_PREFIX_IS_SHARED;
