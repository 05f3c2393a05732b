//! The self-contained lab behind `cargo xtask run`: switches A and B (an MLAG
//! pair joined by a peer link) and server C, cabled to both, in network
//! namespaces; a real agent on each switch; real ARP traffic; a live view of
//! how every reply is classified. Ctrl-C tears it all down.
//!
//! ```text
//!            peer link
//!   [A] a-peer ------- b-peer [B]
//!    a-c |                | b-c      member ports (XDP classifier)
//!        |                |
//!    c-a +------[C]-------+ c-b      C's "bond": replies may leave by either link
//! ```
//!
//! `mlag-lab --rounds N` runs N rounds and exits (used by the tests).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use mlag_testbed::{
    agent::Agent,
    frames::{Arp, TPID_8021Q},
    netns::{self, Netns, fmt_mac},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

const C_IP: [u8; 4] = [10, 77, 0, 3];
const A_IP: [u8; 4] = [10, 77, 0, 1];
const B_IP: [u8; 4] = [10, 77, 0, 2];
const VRRP_MAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x01];

fn switch_config(member: &str, peer_mac: [u8; 6]) -> String {
    format!(
        r#"instance = "{{instance}}"
[dataplane]
member_ports = ["{member}"]
peer_macs = ["{}"]
vrrp_groups = [1]
"#,
        fmt_mac(&peer_mac)
    )
}

struct Lab {
    a: Netns,
    b: Netns,
    c: Netns,
    a_mac: [u8; 6],
    b_mac: [u8; 6],
    c_mac: [u8; 6],
}

fn build() -> anyhow::Result<Lab> {
    let a = Netns::new("mlab-a")?;
    let b = Netns::new("mlab-b")?;
    let c = Netns::new("mlab-c")?;
    netns::veth(&a, "a-c", &c, "c-a")?;
    netns::veth(&b, "b-c", &c, "c-b")?;
    netns::veth(&a, "a-peer", &b, "b-peer")?;
    a.ip(&["addr", "add", "10.77.0.1/24", "dev", "a-c"])?;
    b.ip(&["addr", "add", "10.77.0.2/24", "dev", "b-c"])?;
    c.ip(&["addr", "add", "10.77.0.3/24", "dev", "c-a"])?;
    a.ip(&["addr", "add", "169.254.77.1/30", "dev", "a-peer"])?;
    b.ip(&["addr", "add", "169.254.77.2/30", "dev", "b-peer"])?;
    Ok(Lab {
        a_mac: a.mac("a-c")?,
        b_mac: b.mac("b-c")?,
        c_mac: c.mac("c-a")?,
        a,
        b,
        c,
    })
}

fn traffic(lab: &Lab) -> anyhow::Result<()> {
    // A resolves C for real: A's request, C's reply to A's MAC on the A-C link.
    lab.a.ip(&["neigh", "flush", "dev", "a-c"])?;
    let _ = lab.a.exec("ping", &["-c", "1", "-W", "1", "10.77.0.3"]);
    // C's load balancing sends a reply to A's request out of the B link: B
    // sees a reply to its peer's MAC.
    lab.c.send_frames(
        "c-b",
        &[Arp::reply((lab.c_mac, C_IP), (lab.a_mac, A_IP)).to_bytes()],
    )?;
    // A reply to the pair's VRRP MAC: shared, learnt locally only.
    lab.c.send_frames(
        "c-a",
        &[Arp::reply((lab.c_mac, C_IP), (VRRP_MAC, A_IP)).to_bytes()],
    )?;
    // A reply to B on VLAN 10: own, synced with its tag.
    lab.c.send_frames(
        "c-b",
        &[Arp::reply((lab.c_mac, C_IP), (lab.b_mac, B_IP))
            .tagged(&[(TPID_8021Q, 10)])
            .to_bytes()],
    )?;
    Ok(())
}

fn show(name: &str, agent: &Agent) -> anyhow::Result<()> {
    let c = agent.counters()?;
    println!(
        "switch {name}: seen {:>4}  arp replies {:>3}  peer {:>3}  own {:>3}  shared {:>3}  malformed {}  captured {:>3}  ringbuf full {}",
        c["seen"],
        c["arp_replies"],
        c["peer"],
        c["own"],
        c["shared"],
        c["malformed"],
        c["captured"],
        c["ringbuf_full"]
    );
    for e in agent.captured()?.iter().take(2) {
        let vlan = if e["vlan_count"] == 0 {
            "-".to_string()
        } else {
            e["outer_vlan"].to_string()
        };
        println!(
            "    captured on {:<5} class {:<5} vlan {:<3} {} ({}) -> {} ({})  {} ms ago",
            e["port"].as_str().unwrap_or("?"),
            e["class"].as_str().unwrap_or("?"),
            vlan,
            e["sender_ip"].as_str().unwrap_or("?"),
            e["sender_mac"].as_str().unwrap_or("?"),
            e["target_ip"].as_str().unwrap_or("?"),
            e["target_mac"].as_str().unwrap_or("?"),
            e["age_ms"]
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rounds: Option<u64> = match std::env::args().nth(1).as_deref() {
        Some("--rounds") => Some(
            std::env::args()
                .nth(2)
                .context("--rounds needs a number")?
                .parse()?,
        ),
        Some(other) => anyhow::bail!("unknown argument {other}; usage: mlag-lab [--rounds N]"),
        None => None,
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    println!("mlag-sync lab: building namespaces (A, B, C) and starting an agent on A and B …");
    let lab = build()?;
    let agent_a = Agent::start(&lab.a, &switch_config("a-c", lab.b_mac))?;
    let agent_b = Agent::start(&lab.b, &switch_config("b-c", lab.a_mac))?;
    println!(
        "namespaces: {} {} {}",
        lab.a.name(),
        lab.b.name(),
        lab.c.name()
    );
    println!("query the agents yourself, e.g.:");
    let bin = mlag_testbed::agent::agent_binary()?;
    println!(
        "  {} --socket {} show captured",
        bin.display(),
        agent_a.socket.display()
    );
    println!(
        "  {} --socket {} show counters -j",
        bin.display(),
        agent_b.socket.display()
    );
    println!(
        "A's member port MAC {}, B's {}; C answers from {}",
        fmt_mac(&lab.a_mac),
        fmt_mac(&lab.b_mac),
        fmt_mac(&lab.c_mac)
    );
    println!("Ctrl-C stops the lab and removes everything.\n");
    let mut round = 0u64;
    while !STOP.load(Ordering::Relaxed) && rounds.is_none_or(|n| round < n) {
        round += 1;
        traffic(&lab)?;
        std::thread::sleep(Duration::from_millis(300));
        println!("--- round {round}");
        show("A", &agent_a)?;
        show("B", &agent_b)?;
        for _ in 0..17 {
            if STOP.load(Ordering::Relaxed) || rounds.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("\nstopping agents and removing namespaces");
    Ok(())
}
