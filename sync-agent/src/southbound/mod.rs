//! The kernel side the agent reads and changes, other than BPF: interfaces
//! over rtnetlink. Protocol code never builds netlink messages itself.

pub mod addresses;
pub mod links;
pub mod neighbours;
pub mod routes;
