//! The self-contained lab behind `cargo xtask run`: the whole product in
//! network namespaces, with real agents, real frames and a real center.
//!
//! ```text
//!            peer link + MC-LAG backup path
//!   [A] ==================================== [B]      MLAG pair: peer sync, MC-LAG,
//!    | a-c          (MLAG id 1)          b-c |        fabric servers (A primary)
//!    +------------------[C]-----------------+        server C, dual-homed
//!
//!   mgmt0 of A, B, D, E --- br0 in [M] 10.99.0.254   config center on M
//!   [D] [E]: two more fabric switches (D is the rollout's canary)
//! ```
//!
//! Every round sends replies C's load balancing delivers to the wrong
//! switch (both ways), and in turn makes one thing happen: a member port
//! flap, a config change rolled out with a canary, the MC-LAG master's
//! agent killed, and its return. After each it prints what every part did.
//! Ctrl-C stops every agent and removes every namespace.
//!
//! A, B and the center serve the web view (`[web]`) inside their
//! namespaces; the lab forwards a loopback port of the host to each, so a
//! browser on the host opens the URLs it prints.
//!
//! `mlag-lab --rounds N` runs N rounds and exits (used by the tests);
//! `--hold` then keeps the lab up, without further rounds, until Ctrl-C
//! or SIGTERM (the web view test looks at it meanwhile).

use std::{
    fmt::Write as _,
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use mlag_testbed::{
    agent::{Agent, agent_binary},
    fabric::{FAST_TIMERS, up_members},
    frames::TPID_8021Q,
    netns::{self, Netns, fmt_mac},
    pair::{self, A_IP, B_IP, C_IP, Pair},
    wait_until,
};
use sync_agent::fabric::identity::Identity;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

const VRRP_MAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x01];
/// On this kernel (no VLAN devices) VLAN 10 is handed to the member port untagged.
const VLAN_MAP: &str =
    r#"vlan_interfaces = [{ mlag_id = 1, outer_vlan = 10, interface = "MEMBER" }]"#;
const CENTER_IP: &str = "10.99.0.254";
/// C's second address, the one B resolves.
const C_SECOND_IP: [u8; 4] = [10, 77, 0, 4];
const CONFIG_KEY: &str = "lab/prod/motd";
/// Fabric names: A and B are the servers; D is the rollout's canary.
const SWITCHES: [&str; 4] = ["sw-a", "sw-b", "sw-d", "sw-e"];
const WAIT: Duration = Duration::from_secs(20);
/// Where A and B serve the web view, inside their namespaces; the host
/// ports forwarded to them are these, or any free ones if taken.
const WEB_PORT: u16 = 9473;
const HOST_WEB_PORTS: [u16; 3] = [9473, 9474, 9475];

/// The host on VLAN 10 that answers B in round `round`.
fn host_ip(round: u64) -> String {
    format!("10.77.0.{}", 100 + round % 50)
}

fn mgmt_ip(n: usize) -> String {
    format!("10.99.0.{}", n + 1)
}

/// Which switch of the pair.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    A,
    B,
}

/// The lab. Agents are declared before the namespaces they run in, so they
/// stop first.
struct Lab {
    a: Option<Agent>,
    b: Option<Agent>,
    members: Vec<Agent>,
    /// The config center's agent, kept running (the devices poll it).
    _center: Agent,
    pair: Pair,
    backup: (String, String),
    mgmt: Netns,
    others: Vec<Netns>,
    state: tempfile::TempDir,
    roster: String,
    published: u64,
    /// The host's URLs of A's, B's and the center's web views.
    web: [String; 3],
}

