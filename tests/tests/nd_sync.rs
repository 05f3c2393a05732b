//! ND sync against real kernels (issue 15): a misdelivered solicited
//! Neighbour Advertisement is learnt by the asking switch (through the peer
//! link) and by the switch it landed on; tagged NAs reach the interface of
//! their VLAN; an NA to the IPv6 VRRP MAC is shared and never synced; an NA
//! to a switch itself is learnt by its peer (readdressed to all nodes).
//! `cargo xtask test` runs this suite in driver mode and again with
//! `MLAG_TEST_XDP_MODE=generic`.
//!
//! The switches route, as switches do: `net.ipv6.conf.all.forwarding=1`
//! (the kernel creates entries from unsolicited NAs only on a forwarding
//! interface, RFC 9131); the agent sets `accept_untracked_na=1` itself.

use std::time::Duration;

use anyhow::Context as _;
use mlag_testbed::{
    agent::Agent,
    frames::{Na, TPID_8021AD, TPID_8021Q, ipv6},
    netns::{Netns, fmt_mac},
    pair::{self, Pair},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(15);

const A_IP6: [u16; 8] = [0xfd00, 0x77, 0, 0, 0, 0, 0, 1];
const B_IP6: [u16; 8] = [0xfd00, 0x77, 0, 0, 0, 0, 0, 2];

fn c_ip6(last: u16) -> [u16; 8] {
    [0xfd00, 0x77, 0, 0, 0, 0, 0, last]
}

fn text(groups: [u16; 8]) -> String {
    std::net::Ipv6Addr::from(ipv6(groups)).to_string()
}

/// The pair with IPv6 on the member ports, routing.
fn pair6() -> anyhow::Result<Pair> {
    let pair = Pair::new()?;
    for (ns, dev, ip) in [(&pair.a, "a-c", A_IP6), (&pair.b, "b-c", B_IP6)] {
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", text(ip)),
            "dev",
            dev,
            "nodad",
        ])?;
    }
    Ok(pair)
}

/// The kernel's IPv6 neighbour entry for `ip` on `dev`: (state, MAC).
fn neighbour6(ns: &Netns, dev: &str, ip: &str) -> anyhow::Result<Option<(String, String)>> {
    let json: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "-6", "neigh", "show", "dev", dev, "to", ip])?)?;
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

/// Waits until `ns` resolves `ip` to `mac` on `dev`; returns the state.
fn wait_learnt6(ns: &Netns, dev: &str, ip: &str, mac: &[u8; 6]) -> anyhow::Result<String> {
    wait_until(
        WAIT,
        &format!("{ip} -> {} on {dev} in {}", fmt_mac(mac), ns.name()),
        || match neighbour6(ns, dev, ip) {
            Ok(Some((state, lladdr)))
                if lladdr == fmt_mac(mac) && state != "FAILED" && state != "INCOMPLETE" =>
            {
                Ok(state)
            }
            other => Err(format!("{other:?}")),
        },
    )
}

