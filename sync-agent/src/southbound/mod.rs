//! The kernel side the agent reads and changes, other than loading and
//! attaching BPF programs (the dataplane's): interfaces, addresses,
//! neighbours and routes over rtnetlink, and `BPF_PROG_RUN` to hand frames
//! to the receive path. Protocol code never builds netlink messages or
//! `bpf()` attributes itself.

pub mod addresses;
pub mod inject;
pub mod links;
pub mod neighbours;
pub mod neighbours6;
pub mod routes;
pub mod testrun;
