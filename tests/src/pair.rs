//! An MLAG pair in namespaces: switches A and B joined by a peer link, and
//! server C cabled to both (C's "bond": a reply may leave by either link).
//!
//! ```text
//!            peer link 169.254.77.1/30 - .2
//!   [A] a-peer ------- b-peer [B]
//!    a-c |  10.77.0.1     10.77.0.2 | b-c     member ports, MLAG id 1
//!    c-a +----------[C]-------------+ c-b
//! ```
//! C has no address of its own unless a test gives it some: its replies are
//! written with packet sockets, on whichever link the test chooses.

use crate::{
    agent::Agent,
    frames::Arp,
    netns::{self, Netns, fmt_mac},
};

/// A's address on its member port.
pub const A_IP: [u8; 4] = [10, 77, 0, 1];
/// B's address on its member port.
pub const B_IP: [u8; 4] = [10, 77, 0, 2];
/// C's address in the replies it writes.
pub const C_IP: [u8; 4] = [10, 77, 0, 3];

/// The three namespaces and their MACs.
pub struct Pair {
    /// Switch A.
    pub a: Netns,
    /// Switch B.
    pub b: Netns,
    /// Server C.
    pub c: Netns,
    /// A's member port MAC.
    pub a_mac: [u8; 6],
    /// B's member port MAC.
    pub b_mac: [u8; 6],
    /// C's MAC on its A link.
    pub c_mac: [u8; 6],
}

impl Pair {
    /// Builds the topology.
    pub fn new() -> anyhow::Result<Self> {
        let a = Netns::new("mpa")?;
        let b = Netns::new("mpb")?;
        let c = Netns::new("mpc")?;
        netns::veth(&a, "a-c", &c, "c-a")?;
        netns::veth(&b, "b-c", &c, "c-b")?;
        netns::veth(&a, "a-peer", &b, "b-peer")?;
        a.ip(&["addr", "add", "10.77.0.1/24", "dev", "a-c"])?;
        b.ip(&["addr", "add", "10.77.0.2/24", "dev", "b-c"])?;
        a.ip(&["addr", "add", "169.254.77.1/30", "dev", "a-peer"])?;
        b.ip(&["addr", "add", "169.254.77.2/30", "dev", "b-peer"])?;
        Ok(Self {
            a_mac: a.mac("a-c")?,
            b_mac: b.mac("b-c")?,
            c_mac: c.mac("c-a")?,
            a,
            b,
            c,
        })
    }

    /// Config of switch A (`extra` is appended to its `[peer]` section).
    pub fn config_a(&self, extra: &str) -> String {
        config("a-c", &self.b_mac, "169.254.77.1", "169.254.77.2", extra)
    }

    /// Config of switch B.
    pub fn config_b(&self, extra: &str) -> String {
        config("b-c", &self.a_mac, "169.254.77.2", "169.254.77.1", extra)
    }

    /// Starts A's agent.
    pub fn agent_a(&self, extra: &str) -> anyhow::Result<Agent> {
        Agent::start(&self.a, &self.config_a(extra))
    }

    /// Wires an MC-LAG backup path between A and B (`a-bk`/`b-bk`,
    /// 169.254.78.1 and .2) and returns the `backup = …` line of A's and of
    /// B's `[mclag]` section.
    pub fn add_backup_path(&self) -> anyhow::Result<(String, String)> {
        netns::veth(&self.a, "a-bk", &self.b, "b-bk")?;
        self.a
            .ip(&["addr", "add", "169.254.78.1/30", "dev", "a-bk"])?;
        self.b
            .ip(&["addr", "add", "169.254.78.2/30", "dev", "b-bk"])?;
        let line = |local: &str, peer: &str| {
            format!(
                "backup = {{ local_address = \"{local}\", peer_address = \"{peer}\", port = 7790 }}\n"
            )
        };
        Ok((
            line("169.254.78.1", "169.254.78.2"),
            line("169.254.78.2", "169.254.78.1"),
        ))
    }

    /// Starts B's agent.
    pub fn agent_b(&self, extra: &str) -> anyhow::Result<Agent> {
        Agent::start(&self.b, &self.config_b(extra))
    }