/// Starts `ns` resolving `ip` (one ping) and waits for the INCOMPLETE entry.
fn starts_resolving6(ns: &Netns, dev: &str, ip: &str) -> anyhow::Result<std::process::Child> {
    let child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "3",
            ip,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    wait_until(
        Duration::from_secs(10),
        &format!("{}'s entry for {ip} INCOMPLETE", ns.name()),
        || match neighbour6(ns, dev, ip) {
            Ok(Some((state, _))) if state == "INCOMPLETE" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;
    Ok(child)
}

fn counter(agent: &Agent, name: &str) -> anyhow::Result<u64> {
    agent.query(&["show", "counters"])?[name]
        .as_u64()
        .with_context(|| format!("counter {name}"))
}

/// C's IPv6 link-local address (EUI-64 from its MAC), as its kernel
/// announces it.
fn link_local_of(mac: &[u8; 6]) -> std::net::Ipv6Addr {
    let g = |hi: u8, lo: u8| u16::from_be_bytes([hi, lo]);
    std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        g(mac[0] ^ 0x02, mac[1]),
        g(mac[2], 0xff),
        g(0xfe, mac[3]),
        g(mac[4], mac[5]),
    )
}

/// Whether a capture is an advertisement of one of C's own link-local
/// addresses (of `c-a` or `c-b`, each port its own MAC): C's kernel answers
/// a switch's probe of it whenever the timing of a loaded machine makes the
/// switch ask, a real NA from C and not an echo.
fn is_cs_link_local_na(capture: &serde_json::Value, pair: &Pair) -> bool {
    let target = capture["nd_target"].as_str();
    ["c-a", "c-b"].iter().any(|port| {
        pair.c
            .mac(port)
            .is_ok_and(|mac| target == Some(link_local_of(&mac).to_string().as_str()))
    })
}

fn nd_entry(agent: &Agent, ip: &str, direction: &str) -> anyhow::Result<serde_json::Value> {
    let nd = agent.query(&["show", "nd"])?;
    nd.as_array()
        .context("show nd is a list")?
        .iter()
        .find(|e| e["ip"] == ip && e["direction"] == direction)
        .cloned()
        .with_context(|| format!("{direction} entry {ip} in {nd}"))
}

#[test]
fn a_misdelivered_solicited_na_is_learnt_by_both_switches() -> anyhow::Result<()> {
    let pair = pair6()?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    b.wait_session_up()?;
    let c = text(c_ip6(3));
    let mut ping = starts_resolving6(&pair.a, "a-c", &c)?;
    // C answers A's solicitation, and its bond sends the answer to B.
    let na = Na::solicited((pair.c_mac, ipv6(c_ip6(3))), (pair.a_mac, ipv6(A_IP6)));
    pair.c.send_frames("c-b", &[na.to_bytes()])?;
    let state_a = wait_learnt6(&pair.a, "a-c", &c, &pair.c_mac)?;
    // B did not ask, but the answer came through its port: it learns too.
    wait_learnt6(&pair.b, "b-c", &c, &pair.c_mac)?;
    let _ = ping.kill();
    assert!(
        matches!(state_a.as_str(), "REACHABLE" | "DELAY" | "PROBE" | "STALE"),
        "{state_a}"
    );
    // The quiet period is the assertion: an echo would keep capturing.
    std::thread::sleep(Duration::from_secs(1));
    // C's own kernel may answer a switch's probe of its link-local address
    // meanwhile (seen on a loaded machine): a real NA from C, not an echo.
    // Only captures of the test's target count; any other must be such a
    // link-local NA from C.
    let mut ours = Vec::new();
    let on_a = a.captured()?.into_iter().map(|e| ("A", e));
    for (switch, e) in on_a.chain(b.captured()?.into_iter().map(|e| ("B", e))) {
        let Some(target) = e["nd_target"].as_str() else {
            continue;
        };
        if target == c {
            ours.push((switch, e["class"].clone()));
        } else {
            assert!(
                is_cs_link_local_na(&e, &pair),
                "an unexpected NA was captured: {e}"
            );
        }
    }
    assert_eq!(
        ours,
        vec![("B", serde_json::json!("peer"))],
        "one NA, one capture in total, class peer on B: A {} B {} A nd {}",
        a.query(&["show", "captured"])?,
        b.query(&["show", "captured"])?,
        a.query(&["show", "nd"])?
    );
    if pair::xdp_mode() == "generic" {
        // A's injection (to its port's MAC) was seen again and recognised;
        // B's (readdressed to all nodes) was seen again as nobody's class.
        assert!(counter(&a, "na_echo_suppressed")? >= 1);
        assert!(counter(&b, "na_unmatched")? >= 1);
    }
    let sent = nd_entry(&b, &c, "sent")?;
    assert_eq!(sent["class"], "peer");
    assert_eq!(sent["learnt_here"], "kernel-nd-all-nodes");
    let received = nd_entry(&a, &c, "received")?;
    assert_eq!(received["how"], "kernel-nd");
    assert_eq!(received["confirmed"], true, "{received}");
    let peer = a.query(&["show", "peer"])?;
    // Each entry received is injected once, and B sends it once per
    // session: a session lost and established again (seen once under a load
    // of 5.5) re-sends B's table.
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let injected = count(&peer["counters"]["nd"]["injected"]);
    let received = count(&peer["counters"]["nd"]["entries_received"]);
    let sessions = count(&peer["counters"]["sessions_established"]);
    assert!(
        injected >= 1 && injected == received && received <= sessions,
        "{injected} injections of {received} entries over {sessions} sessions: {}",
        peer["counters"]
    );
    assert_eq!(peer["counters"]["nd"]["netlink_fallback"], 0);
    Ok(())
}

#[test]
fn an_na_to_a_switch_itself_is_learnt_by_its_peer() -> anyhow::Result<()> {
    let pair = pair6()?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    b.wait_session_up()?;
    let c = text(c_ip6(50));
    // An NA to A (class own on A); B never asked and has no entry.
    let na = Na::solicited((pair.c_mac, ipv6(c_ip6(50))), (pair.a_mac, ipv6(A_IP6)));
    pair.c.send_frames("c-a", &[na.to_bytes()])?;
    wait_learnt6(&pair.b, "b-c", &c, &pair.c_mac)?;
    let received = nd_entry(&b, &c, "received")?;
    assert_eq!(received["how"], "kernel-nd-all-nodes");
    assert_eq!(received["class"], "own");
    Ok(())
}

#[test]
fn single_and_double_tagged_nas_are_learnt_on_the_interface_of_their_vlan() -> anyhow::Result<()> {
    let pair = pair6()?;
    // No VLAN devices on this kernel: the member port stands in for the
    // VLAN interfaces, which is what the mapping is for.
    let vlans = r#"vlan_interfaces = [
  { mlag_id = 1, outer_vlan = 10, interface = "a-c" },
  { mlag_id = 1, outer_vlan = 100, inner_vlan = 200, interface = "a-c" },
]"#;
    let a = pair.agent_a(vlans)?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    b.wait_session_up()?;
    for (last, tags) in [
        (4u16, vec![(TPID_8021Q, 10u16)]),
        (5, vec![(TPID_8021AD, 100), (TPID_8021Q, 200)]),
    ] {
        let c = text(c_ip6(last));
        let mut ping = starts_resolving6(&pair.a, "a-c", &c)?;
        let na =
            Na::solicited((pair.c_mac, ipv6(c_ip6(last))), (pair.a_mac, ipv6(A_IP6))).tagged(&tags);
        pair.c.send_frames("c-b", &[na.to_bytes()])?;
        wait_learnt6(&pair.a, "a-c", &c, &pair.c_mac)?;
        let _ = ping.kill();
        let received = nd_entry(&a, &c, "received")?;
        assert_eq!(received["outer_vlan"], tags[0].1);
        assert_eq!(
            received["inner_vlan"],
            tags.get(1).map_or(0, |t| t.1),
            "{received}"
        );
    }
    let _ = b;
    Ok(())
}

