//! A fabric lab: a hub namespace with a bridge, and one namespace per switch
//! wired to it, each with `fab0` at 10.77.0.<n+1>/24 and a spare veth pair
//! `p1`/`p1b` (the dataplane's member port, and a port to take down).
//!
//! Every switch gets its own Ed25519 key file (created by the agent's own
//! [`Identity::load_or_create`]) and counters file in a directory the lab
//! owns, so they survive an agent's restart; every config lists the same
//! roster (sw0 and sw1 marked as servers, plus any extra names given to
//! [`FabricLab::with_extra_members`], e.g. simulated members).

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use sync_agent::fabric::identity::{Identity, Roster};

use crate::{
    agent::Agent,
    netns::{Netns, veth},
    wait_until,
};

/// The hub's own address on the bridge (where an external broker listens).
pub const HUB_IP: &str = "10.77.0.254";

/// The address of switch `n`.
pub fn switch_ip(n: usize) -> String {
    format!("10.77.0.{}", n + 1)
}

/// The lab.
pub struct FabricLab {
    /// Nodes, index = switch number.
    pub nodes: Vec<Netns>,
    /// The bridge's namespace (declared last: dropped after the nodes).
    pub hub: Netns,
    /// Every identity in the roster: sw0.. first, then the extra members.
    pub identities: Vec<Identity>,
    /// Key and counters files, kept across agent restarts.
    pub state: tempfile::TempDir,
    roster: String,
}

/// Fabric timers for labs: members seen departed and servers taking over
/// in a second and a half rather than several.
pub const FAST_TIMERS: &str = "heartbeat_interval_ms = 300
dead_after_ms = 1500
failover_after_ms = 1500
takeover_after_ms = 1500
resend_ms = 700";

/// The switches the roster marks as servers.
pub const SERVERS: [&str; 2] = ["sw0", "sw1"];

impl FabricLab {
    /// Builds `switches` namespaces on one bridge.
    pub fn new(switches: usize) -> anyhow::Result<Self> {
        Self::with_extra_members(switches, &[])
    }

    /// Like [`FabricLab::new`], with `extra` names (not switches of the
    /// lab) also given key pairs and listed in every switch's roster.
    pub fn with_extra_members(switches: usize, extra: &[String]) -> anyhow::Result<Self> {
        let state = tempfile::tempdir()?;
        let mut identities = Vec::new();
        let names = (0..switches)
            .map(|n| format!("sw{n}"))
            .chain(extra.iter().cloned());
        let mut roster = String::from("[fabric.trust.roster]\n");
        for name in names {
            let identity =
                Identity::load_or_create(&name, &state.path().join(format!("{name}.key")))?;
            writeln!(
                roster,
                "{name} = {{ public_key = \"{}\", server = {} }}",
                identity.public_hex(),
                SERVERS.contains(&name.as_str())
            )?;
            identities.push(identity);
        }
        let mut lab = Self::build(switches)?;
        lab.identities = identities;
        lab.state = state;
        lab.roster = roster;
        Ok(lab)
    }