impl Lab {
    fn new() -> anyhow::Result<Self> {
        let pair = Pair::new()?;
        let backup = pair.add_backup_path()?;
        let mgmt = Netns::new("mlm")?;
        mgmt.ip(&["link", "add", "br0", "type", "bridge"])?;
        mgmt.ip(&["link", "set", "br0", "up"])?;
        mgmt.ip(&["addr", "add", &format!("{CENTER_IP}/24"), "dev", "br0"])?;
        let others = vec![Netns::new("mld")?, Netns::new("mle")?];
        for (n, ns) in [&pair.a, &pair.b, &others[0], &others[1]]
            .into_iter()
            .enumerate()
        {
            let port = format!("m{n}");
            netns::veth(ns, "mgmt0", &mgmt, &port)?;
            mgmt.ip(&["link", "set", &port, "master", "br0"])?;
            ns.ip(&["addr", "add", &format!("{}/24", mgmt_ip(n)), "dev", "mgmt0"])?;
        }
        // D and E's own member port: a veth pair inside each.
        for ns in &others {
            ns.ip(&["link", "add", "p1", "type", "veth", "peer", "name", "p1b"])?;
            ns.ip(&["link", "set", "p1", "up"])?;
            ns.ip(&["link", "set", "p1b", "up"])?;
        }
        let state = tempfile::tempdir()?;
        let mut roster = String::from("[fabric.trust.roster]\n");
        for (n, name) in SWITCHES.iter().enumerate() {
            let identity =
                Identity::load_or_create(name, &state.path().join(format!("{name}.key")))?;
            writeln!(
                roster,
                "{name} = {{ public_key = \"{}\", server = {} }}",
                identity.public_hex(),
                n < 2
            )?;
            std::fs::create_dir_all(state.path().join(name))?;
        }
        let center = Agent::start(
            &mgmt,
            &format!(
                "instance = \"{{instance}}\"\n[rollout.center]\nlisten = \"{CENTER_IP}:7480\"\ninsecure = true\ndb_path = \"{}\"\nbatch_size = 2\npace_ms = 1000\n[web]\nlisten = \"127.0.0.1:{WEB_PORT}\"\nrefresh_ms = 1000\n",
                state.path().join("center.redb").display()
            ),
        )
        .context("starting the config center")?;
        let mut lab = Self {
            a: None,
            b: None,
            members: Vec::new(),
            _center: center,
            pair,
            backup,
            mgmt,
            others,
            state,
            roster,
            published: 0,
            web: Default::default(),
        };
        for (n, ns) in [&lab.pair.a, &lab.pair.b, &lab.mgmt]
            .into_iter()
            .enumerate()
        {
            let to = SocketAddr::from((Ipv4Addr::LOCALHOST, WEB_PORT));
            let at = forward(HOST_WEB_PORTS[n], ns.name(), to)
                .with_context(|| format!("forwarding a host port to {}'s web view", ns.name()))?;
            lab.web[n] = format!("http://{at}/");
        }
        lab.publish("first version")?;
        lab.a = Some(lab.start(Side::A)?);
        lab.b = Some(lab.start(Side::B)?);
        for (n, ns) in [(2, 0), (3, 1)] {
            let config = format!(
                "instance = \"{{instance}}\"\n[dataplane]\nmember_ports = [\"p1\"]\n{}",
                lab.common(n)
            );
            let agent = Agent::start(&lab.others[ns], &config)
                .with_context(|| format!("starting {}", SWITCHES[n]))?;
            lab.members.push(agent);
        }
        Ok(lab)
    }

    /// The `[fabric]` and `[rollout.device]` sections of switch `n`.
    fn common(&self, n: usize) -> String {
        let name = SWITCHES[n];
        let dir = self.state.path().join(name);
        format!(
            r#"
[fabric]
servers = ["{a}", "{b}"]
identity = "{name}"
model = "lab-switch"
{timers}

[fabric.trust]
key_file = "{key}"
counters_file = "{counters}"
{roster}
[rollout.device]
center = "http://{CENTER_IP}:7480"
device = "{name}"
backup_dir = "{backup}"
labels = [{labels}]
services = [{{ name = "motd", config = "{CONFIG_KEY}", path = "{motd}", reload = ["true"], health = ["true"] }}]
"#,
            timers = FAST_TIMERS,
            a = mgmt_ip(0),
            b = mgmt_ip(1),
            key = self.state.path().join(format!("{name}.key")).display(),
            counters = dir.join("counters.json").display(),
            roster = self.roster,
            backup = dir.join("backup").display(),
            labels = if n == 2 { "\"canary\"" } else { "" },
            motd = dir.join("motd").display(),
        )
    }

