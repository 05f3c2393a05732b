//! mlag-sync agent library. Each module is one concern of SPEC.md:
//!
//! - [`dataplane`]: the XDP classifier on the member ports (SPEC 1)
//! - [`peersync`]: sync of ARP replies with the MLAG peer (SPEC 2)
//! - [`mclag`]: master election, MAC and link-local alignment, takeover (SPEC 3)
//! - [`agent`]: the task that owns the agent's state and wires the others
//! - [`control`] and [`cli`]: the operator's side (SPEC 7.2)
//! - [`config`]: the config file (SPEC 7.1)
//! - [`southbound`]: interfaces over netlink
//!
//! Fabric sync, inference and rollout (SPEC 2–6)
//! join as further modules fed by the agent task's channels.

pub mod agent;
pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod fabric;
pub mod inference;
pub mod mac;
pub mod mclag;
pub mod peersync;
pub mod rollout;
pub mod southbound;