    /// The identity (key pair) of `name`.
    pub fn identity(&self, name: &str) -> Identity {
        self.identities
            .iter()
            .find(|i| i.name() == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not in the lab's roster"))
    }

    /// The roster every switch trusts, for simulated members' codecs.
    pub fn roster(&self) -> Roster {
        Roster::generated(&self.identities, &SERVERS)
    }

    /// Switch `n`'s replay counters file.
    pub fn counters_file(&self, n: usize) -> PathBuf {
        self.state.path().join(format!("sw{n}.counters.json"))
    }

    fn build(switches: usize) -> anyhow::Result<Self> {
        let hub = Netns::new("fhub")?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        hub.ip(&["addr", "add", &format!("{HUB_IP}/24"), "dev", "br0"])?;
        let mut nodes = Vec::new();
        for n in 0..switches {
            let ns = Netns::new(&format!("fsw{n}"))?;
            let port = format!("h{n}");
            veth(&ns, "fab0", &hub, &port)?;
            hub.ip(&["link", "set", &port, "master", "br0"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", switch_ip(n)),
                "dev",
                "fab0",
            ])?;
            ns.ip(&["link", "add", "p1", "type", "veth", "peer", "name", "p1b"])?;
            ns.ip(&["link", "set", "p1", "up"])?;
            ns.ip(&["link", "set", "p1b", "up"])?;
            nodes.push(ns);
        }
        Ok(Self {
            nodes,
            hub,
            identities: Vec::new(),
            state: tempfile::tempdir()?,
            roster: String::new(),
        })
    }

    /// A config for switch `n`: servers are switches 0 and 1 unless
    /// `fabric_extra` says otherwise; `fabric_extra` goes into `[fabric]`
    /// (it may open sub-tables such as `[fabric.encryption]`), then comes
    /// `[fabric.trust]` with the lab's key files and roster.
    pub fn config(&self, n: usize, fabric_extra: &str) -> String {
        let servers = if fabric_extra.contains("servers") {
            String::new()
        } else {
            format!("servers = [\"{}\", \"{}\"]\n", switch_ip(0), switch_ip(1))
        };
        format!(
            r#"instance = "{{instance}}"
[dataplane]
member_ports = ["p1"]
[fabric]
{servers}identity = "sw{n}"
model = "lab-switch"
{FAST_TIMERS}
{fabric_extra}
[fabric.trust]
key_file = "{key}"
counters_file = "{counters}"
{roster}"#,
            key = self.state.path().join(format!("sw{n}.key")).display(),
            counters = self.counters_file(n).display(),
            roster = self.roster,
        )
    }

    /// Starts switch `n`'s agent.
    pub fn start(&self, n: usize, fabric_extra: &str) -> anyhow::Result<Agent> {
        Agent::start(&self.nodes[n], &self.config(n, fabric_extra))
            .with_context(|| format!("starting sw{n}"))
    }
}

/// `show fabric -j`.
pub fn show(agent: &Agent) -> anyhow::Result<serde_json::Value> {
    agent.query(&["show", "fabric"])
}

/// Identities `agent` lists with state `up`.
pub fn up_members(agent: &Agent) -> anyhow::Result<Vec<String>> {
    let f = show(agent)?;
    let mut out: Vec<String> = f["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter(|m| m["state"] == "up")
        .filter_map(|m| m["identity"].as_str().map(str::to_string))
        .collect();
    out.sort();
    Ok(out)
}

/// `identity:state` for every member `agent` lists.
pub fn member_states(agent: &Agent) -> anyhow::Result<Vec<String>> {
    let f = show(agent)?;
    Ok(f["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| {
            format!(
                "{}:{}",
                m["identity"].as_str().unwrap_or("?"),
                m["state"].as_str().unwrap_or("?")
            )
        })
        .collect())
}

/// Waits until every agent lists exactly `expected` as up.
pub fn wait_all_see(agents: &[&Agent], expected: &[&str], timeout: Duration) -> anyhow::Result<()> {
    for agent in agents {
        let seen = wait_until(
            timeout,
            &format!("{} to list {expected:?} as up", agent.instance),
            || {
                let up = up_members(agent).map_err(|e| vec![e.to_string()])?;
                if up == expected {
                    Ok(())
                } else {
                    // Every member with its state, so a failure says whether
                    // one is missing, silent or departed.
                    Err(member_states(agent).unwrap_or(up))
                }
            },
        );
        // The fabric lines of every agent's log: which member went where,
        // and which server announced what, is the story of a failure here.
        seen.map_err(|err| anyhow::anyhow!("{err}\n{}", fabric_logs(agents)))?;
    }
    Ok(())
}

/// The last fabric lines of each agent's log, headed by its instance.
pub fn fabric_logs(agents: &[&Agent]) -> String {
    let mut out = String::new();
    for agent in agents {
        let text = agent.log_text();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("fabric")).collect();
        out.push_str(&format!("--- {} (last fabric log lines)\n", agent.instance));
        for line in &lines[lines.len().saturating_sub(40)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The value of fabric setting `key` in force on `agent`, with its acks.
pub fn setting(agent: &Agent, key: &str) -> anyhow::Result<Option<serde_json::Value>> {
    let f = show(agent)?;
    Ok(f["config"]
        .as_array()
        .context("config")?
        .iter()
        .find(|c| c["key"] == key)
        .cloned())
}

/// Waits until `agent` has `key = value` in force.
pub fn wait_setting(
    agent: &Agent,
    key: &str,
    value: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    wait_until(
        timeout,
        &format!("{} to apply {key} = {value}", agent.instance),
        || match setting(agent, key) {
            Ok(Some(s)) if s["value"] == value => Ok(s),
            other => Err(format!("{other:?}")),
        },
    )
}

/// A fabric counter of `agent`.
pub fn counter(agent: &Agent, name: &str) -> u64 {
    show(agent)
        .ok()
        .and_then(|f| f["counters"][name].as_u64())
        .unwrap_or(0)
}

/// Waits until `agent` has heard `member`'s `kind` fault on `port`.
pub fn wait_fault(
    agent: &Agent,
    member: &str,
    port: &str,
    kind: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_until(
        timeout,
        &format!("{} to hear {member}'s {port} {kind}", agent.instance),
        || {
            let f = show(agent).map_err(|e| serde_json::Value::String(e.to_string()))?;
            let hit = f["faults"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|x| x["member"] == member && x["port"] == port && x["kind"] == kind)
            });
            if hit {
                Ok(())
            } else {
                Err(f["faults"].clone())
            }
        },
    )
}

/// Waits until the server `agent` reports `active`.
pub fn wait_active(agent: &Agent, active: bool, timeout: Duration) -> anyhow::Result<()> {
    wait_until(
        timeout,
        &format!("{} active = {active}", agent.instance),
        || {
            let f = show(agent).map_err(|e| serde_json::Value::String(e.to_string()))?;
            if f["active"] == active {
                Ok(())
            } else {
                Err(f["active"].clone())
            }
        },
    )
}

/// The gaps between `member`'s heartbeats as a plain MQTT subscriber
/// (`mosquitto_sub` in the hub) sees them arrive at `broker` over `window`:
/// a measurement of the interval a member really uses, independent of what
/// it reports about itself.
pub fn heartbeat_gaps(
    lab: &FabricLab,
    broker: &str,
    member: &str,
    window: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let topic = format!("mlag-sync/DEV_INFO_MSG/member/{member}");
    let seconds = format!("{:.1}", window.as_secs_f64());
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", lab.hub.name(), "timeout", &seconds])
        .args(["mosquitto_sub", "-h", broker, "-t", &topic, "-F", "%U"])
        .output()
        .context("mosquitto_sub")?;
    // `timeout` ends the subscriber: exit status 124 is the normal end.
    let arrivals: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    Ok(arrivals
        .windows(2)
        .map(|w| Duration::from_secs_f64((w[1] - w[0]).max(0.0)))
        .collect())
}

/// The median of `gaps` (a few late heartbeats on a busy machine do not
/// move it, where a mean or a count over a window would).
pub fn median(gaps: &[Duration]) -> Option<Duration> {
    let mut sorted = gaps.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}