    /// Starts the agent of one switch of the pair.
    fn start(&self, side: Side) -> anyhow::Result<Agent> {
        let (n, member, backup) = match side {
            Side::A => (0, "a-c", &self.backup.0),
            Side::B => (1, "b-c", &self.backup.1),
        };
        let extra = format!(
            "{}\n\n[mclag]\ninit_delay_s = 0\n{backup}{}\n[web]\nlisten = \"127.0.0.1:{WEB_PORT}\"\nrefresh_ms = 1000\n",
            VLAN_MAP.replace("MEMBER", member),
            self.common(n)
        );
        match side {
            Side::A => self.pair.agent_a(&extra),
            Side::B => self.pair.agent_b(&extra),
        }
        .with_context(|| format!("starting switch {side:?}"))
    }

    fn agent(&self, side: Side) -> Option<&Agent> {
        match side {
            Side::A => self.a.as_ref(),
            Side::B => self.b.as_ref(),
        }
    }

    /// Writes a new version of the lab's config on the center, with the
    /// canary first; returns what the center answered.
    fn publish(&mut self, text: &str) -> anyhow::Result<serde_json::Value> {
        self.published += 1;
        let file = self.state.path().join("motd.new");
        std::fs::write(&file, format!("{text} (change {})\n", self.published))?;
        let bin = agent_binary()?;
        let center = format!("http://{CENTER_IP}:7480");
        let put = |canary: &[&str]| {
            let file = file.to_str().context("file path")?;
            let args = [
                &[
                    "config", "put", CONFIG_KEY, "--format", "text", "--file", file,
                ][..],
                canary,
                &["--center", &center, "-j"],
            ]
            .concat();
            self.mgmt.exec(bin.to_str().context("agent path")?, &args)
        };
        // The first version goes out before any device registered: no
        // canary to name yet.
        let out = match put(&["--canary", "canary"]) {
            Ok(out) => out,
            Err(_) if self.published == 1 => put(&[])?,
            Err(e) => return Err(e),
        };
        Ok(serde_json::from_str(&out).unwrap_or(serde_json::Value::String(out)))
    }

    /// Replies C's load balancing delivers to the wrong switch, both ways,
    /// a reply from a host on VLAN 10, and one to the pair's VRRP MAC.
    fn traffic(&self, round: u64) -> anyhow::Result<()> {
        let pair = &self.pair;
        if self.a.is_some() {
            // Only the entry A asks for: flushing the whole table would
            // also remove what B's kernel learnt, which B then withdraws.
            pair.a
                .ip(&["neigh", "flush", "to", "10.77.0.3", "dev", "a-c"])?;
            let mut ping = pair.a_starts_resolving("10.77.0.3")?;
            // To the MAC A's request came from: MC-LAG gives both member
            // ports the pair's shared MAC.
            let a_now = pair.a.mac("a-c")?;
            pair.c
                .send_frames("c-b", &[pair.reply_from_c(C_IP, a_now, A_IP).to_bytes()])?;
            let _ = ping.kill();
            let _ = ping.wait();
        }
        if self.b.is_some() {
            pair.b
                .ip(&["neigh", "flush", "to", "10.77.0.4", "dev", "b-c"])?;
            // B asks for C's second address (one entry per address: each
            // switch learns its own from the other).
            let mut ping = pair.b_starts_resolving("10.77.0.4")?;
            let b_now = pair.b.mac("b-c")?;
            pair.c.send_frames(
                "c-a",
                &[pair.reply_from_c(C_SECOND_IP, b_now, B_IP).to_bytes()],
            )?;
            let _ = ping.kill();
            let _ = ping.wait();
        }
        let host: std::net::Ipv4Addr = host_ip(round).parse()?;
        pair.c.send_frames(
            "c-b",
            &[pair
                .reply_from_c(host.octets(), pair.b.mac("b-c")?, B_IP)
                .tagged(&[(TPID_8021Q, 10)])
                .to_bytes()],
        )?;
        pair.c
            .send_frames("c-a", &[pair.reply_from_c(C_IP, VRRP_MAC, A_IP).to_bytes()])?;
        Ok(())
    }

    /// The switch of the pair that is MC-LAG master now, if one is.
    fn master(&self) -> Option<Side> {
        [Side::A, Side::B].into_iter().find(|side| {
            self.agent(*side)
                .and_then(|a| a.query(&["show", "mclag"]).ok())
                .is_some_and(|r| r["role"] == "master")
        })
    }

