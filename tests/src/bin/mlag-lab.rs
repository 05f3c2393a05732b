//! The self-contained lab behind `cargo xtask run`: switches A and B (an MLAG
//! pair joined by a peer link) and server C cabled to both, in network
//! namespaces (see `mlag_testbed::pair`); a real agent on each switch with
//! peer sync on; real ARP traffic; a live view of what each switch captured
//! and what each kernel learnt. Ctrl-C tears it all down.
//!
//! `mlag-lab --rounds N` runs N rounds and exits (used by the tests).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use mlag_testbed::{
    agent::Agent,
    frames::TPID_8021Q,
    netns::fmt_mac,
    pair::{self, A_IP, B_IP, C_IP, Pair},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

const VRRP_MAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x01];
/// On this kernel (no VLAN devices) VLAN 10 is handed to the member port untagged.
const VLAN_MAP: &str =
    r#"vlan_interfaces = [{ mlag_id = 1, outer_vlan = 10, interface = "MEMBER" }]"#;

fn traffic(pair: &Pair, round: u64) -> anyhow::Result<()> {
    // A resolves C: A's request goes out; C's load balancing sends the reply
    // out of its link to B. Without peer sync A would never learn it.
    pair.a.ip(&["neigh", "flush", "dev", "a-c"])?;
    let mut ping = pair.a_starts_resolving("10.77.0.3")?;
    pair.c.send_frames(
        "c-b",
        &[pair.reply_from_c(C_IP, pair.a_mac, A_IP).to_bytes()],
    )?;
    // Another host behind C answers B on VLAN 10 (class own on B, synced to A).
    let host = [10, 77, 0, 100 + (round % 50) as u8];
    pair.c.send_frames(
        "c-b",
        &[pair
            .reply_from_c(host, pair.b_mac, B_IP)
            .tagged(&[(TPID_8021Q, 10)])
            .to_bytes()],
    )?;
    // A reply to the pair's VRRP MAC: shared, learnt locally only.
    pair.c
        .send_frames("c-a", &[pair.reply_from_c(C_IP, VRRP_MAC, A_IP).to_bytes()])?;
    let _ = ping.kill();
    let _ = ping.wait();
    Ok(())
}

fn show(
    name: &str,
    agent: &Agent,
    ns: &mlag_testbed::netns::Netns,
    dev: &str,
) -> anyhow::Result<()> {
    let c = agent.counters()?;
    let p = agent.query(&["show", "peer"])?;
    println!(
        "switch {name}: arp replies {:>3}  peer {:>3}  own {:>3}  shared {:>3}  captured {:>3} | session {}  sent {}  received {}  injected {}",
        c["arp_replies"],
        c["peer"],
        c["own"],
        c["shared"],
        c["captured"],
        p["state"].as_str().unwrap_or("?"),
        p["counters"]["entries_sent"],
        p["counters"]["entries_received"],
        p["counters"]["injected"]
    );
    let kernel = pair::resolved_neighbours(ns, dev)?;
    let shown: Vec<String> = kernel
        .iter()
        .take(4)
        .map(|(ip, mac)| format!("{ip} {mac}"))
        .collect();
    println!(
        "    kernel ARP table on {dev}: {} entries  {}",
        kernel.len(),
        shown.join(", ")
    );
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
    let pair = Pair::new()?;
    let agent_a = pair.agent_a(&VLAN_MAP.replace("MEMBER", "a-c"))?;
    let agent_b = pair.agent_b(&VLAN_MAP.replace("MEMBER", "b-c"))?;
    println!(
        "namespaces: {} {} {}",
        pair.a.name(),
        pair.b.name(),
        pair.c.name()
    );
    let bin = mlag_testbed::agent::agent_binary()?;
    println!("query the agents yourself, e.g.:");
    println!(
        "  {} --socket {} show peer",
        bin.display(),
        agent_a.socket.display()
    );
    println!(
        "  {} --socket {} show arp",
        bin.display(),
        agent_a.socket.display()
    );
    println!(
        "  {} --socket {} show captured -j",
        bin.display(),
        agent_b.socket.display()
    );
    println!("  ip -n {} neigh", pair.a.name());
    println!(
        "A's member port MAC {}, B's {}; C answers from {}",
        fmt_mac(&pair.a_mac),
        fmt_mac(&pair.b_mac),
        fmt_mac(&pair.c_mac)
    );
    println!(
        "each round: A asks for C and C's reply lands on B; a host answers B on VLAN 10; a reply to the VRRP MAC"
    );
    println!("Ctrl-C stops the lab and removes everything.\n");
    let mut round = 0u64;
    while !STOP.load(Ordering::Relaxed) && rounds.is_none_or(|n| round < n) {
        round += 1;
        traffic(&pair, round)?;
        std::thread::sleep(Duration::from_millis(200));
        println!("--- round {round}");
        show("A", &agent_a, &pair.a, "a-c")?;
        show("B", &agent_b, &pair.b, "b-c")?;
        for e in agent_a
            .query(&["show", "arp"])?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["direction"] == "received")
            .take(3)
        {
            println!(
                "    A learnt from B: {} {} via {} (class {} on B, kernel {})",
                e["ip"].as_str().unwrap_or("?"),
                e["mac"].as_str().unwrap_or("?"),
                e["how"].as_str().unwrap_or("?"),
                e["class"].as_str().unwrap_or("?"),
                e["kernel_state"].as_str().unwrap_or("?")
            );
        }
        for _ in 0..15 {
            if STOP.load(Ordering::Relaxed) || rounds.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("\nstopping agents and removing namespaces");
    Ok(())
}
