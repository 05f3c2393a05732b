//! Dependency-based state inference (SPEC 5).
//!
//! The [`Model`] holds objects in four layers (physical: switches, ports,
//! links; L2: LAN ports, bonds, bridges, VLANs; L3: IP interfaces, gateways,
//! neighbours; services on top) and one-way dependencies between them:
//! *belongs-to* within a layer (a port belongs to its switch) and *maps-to*
//! from a lower layer up to a higher one (physical port -> LAN port -> IP
//! interface). A dependency that would close a cycle is rejected with the
//! path (SPEC 5.2).
//!
//! Incoming [`Info`] (source, message, object) is normalised by the
//! [`RuleTable`] into a [`State`] with a fault level (0 = normal, higher =
//! worse), into "clears", or into nothing (unknown information, reported to
//! the caller and recorded, but changing no state). Equivalent messages from
//! different sources map to the same state. Each object keeps one *actual*
//! state per source: the latest information from that source wins, and a
//! clearing message removes it (SPEC 5.3).
//!
//! The *logical* states of an object are inferred from the *effective*
//! states of the objects it depends on directly: every dependency's most
//! severe fault becomes a logical state with the same name and level, its
//! source being the dependency's id. Because a dependency's effective state
//! includes its own logical states, faults travel transitively up the chains
//! (SPEC 5.4). Lost contact is its own kind of state: level 0, shown, but
//! never a cause for inference; an object in lost contact still receives
//! logical states from its own dependencies.
//!
//! The *effective* state merges all actual and logical states, keeping only
//! the most severe level and, on a tie, every distinct state of that level
//! (the same state from several sources is shown once, its `source` listing
//! them all, comma-separated). When nothing is above level 0 the effective
//! state is `normal`, or `lost-contact` if a source reported lost contact
//! (SPEC 5.5).
//!
//! A change is propagated incrementally: only objects reachable from the
//! changed one are visited, in topological (rank) order so that each is
//! recomputed once after all of its changed dependencies (diamonds
//! included), and expansion stops where an effective state did not change.
//! Every object keeps a bounded history of its effective state changes and
//! of the information it received (SPEC 5.6).
//!
//! The engine is pure: no I/O, no clock (times are passed in), no async.

pub mod bench;
pub mod config;
pub mod model;
pub mod rules;
pub mod task;

pub use model::{
    Applied, Change, Dependency, HistoryEntry, InfoEntry, Layer, Model, ModelError, ObjectId,
    ObjectView, StateView,
};
pub use rules::{Info, Rule, RuleTable, State};