    /// The thing round `round` makes happen; returns its headline.
    fn event(&mut self, round: u64) -> anyhow::Result<String> {
        Ok(match round % 4 {
            1 => {
                self.pair.b.ip(&["link", "set", "b-c", "down"])?;
                // Until A's model has heard of it from the peer (at most WAIT).
                let _ = wait_until(WAIT, "A's MLAG interface degraded", || {
                    let seen = self.view_mlag(Side::A);
                    (!seen.contains("normal")).then_some(()).ok_or(seen)
                });
                let seen = self.view_mlag(Side::A);
                self.pair.b.ip(&["link", "set", "b-c", "up"])?;
                format!("port flap: B's member port b-c down (meanwhile on A: {seen}), then up")
            }
            2 => {
                let answer = self.publish("message of the day")?;
                format!(
                    "config change: {CONFIG_KEY} version {} put on the center, canary sw-d first, batches of 2",
                    answer["version"]
                )
            }
            3 => {
                let Some(master) = self.master() else {
                    return Ok("master failure: no master elected yet; skipped".into());
                };
                let agent = match master {
                    Side::A => self.a.take(),
                    Side::B => self.b.take(),
                };
                if let Some(agent) = agent
                    && let Some(pid) = agent.pid()
                {
                    // SAFETY: signalling a pid has no memory-safety preconditions.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    drop(agent);
                }
                let survivor = if master == Side::A { Side::B } else { Side::A };
                let took_over = wait_until(WAIT, "takeover", || {
                    (self.master() == Some(survivor)).then_some(()).ok_or(())
                })
                .is_ok();
                format!(
                    "master failure: SIGKILL of {master:?}'s agent (the master); {survivor:?} {}",
                    if took_over {
                        "took over as master"
                    } else {
                        "did not take over"
                    }
                )
            }
            _ => {
                let Some(gone) = [Side::A, Side::B]
                    .into_iter()
                    .find(|s| self.agent(*s).is_none())
                else {
                    return Ok("nothing to bring back".into());
                };
                let agent = self.start(gone)?;
                let up = agent.wait_session_up().is_ok();
                match gone {
                    Side::A => self.a = Some(agent),
                    Side::B => self.b = Some(agent),
                }
                format!(
                    "return: {gone:?}'s agent restarted; peer session {}",
                    if up { "up again" } else { "not up yet" }
                )
            }
        })
    }

    fn view_mlag(&self, side: Side) -> String {
        let Some(agent) = self.agent(side) else {
            return "agent stopped".into();
        };
        match agent.query(&["show", "state", "mlag:1"]) {
            Ok(s) => format!(
                "mlag:1 {}({})",
                s["object"]["effective"][0]["name"].as_str().unwrap_or("?"),
                s["object"]["fault_level"]
            ),
            Err(e) => format!("mlag:1 unknown ({e})"),
        }
    }

