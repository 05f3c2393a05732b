//! mlag-sync agent library. Each SPEC module is one directory of the same
//! shape (`mod.rs` handle and doc, `task.rs` the owner of its state,
//! `events.rs` one handler per input, `config.rs` its config section,
//! `report.rs` what operators see):
//!
//! - [`dataplane`]: the XDP classifier on the member ports (SPEC 1)
//! - [`peersync`]: sync of ARP replies with the MLAG peer (SPEC 2)
//! - [`mclag`]: master election, MAC and link-local alignment, takeover (SPEC 3)
//! - [`fabric`]: fabric sync over MQTT (SPEC 4)
//! - [`inference`]: dependency-based state inference (SPEC 5)
//! - [`rollout`]: config center and device-side rollout (SPEC 6)
//!
//! Around them:
//!
//! - [`agent`]: the supervisor: loads the config, starts the modules, wires
//!   their channels, handles signals and reloads
//! - [`bus`]: the messages modules exchange (no module imports another)
//! - [`control`] and [`cli`]: the operator's side (SPEC 7.2); [`metrics`]
//!   and [`web`]: the same reports as Prometheus metrics and a live page
//! - [`config`]: the config file, assembled from the modules' sections (SPEC 7.1)
//! - [`southbound`]: the kernel over netlink; [`liveness`]: UDP keepalives
//! - [`clock`], [`random`], [`log_limit`], [`logging`], [`validate`], [`mac`], [`memory`]: small shared facilities

pub mod agent;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod fabric;
pub mod handles;
pub mod inference;
pub mod liveness;
pub mod log_limit;
pub mod logging;
pub mod mac;
pub mod mclag;
pub mod memory;
pub mod metrics;
pub mod peersync;
pub mod random;
pub mod realtime;
pub mod rollout;
pub mod southbound;
pub mod sync_thread;
pub mod validate;
pub mod web;