#[test]
fn an_na_to_the_ipv6_vrrp_mac_is_not_synced() -> anyhow::Result<()> {
    let pair = pair6()?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    b.wait_session_up()?;
    let vrrp = [0, 0, 0x5e, 0, 2, 7];
    let na = Na::solicited((pair.c_mac, ipv6(c_ip6(60))), (vrrp, ipv6(B_IP6)));
    pair.c.send_frames("c-b", &[na.to_bytes()])?;
    // A peer-class NA sent right after is the marker: once A has it, the
    // VRRP one (sent first, same path) had every chance to be synced.
    let marker = text(c_ip6(61));
    let na = Na::solicited((pair.c_mac, ipv6(c_ip6(61))), (pair.a_mac, ipv6(A_IP6)));
    pair.c.send_frames("c-b", &[na.to_bytes()])?;
    wait_until(WAIT, "marker NA received by A", || {
        nd_entry(&a, &marker, "received")
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    assert_eq!(counter(&b, "na_shared")?, 1);
    // Only the marker, besides any advertisement of C's own link-local
    // address (see `is_cs_link_local_na`).
    let captured = b.captured()?;
    let ours: Vec<_> = captured
        .iter()
        .filter(|e| !is_cs_link_local_na(e, &pair))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "only the marker; B captured {}",
        serde_json::Value::Array(captured.clone())
    );
    assert_eq!(ours[0]["nd_target"], marker.as_str());
    let nd = a.query(&["show", "nd"])?;
    assert!(
        !nd.to_string().contains(&text(c_ip6(60))),
        "VRRP NA synced: {nd}"
    );
    Ok(())
}

/// Refresh for ND: A's kernel holds an IPv6 neighbour its classifier never
/// saw (written straight into its cache); B restarts with a flushed cache;
/// A re-probes its IPv6 neighbours, C (which owns the address) answers, and
/// the advertisement is captured and synced to B, whose kernel holds it.
#[test]
fn after_the_peer_restarts_with_a_flushed_table_ipv6_neighbours_converge_again()
-> anyhow::Result<()> {
    let pair = pair6()?;
    let c = text(c_ip6(70));
    pair.c
        .ip(&["addr", "add", &format!("{c}/64"), "dev", "c-a", "nodad"])?;
    let a = pair.agent_a("")?;
    let mut b = pair.agent_b("")?;
    a.wait_session_up()?;
    wait_until(WAIT, "A's first refresh done", || {
        let peer = a.query(&["show", "peer"]).map_err(|e| e.to_string())?;
        match peer["counters"]["refreshes_done"].as_u64() {
            Some(n) if n >= 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })?;
    let c_mac = fmt_mac(&pair.c_mac);
    pair.a.ip(&[
        "-6", "neigh", "replace", &c, "lladdr", &c_mac, "dev", "a-c", "nud", "stale",
    ])?;
    assert!(nd_entry(&a, &c, "sent").is_err(), "A captured nothing yet");
    b.stop()?;
    pair.b.ip(&["-6", "neigh", "flush", "dev", "b-c"])?;
    assert_eq!(neighbour6(&pair.b, "b-c", &c)?, None);
    let b = pair.agent_b("")?;
    wait_learnt6(&pair.b, "b-c", &c, &pair.c_mac)?;
    let received = nd_entry(&b, &c, "received")?;
    assert_eq!(received["class"], "own", "C answered A's probe: {received}");
    Ok(())
}

/// Delete for ND: an entry A synced to B leaves A's kernel; A withdraws it
/// and B's kernel drops it.
#[test]
fn an_ipv6_entry_the_kernel_dropped_is_withdrawn_from_the_peer_kernel() -> anyhow::Result<()> {
    let pair = pair6()?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    b.wait_session_up()?;
    let c = text(c_ip6(80));
    // An NA to A: A learns it (its own kernel), B through the peer link.
    let na = Na::solicited((pair.c_mac, ipv6(c_ip6(80))), (pair.a_mac, ipv6(A_IP6)));
    let mut ping = starts_resolving6(&pair.a, "a-c", &c)?;
    pair.c.send_frames("c-a", &[na.to_bytes()])?;
    wait_learnt6(&pair.a, "a-c", &c, &pair.c_mac)?;
    let _ = ping.kill();
    wait_learnt6(&pair.b, "b-c", &c, &pair.c_mac)?;
    pair.a.ip(&["-6", "neigh", "del", &c, "dev", "a-c"])?;
    wait_until(
        WAIT,
        &format!("B's kernel to drop {c}"),
        || match neighbour6(&pair.b, "b-c", &c) {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;
    let a_peer = a.query(&["show", "peer"])?;
    assert_eq!(a_peer["counters"]["nd"]["withdrawn"], 1, "{a_peer}");
    let b_peer = b.query(&["show", "peer"])?;
    assert_eq!(b_peer["counters"]["nd"]["learnt_deleted"], 1, "{b_peer}");
    Ok(())
}