    /// One line per switch of the pair, then the fabric and the rollout.
    fn show(&self, round: u64) -> anyhow::Result<()> {
        for (side, ns, dev) in [
            (Side::A, &self.pair.a, "a-c"),
            (Side::B, &self.pair.b, "b-c"),
        ] {
            let Some(agent) = self.agent(side) else {
                println!("switch {side:?}: agent stopped");
                continue;
            };
            let c = agent.counters()?;
            let peer = agent.query(&["show", "peer"])?;
            let mclag = agent.query(&["show", "mclag"])?;
            let learnt = agent.query(&["show", "arp"])?.as_array().map_or(0, |a| {
                a.iter().filter(|e| e["direction"] == "received").count()
            });
            let kernel = pair::resolved_neighbours(ns, dev)?;
            println!(
                "switch {side:?}: mclag {:<6} session {:<11} captured {:>3} sent {:>3} received {:>3} | learnt from the peer {learnt}, kernel ARP entries on {dev} {} | {}",
                mclag["role"].as_str().unwrap_or("?"),
                peer["state"].as_str().unwrap_or("?"),
                c["captured"],
                peer["counters"]["entries_sent"],
                peer["counters"]["entries_received"],
                kernel.len(),
                self.view_mlag(side),
            );
        }
        // C's reply (to the other switch's request) and this round's VLAN 10
        // host, as each switch learnt them from the other.
        let host = host_ip(round);
        for (side, other) in [(Side::A, Side::B), (Side::B, Side::A)] {
            let Some(agent) = self.agent(side) else {
                continue;
            };
            let entries = agent.query(&["show", "arp"])?;
            let received: Vec<&serde_json::Value> = entries
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["direction"] == "received")
                .collect();
            for e in received.iter().filter(|e| {
                ["10.77.0.3", "10.77.0.4", host.as_str()].contains(&e["ip"].as_str().unwrap_or(""))
            }) {
                println!(
                    "    {side:?} learnt from {other:?}: {} {} via {} (class {} on {other:?}, kernel {})",
                    e["ip"].as_str().unwrap_or("?"),
                    e["mac"].as_str().unwrap_or("?"),
                    e["how"].as_str().unwrap_or("?"),
                    e["class"].as_str().unwrap_or("?"),
                    e["kernel_state"].as_str().unwrap_or("?")
                );
            }
        }
        // Root-cause alarms as the first switch of the pair that runs sees
        // them: each raised alarm, its root causes, what is suppressed under it.
        if let Some((side, agent)) = [Side::A, Side::B]
            .into_iter()
            .find_map(|s| self.agent(s).map(|a| (s, a)))
        {
            let alarms = agent.query(&["show", "alarms"])?;
            let raised = alarms["alarms"].as_array().cloned().unwrap_or_default();
            let listed: Vec<String> = raised
                .iter()
                .map(|a| {
                    format!(
                        "{} (root {}; {} under it)",
                        a["object"].as_str().unwrap_or("?"),
                        a["root_causes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        a["suppressed"].as_array().map_or(0, Vec::len)
                    )
                })
                .collect();
            println!(
                "alarms on {side:?}: {} raised {}",
                raised.len(),
                listed.join("; ")
            );
        }
        let server = self.a.as_ref().or(self.b.as_ref());
        if let Some(server) = server {
            let fabric = server.query(&["show", "fabric"])?;
            let up = up_members(server).unwrap_or_default();
            let faults = fabric["faults"].as_array().cloned().unwrap_or_default();
            println!(
                "fabric (seen by {}): members up {} [{}]; this server active: {}; faults recorded {}{}",
                fabric["identity"].as_str().unwrap_or("?"),
                up.len(),
                up.join(" "),
                fabric["active"],
                faults.len(),
                faults
                    .last()
                    .map(|f| format!(" (last: {f})"))
                    .unwrap_or_default()
            );
        }
        let bin = agent_binary()?;
        let rollouts = self.mgmt.exec(
            bin.to_str().context("agent path")?,
            &[
                "config",
                "rollouts",
                "--center",
                &format!("http://{CENTER_IP}:7480"),
                "-j",
            ],
        )?;
        let rollouts: serde_json::Value = serde_json::from_str(&rollouts)?;
        if let Some(r) = rollouts.as_array().and_then(|a| a.first()) {
            let batches: Vec<String> = r["batches"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let steps: Vec<String> = b
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| {
                            format!(
                                "{}:{}",
                                s["device"].as_str().unwrap_or("?"),
                                s["state"].as_str().unwrap_or("?")
                            )
                        })
                        .collect();
                    format!("[{}]", steps.join(" "))
                })
                .collect();
            println!(
                "rollout {} of {CONFIG_KEY} version {}: {} {}",
                r["id"],
                r["version"],
                r["state"].as_str().unwrap_or("?"),
                batches.join(" ")
            );
        }
        Ok(())
    }

    fn where_to_look(&self) -> anyhow::Result<()> {
        let bin = agent_binary()?;
        let socket = |agent: &Option<Agent>| {
            agent
                .as_ref()
                .map_or(PathBuf::new(), |a| a.socket.clone())
                .display()
                .to_string()
        };
        println!(
            "namespaces: A {}  B {}  C {}  D {}  E {}  management {}",
            self.pair.a.name(),
            self.pair.b.name(),
            self.pair.c.name(),
            self.others[0].name(),
            self.others[1].name(),
            self.mgmt.name()
        );
        println!(
            "look yourself (the sockets change when an agent restarts; the lab prints them again):"
        );
        let a = socket(&self.a);
        let b = socket(&self.b);
        for (socket, what) in [
            (&a, "show peer"),
            (&a, "show arp"),
            (&b, "show arp"),
            (&a, "show mclag"),
            (&a, "show fabric"),
            (&a, "show state mlag:1"),
            (&b, "show rollout"),
        ] {
            println!("  {} --socket {socket} {what}", bin.display());
        }
        println!(
            "  ip netns exec {} {} config rollouts --center http://{CENTER_IP}:7480",
            self.mgmt.name(),
            bin.display()
        );
        println!("  ip -n {} neigh", self.pair.a.name());
        println!(
            "web view: switch A {}  switch B {}  config center {} (live; forwarded into their namespaces)",
            self.web[0], self.web[1], self.web[2]
        );
        println!(
            "A's member port MAC {}, B's {}; C answers from {}",
            fmt_mac(&self.pair.a_mac),
            fmt_mac(&self.pair.b_mac),
            fmt_mac(&self.pair.c_mac)
        );
        Ok(())
    }
}

