//! SPEC 6: config center and safe rollout.
pub mod center;
pub mod client;
pub mod config;
pub mod device;
pub mod wire;
