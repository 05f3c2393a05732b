//! SPEC 6: config center and safe rollout.
//!
//! - [`center`]: the config center (store, HTTP API with long poll, rollout
//!   engine), run by the server-role agent; [`center::CenterHandle`],
//! - [`device`]: the device side (registers, long-polls, applies configs
//!   atomically, keeps a backup); [`device::DeviceHandle`],
//! - [`wire`]: the JSON the center, devices and the CLI exchange,
//! - [`client`]: the CLI's client of the center's API,
//! - [`config`]: `[rollout]`, both sections,
//! - [`report`]: `show rollout`.
//!
//! The two sides only talk over HTTP, so one agent can run either or both.

pub mod center;
pub mod client;
pub mod config;
pub mod device;
pub mod report;
pub mod wire;