    /// Starts A resolving `ip` (one ping) and waits until A's entry for it
    /// is INCOMPLETE, i.e. A's ARP request is out and unanswered. Kill the
    /// returned ping when done.
    pub fn a_starts_resolving(&self, ip: &str) -> anyhow::Result<std::process::Child> {
        starts_resolving(&self.a, "a-c", ip)
    }

    /// The same from B.
    pub fn b_starts_resolving(&self, ip: &str) -> anyhow::Result<std::process::Child> {
        starts_resolving(&self.b, "b-c", ip)
    }

    /// A reply from C (`sender_ip`, C's MAC) to `dst` about `target_ip`.
    pub fn reply_from_c(&self, sender_ip: [u8; 4], dst: [u8; 6], target_ip: [u8; 4]) -> Arp {
        Arp::reply((self.c_mac, sender_ip), (dst, target_ip))
    }
}

/// The classifier's attach mode in the pair's configs: `MLAG_TEST_XDP_MODE`
/// (`cargo xtask test` runs the pair suites with `generic` as well), else
/// `auto` (driver mode on veth) when unset or empty.
pub fn xdp_mode() -> String {
    std::env::var("MLAG_TEST_XDP_MODE")
        .ok()
        .filter(|mode| !mode.is_empty())
        .unwrap_or_else(|| "auto".into())
}

fn starts_resolving(ns: &Netns, dev: &str, ip: &str) -> anyhow::Result<std::process::Child> {
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "ping", "-c", "1", "-W", "3", ip])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    crate::wait_until(
        std::time::Duration::from_secs(10),
        &format!("{}'s entry for {ip} INCOMPLETE", ns.name()),
        || match neighbour(ns, dev, ip) {
            Ok(Some((state, _))) if state == "INCOMPLETE" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;
    Ok(child)
}

fn config(member: &str, peer_mac: &[u8; 6], local: &str, peer: &str, extra: &str) -> String {
    format!(
        r#"instance = "{{instance}}"
[dataplane]
member_ports = ["{member}"]
peer_macs = ["{}"]
xdp_mode = "{}"

[peer]
local_address = "{local}"
peer_address = "{peer}"
{extra}
"#,
        fmt_mac(peer_mac),
        xdp_mode()
    )
}

/// The kernel's IPv4 neighbour entry for `ip` on `dev` in `ns`: (state, MAC).
pub fn neighbour(ns: &Netns, dev: &str, ip: &str) -> anyhow::Result<Option<(String, String)>> {
    let json: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "-4", "neigh", "show", "dev", dev, "to", ip])?)?;
    Ok(json.as_array().and_then(|a| a.first()).map(|e| {
        let state = e["state"]
            .as_array()
            .and_then(|s| s.first())
            .and_then(|s| s.as_str())
            .unwrap_or("")
            .to_string();
        (state, e["lladdr"].as_str().unwrap_or("").to_string())
    }))
}

/// Every resolved IPv4 neighbour on `dev` in `ns`: IP -> MAC.
pub fn resolved_neighbours(
    ns: &Netns,
    dev: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let json: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "-4", "neigh", "show", "dev", dev])?)?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["lladdr"].is_string())
        .filter(|e| {
            !e["state"].to_string().contains("FAILED")
                && !e["state"].to_string().contains("INCOMPLETE")
        })
        .map(|e| {
            (
                e["dst"].as_str().unwrap_or("").to_string(),
                e["lladdr"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

/// Raises the kernel's ARP table limits: they are global to all namespaces,
/// and tests with thousands of entries would otherwise hit them. Only raises.
pub fn raise_neighbour_limits(at_least: u64) -> anyhow::Result<()> {
    for (name, value) in [
        ("gc_thresh1", at_least / 4),
        ("gc_thresh2", at_least / 2),
        ("gc_thresh3", at_least),
    ] {
        let path = format!("/proc/sys/net/ipv4/neigh/default/{name}");
        let current: u64 = std::fs::read_to_string(&path)?.trim().parse()?;
        if current < value {
            std::fs::write(&path, value.to_string())?;
        }
    }
    Ok(())
}