/// Serves `host_port` on the host's loopback (or a free port if it is
/// taken) and relays every connection to `to` inside namespace `ns`;
/// returns the address it serves.
fn forward(host_port: u16, ns: &str, to: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, host_port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
    let at = listener.local_addr()?;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let path = path.clone();
            std::thread::spawn(move || {
                if let Err(err) = relay(client, &path, to) {
                    eprintln!("web view forwarding: {err:#}");
                }
            });
        }
    });
    Ok(at)
}

/// Connects to `to` from inside the namespace at `path` (the thread goes
/// back to the host's namespace once the socket exists), then copies both
/// ways until either side closes.
fn relay(client: TcpStream, path: &str, to: SocketAddr) -> anyhow::Result<()> {
    let host = File::open("/proc/thread-self/ns/net")?;
    let inside = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on valid namespace fds affects only this thread.
    if unsafe { libc::setns(inside.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    let upstream = TcpStream::connect_timeout(&to, Duration::from_secs(2));
    // SAFETY: as above.
    unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) };
    // The agent there may be stopped (a master failure round): the browser
    // sees the connection close and the page says it is not refreshed.
    let upstream = upstream.with_context(|| format!("{to} in {path}"))?;
    let (mut from_client, mut to_upstream) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_upstream);
        let _ = to_upstream.shutdown(std::net::Shutdown::Write);
    });
    let (mut from_upstream, mut to_client) = (upstream, client);
    let _ = std::io::copy(&mut from_upstream, &mut to_client);
    let _ = to_client.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    const USAGE: &str = "usage: mlag-lab [--rounds N] [--hold]";
    let (mut rounds, mut hold) = (None::<u64>, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                rounds = Some(
                    args.next()
                        .context("--rounds needs a number")?
                        .parse()
                        .context("--rounds needs a number")?,
                )
            }
            "--hold" => hold = true,
            other => anyhow::bail!("unknown argument {other}; {USAGE}"),
        }
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    println!(
        "mlag-sync lab: building namespaces (pair A/B, server C, switches D/E, management M) and starting six agents …"
    );
    let mut lab = Lab::new()?;
    lab.where_to_look()?;
    println!(
        "each round: replies C's load balancing sends to the wrong switch (A asks for 10.77.0.3, B for 10.77.0.4), a host on VLAN 10, a reply to the VRRP MAC; then in turn a port flap, a config change with a canary, a master failure, and its return"
    );
    println!("Ctrl-C stops the lab and removes everything.\n");
    let mut round = 0u64;
    while !STOP.load(Ordering::Relaxed) && rounds.is_none_or(|n| round < n) {
        round += 1;
        lab.traffic(round)?;
        let event = lab.event(round)?;
        std::thread::sleep(Duration::from_millis(1000));
        println!("--- round {round}: {event}");
        lab.show(round)?;
        if round.is_multiple_of(4) {
            lab.where_to_look()?;
        }
        for _ in 0..20 {
            if STOP.load(Ordering::Relaxed) || rounds.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if hold && !STOP.load(Ordering::Relaxed) {
        println!("holding the lab up (no more rounds) until Ctrl-C or SIGTERM");
        lab.where_to_look()?;
        while !STOP.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("\nstopping agents and removing namespaces");
    Ok(())
}
