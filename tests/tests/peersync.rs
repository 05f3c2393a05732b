//! SPEC 2 against real kernels: two switch agents joined by a peer link,
//! server C cabled to both. Every check reads the kernel's neighbour table
//! (`ip neigh`), not the agents' own belief.

use std::{
    io::Write as _,
    net::{TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::Context as _;
use mlag_testbed::{
    agent::Agent,
    frames::{TPID_8021AD, TPID_8021Q},
    netns::fmt_mac,
    pair::{self, A_IP, B_IP, C_IP, Pair},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(15);

fn wait_neighbour(
    pair_ns: &mlag_testbed::netns::Netns,
    dev: &str,
    ip: &str,
    mac: &[u8; 6],
) -> anyhow::Result<String> {
    wait_until(
        WAIT,
        &format!("{ip} resolved to {} on {dev}", fmt_mac(mac)),
        || match pair::neighbour(pair_ns, dev, ip) {
            Ok(Some((state, lladdr)))
                if lladdr == fmt_mac(mac) && state != "FAILED" && state != "INCOMPLETE" =>
            {
                Ok(state)
            }
            other => Err(format!("{other:?}")),
        },
    )
}

#[test]
fn a_reply_landing_on_the_peer_is_learnt_by_the_asking_switch_kernel() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    let mut ping = pair.a_starts_resolving("10.77.0.3")?;
    // C's load balancing sends the reply to A out of its link to B.
    pair.c.send_frames(
        "c-b",
        &[pair.reply_from_c(C_IP, pair.a_mac, A_IP).to_bytes()],
    )?;
    let state = wait_neighbour(&pair.a, "a-c", "10.77.0.3", &pair.c_mac)?;
    assert_eq!(state, "REACHABLE");
    let arp = a.query(&["show", "arp"])?;
    let entry = arp
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ip"] == "10.77.0.3")
        .context("entry in show arp")?;
    assert_eq!(entry["direction"], "received");
    assert_eq!(entry["how"], "kernel-arp");
    assert_eq!(entry["kernel_state"], "REACHABLE");
    assert_eq!(entry["confirmed"], true, "the agent saw the kernel hold it");
    assert_eq!(b.query(&["show", "peer"])?["counters"]["entries_sent"], 1);
    let _ = ping.kill();
    Ok(())
}

/// The names of the threads of process `pid`.
fn thread_names(pid: u32) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(task?.path().join("comm"))?;
        names.push(comm.trim().to_string());
    }
    Ok(names)
}

/// The sync path (the capture ring's reader, peer sync and its session)
/// runs on one thread of its own in each agent (`sync_thread`), and a
/// reply still crosses it.
#[test]
fn each_agent_runs_the_sync_path_on_a_thread_of_its_own() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    for agent in [&a, &b] {
        let names = thread_names(agent.pid().context("agent running")?)?;
        assert_eq!(
            names.iter().filter(|n| *n == "peer-sync").count(),
            1,
            "{names:?}"
        );
    }
    let mut ping = pair.a_starts_resolving("10.77.0.3")?;
    pair.c.send_frames(
        "c-b",
        &[pair.reply_from_c(C_IP, pair.a_mac, A_IP).to_bytes()],
    )?;
    wait_neighbour(&pair.a, "a-c", "10.77.0.3", &pair.c_mac)?;
    let latency = &b.query(&["show", "peer"])?["latency"];
    assert_eq!(latency["capture_to_read"]["count"], 1, "{latency}");
    assert_eq!(latency["read_to_queue"]["count"], 1, "{latency}");
    let _ = ping.kill();
    Ok(())
}

#[test]
fn without_the_agents_the_misdelivered_reply_is_never_learnt() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let mut ping = pair.a_starts_resolving("10.77.0.3")?;
    pair.c.send_frames(
        "c-b",
        &[pair.reply_from_c(C_IP, pair.a_mac, A_IP).to_bytes()],
    )?;
    let _ = ping.wait();
    let entry = pair::neighbour(&pair.a, "a-c", "10.77.0.3")?;
    assert!(
        matches!(
            entry.as_ref().map(|e| e.0.as_str()),
            Some("INCOMPLETE" | "FAILED") | None
        ),
        "{entry:?}"
    );
    Ok(())
}

#[test]
fn tagged_replies_are_learnt_on_the_interface_of_their_vlan() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    // This kernel has no VLAN devices: the member port itself stands in for
    // the VLAN interfaces, which is what the mapping is for.
    let vlans = r#"vlan_interfaces = [
  { mlag_id = 1, outer_vlan = 10, interface = "a-c" },
  { mlag_id = 1, outer_vlan = 100, inner_vlan = 200, interface = "a-c" },
]"#;
    let a = pair.agent_a(vlans)?;
    let _b = pair.agent_b("")?;
    a.wait_session_up()?;
    let mut ping = pair.a_starts_resolving("10.77.0.3")?;
    pair.c.send_frames(
        "c-b",
        &[pair
            .reply_from_c(C_IP, pair.a_mac, A_IP)
            .tagged(&[(TPID_8021Q, 10)])
            .to_bytes()],
    )?;
    wait_neighbour(&pair.a, "a-c", "10.77.0.3", &pair.c_mac)?;
    let _ = ping.kill();
    // Double-tagged: a second address of C, asked for and answered the same way.
    let mut ping = pair.a_starts_resolving("10.77.0.4")?;
    pair.c.send_frames(
        "c-b",
        &[pair
            .reply_from_c([10, 77, 0, 4], pair.a_mac, A_IP)
            .tagged(&[(TPID_8021AD, 100), (TPID_8021Q, 200)])
            .to_bytes()],
    )?;
    wait_neighbour(&pair.a, "a-c", "10.77.0.4", &pair.c_mac)?;
    let _ = ping.kill();
    let arp = a.query(&["show", "arp"])?;
    let double = arp
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ip"] == "10.77.0.4")
        .context("double-tagged entry")?;
    assert_eq!(
        (double["outer_vlan"].as_u64(), double["inner_vlan"].as_u64()),
        (Some(100), Some(200))
    );
    Ok(())
}

#[test]
fn own_class_replies_received_by_a_appear_in_b_kernel_table() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let _b = pair.agent_b("")?;
    a.wait_session_up()?;
    // A reply to A itself (B never asked): B learns it through A.
    pair.c.send_frames(
        "c-a",
        &[pair
            .reply_from_c([10, 77, 0, 50], pair.a_mac, A_IP)
            .to_bytes()],
    )?;
    wait_neighbour(&pair.b, "b-c", "10.77.0.50", &pair.c_mac)?;
    wait_neighbour(&pair.a, "a-c", "10.77.0.50", &pair.c_mac)?;
    Ok(())
}

fn ip_of(i: u32) -> [u8; 4] {
    [10, 77, 1 + (i / 250) as u8, 1 + (i % 250) as u8]
}

/// C owns these addresses on its A link, so it answers A's requests (and
/// refresh probes) for them.
fn give_c_addresses(pair: &Pair, count: u32) -> anyhow::Result<()> {
    let batch: String = (0..count)
        .map(|i| {
            let ip = ip_of(i);
            format!(
                "addr add {}.{}.{}.{}/32 dev c-a\n",
                ip[0], ip[1], ip[2], ip[3]
            )
        })
        .collect();
    let mut child = std::process::Command::new("ip")
        .args(["-n", pair.c.name(), "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(batch.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "adding C's addresses");
    pair.c.ip(&["route", "add", "10.77.0.0/24", "dev", "c-a"])?;
    Ok(())
}

/// C answers ARP for these addresses on its A link (so refresh probes are
/// answered) and A learns them: C announces each with a reply to A.
fn populate_a(pair: &Pair, count: u32) -> anyhow::Result<()> {
    give_c_addresses(pair, count)?;
    let replies: Vec<Vec<u8>> = (0..count)
        .map(|i| pair.reply_from_c(ip_of(i), pair.a_mac, A_IP).to_bytes())
        .collect();
    for chunk in replies.chunks(200) {
        pair.c.send_frames("c-a", chunk)?;
        // Pacing, not waiting: a burst beyond the veth's queue would be dropped.
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn wait_count(
    ns: &mlag_testbed::netns::Netns,
    dev: &str,
    at_least: usize,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    wait_until(
        Duration::from_secs(30),
        &format!("{at_least} resolved entries on {dev}"),
        || {
            let table = pair::resolved_neighbours(ns, dev).map_err(|e| e.to_string())?;
            if table.len() >= at_least {
                Ok(table)
            } else {
                Err(format!("{} entries", table.len()))
            }
        },
    )
}

/// What this proves: B converges after its restart. A's own send table
/// already holds every entry (A captured C's replies), so A's resend alone
/// makes it pass; that the re-probe works is proved by
/// `entries_the_survivor_learnt_directly_come_back_only_through_its_probes`.
#[test]
fn a_restarted_peer_with_a_flushed_table_converges_to_the_survivor_table() -> anyhow::Result<()> {
    const ENTRIES: u32 = 1000;
    pair::raise_neighbour_limits(16384)?;
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let mut b = pair.agent_b("")?;
    a.wait_session_up()?;
    populate_a(&pair, ENTRIES)?;
    let a_table = wait_count(&pair.a, "a-c", ENTRIES as usize)?;
    wait_count(&pair.b, "b-c", ENTRIES as usize)?;

    b.stop()?;
    pair.b.ip(&["neigh", "flush", "dev", "b-c"])?;
    assert!(pair::resolved_neighbours(&pair.b, "b-c")?.is_empty());
    let b = pair.agent_b("")?;
    b.wait_session_up()?;
    let b_table = wait_count(&pair.b, "b-c", a_table.len())?;
    for (ip, mac) in &a_table {
        assert_eq!(b_table.get(ip), Some(mac), "B lacks {ip}");
    }
    let peer = a.query(&["show", "peer"])?;
    assert!(
        peer["counters"]["refreshes"].as_u64() >= Some(2),
        "A refreshed when B came back: {peer}"
    );
    Ok(())
}

/// SPEC 2.5, the case only re-probing can fix: A's kernel learnt its
/// entries without the classifier seeing a reply (written straight into
/// A's table here, as a switch learns from traffic the XDP program does not
/// capture), so A's send table has none of them and B never got them. B
/// restarts with a flushed table; A re-probes its neighbours, C answers,
/// the replies are captured and synced, and B's kernel holds them.
#[test]
fn entries_the_survivor_learnt_directly_come_back_only_through_its_probes() -> anyhow::Result<()> {
    const ENTRIES: u32 = 50;
    let pair = Pair::new()?;
    give_c_addresses(&pair, ENTRIES)?;
    let a = pair.agent_a("")?;
    let mut b = pair.agent_b("")?;
    a.wait_session_up()?;
    // A's refresh for B's first run is over before A learns anything.
    wait_until(WAIT, "A's first refresh done", || {
        let peer = a.query(&["show", "peer"]).map_err(|e| e.to_string())?;
        match peer["counters"]["refreshes_done"].as_u64() {
            Some(n) if n >= 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })?;
    let c_mac = fmt_mac(&pair.c_mac);
    let ips: Vec<String> = (0..ENTRIES)
        .map(|i| {
            let ip = ip_of(i);
            format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
        })
        .collect();
    for ip in &ips {
        pair.a.ip(&[
            "neigh", "replace", ip, "lladdr", &c_mac, "dev", "a-c", "nud", "stale",
        ])?;
    }
    assert!(
        a.query(&["show", "arp"])?
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !ips.contains(&e["ip"].as_str().unwrap_or("").to_string())),
        "A captured none of them"
    );
    let probes_before = a.query(&["show", "peer"])?["counters"]["refresh_probes"]
        .as_u64()
        .unwrap_or(0);

    b.stop()?;
    pair.b.ip(&["neigh", "flush", "dev", "b-c"])?;
    for ip in &ips {
        assert_eq!(pair::neighbour(&pair.b, "b-c", ip)?, None, "B had {ip}");
    }
    let _b = pair.agent_b("")?;
    let b_table = wait_count(&pair.b, "b-c", ips.len())?;
    for ip in &ips {
        assert_eq!(b_table.get(ip), Some(&c_mac), "B lacks {ip}");
    }
    let peer = a.query(&["show", "peer"])?;
    let probes = peer["counters"]["refresh_probes"].as_u64().unwrap_or(0);
    assert!(
        probes >= probes_before + u64::from(ENTRIES),
        "A probed its {ENTRIES} entries when B came back: {peer}"
    );
    assert!(peer["counters"]["refresh_interfaces"].as_u64() >= Some(1));
    Ok(())
}

/// SPEC 2.5 for one port: B's member port goes down (its kernel flushes
/// the port's neighbours) and comes back; B tells A, A re-probes the
/// neighbours of that MLAG id (learnt directly, so only probing brings
/// them back), and B's kernel holds them again.
#[test]
fn the_peer_twin_port_back_up_gets_its_entries_again_through_probes() -> anyhow::Result<()> {
    const ENTRIES: u32 = 20;
    let pair = Pair::new()?;
    give_c_addresses(&pair, ENTRIES)?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    let c_mac = fmt_mac(&pair.c_mac);
    let ips: Vec<String> = (0..ENTRIES)
        .map(|i| {
            let ip = ip_of(i);
            format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
        })
        .collect();
    for ip in &ips {
        pair.a.ip(&[
            "neigh", "replace", ip, "lladdr", &c_mac, "dev", "a-c", "nud", "stale",
        ])?;
    }
    let refreshes_before = a.query(&["show", "peer"])?["counters"]["port_up_refreshes"]
        .as_u64()
        .unwrap_or(0);
    pair.b.ip(&["link", "set", "b-c", "down"])?;
    wait_until(WAIT, "B to tell A its port is down", || {
        let peer = b.query(&["show", "peer"]).map_err(|e| e.to_string())?;
        match peer["counters"]["port_states_sent"].as_u64() {
            Some(n) if n >= 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })?;
    for ip in &ips {
        assert_eq!(pair::neighbour(&pair.b, "b-c", ip)?, None, "B had {ip}");
    }
    pair.b.ip(&["link", "set", "b-c", "up"])?;
    let b_table = wait_count(&pair.b, "b-c", ips.len())?;
    for ip in &ips {
        assert_eq!(b_table.get(ip), Some(&c_mac), "B lacks {ip}");
    }
    let peer = a.query(&["show", "peer"])?;
    assert_eq!(
        peer["counters"]["port_up_refreshes"].as_u64(),
        Some(refreshes_before + 1),
        "{peer}"
    );
    assert!(peer["counters"]["refresh_probes"].as_u64() >= Some(u64::from(ENTRIES)));
    Ok(())
}

/// Tables age: an entry A synced to B is removed from A's kernel; A
/// withdraws it and B's kernel no longer holds it, while an entry B's
/// kernel learnt for itself is left alone.
#[test]
fn an_entry_the_kernel_dropped_is_withdrawn_from_the_peer_kernel() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    // Both switches learn .50 through A (a reply to A, synced to B).
    pair.c.send_frames(
        "c-a",
        &[pair
            .reply_from_c([10, 77, 0, 50], pair.a_mac, A_IP)
            .to_bytes()],
    )?;
    wait_neighbour(&pair.b, "b-c", "10.77.0.50", &pair.c_mac)?;
    wait_neighbour(&pair.a, "a-c", "10.77.0.50", &pair.c_mac)?;
    // B learns .51 by itself (written straight into its table).
    let c_mac = fmt_mac(&pair.c_mac);
    pair.b.ip(&[
        "neigh",
        "replace",
        "10.77.0.51",
        "lladdr",
        &c_mac,
        "dev",
        "b-c",
        "nud",
        "stale",
    ])?;

    pair.a.ip(&["neigh", "del", "10.77.0.50", "dev", "a-c"])?;
    wait_until(
        WAIT,
        "B's kernel to drop 10.77.0.50",
        || match pair::neighbour(&pair.b, "b-c", "10.77.0.50") {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;
    let a_peer = a.query(&["show", "peer"])?;
    assert_eq!(a_peer["counters"]["withdrawn"], 1, "{a_peer}");
    assert_eq!(a_peer["entries"], 0);
    let b_peer = b.query(&["show", "peer"])?;
    assert_eq!(b_peer["counters"]["learnt_deleted"], 1, "{b_peer}");
    assert_eq!(b_peer["learnt"], 0);
    assert!(pair::neighbour(&pair.b, "b-c", "10.77.0.51")?.is_some());
    Ok(())
}

#[test]
fn a_peer_link_flap_in_the_middle_of_a_burst_loses_nothing() -> anyhow::Result<()> {
    const ENTRIES: u32 = 600;
    pair::raise_neighbour_limits(16384)?;
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let _b = pair.agent_b("")?;
    a.wait_session_up()?;
    let replies: Vec<Vec<u8>> = (0..ENTRIES)
        .map(|i| pair.reply_from_c(ip_of(i), pair.a_mac, A_IP).to_bytes())
        .collect();
    for (n, chunk) in replies.chunks(100).enumerate() {
        if n == 2 {
            pair.a.ip(&["link", "set", "a-peer", "down"])?;
        }
        if n == 4 {
            wait_until(WAIT, "A sees the peer down", || {
                match a.query(&["show", "peer"]) {
                    Ok(p) if p["state"] != "up" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })?;
            pair.a.ip(&["link", "set", "a-peer", "up"])?;
        }
        pair.c.send_frames("c-a", chunk)?;
        std::thread::sleep(Duration::from_millis(50));
    }
    a.wait_session_up()?;
    let b_table = wait_count(&pair.b, "b-c", ENTRIES as usize)?;
    for i in 0..ENTRIES {
        let ip = ip_of(i);
        let ip = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
        assert_eq!(
            b_table.get(&ip).map(String::as_str),
            Some(fmt_mac(&pair.c_mac).as_str()),
            "B lacks {ip}"
        );
    }
    let peer = a.query(&["show", "peer"])?;
    assert!(
        peer["counters"]["sessions_lost"].as_u64() >= Some(1),
        "the flap must have cut the session: {peer}"
    );
    Ok(())
}

#[test]
fn garbage_on_the_sync_ports_leaves_the_session_and_both_agents_running() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    let before = b.query(&["show", "peer"])?["counters"]["sessions_established"].clone();
    pair.a.run(|| {
        let mut x: u32 = 12345;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect()
        };
        // Extra TCP connections from the peer's own address, carrying garbage,
        // a truncated header and a frame of an unknown type.
        for payload in [
            noise(3000),
            b"MS\x01".to_vec(),
            b"MS\x01\x00\x09\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x10".to_vec(),
        ] {
            if let Ok(mut stream) =
                TcpStream::connect_timeout(&"169.254.77.2:7789".parse()?, Duration::from_secs(1))
            {
                let _ = stream.write_all(&payload);
            }
        }
        // A flood of garbage datagrams on the keepalive port.
        let udp = UdpSocket::bind("169.254.77.1:0")?;
        for i in 0..2000 {
            let _ = udp.send_to(&noise(1 + i % 300), "169.254.77.2:7789");
        }
        Ok(())
    })?;
    // The quiet period is the assertion: had the garbage torn the session
    // down, it would be re-established (and counted) within this time.
    std::thread::sleep(Duration::from_millis(500));
    let peer = b.wait_session_up()?;
    assert_eq!(
        peer["counters"]["sessions_established"], before,
        "the session was not re-established"
    );
    // Every extra connection is refused; datagrams are counted by reason
    // (those the kernel drops when the flood outruns the socket buffer never
    // reach the agent).
    let rejected = &peer["counters"]["rejected"];
    assert_eq!(rejected["duplicate_connection"], 3, "{rejected}");
    assert!(rejected["bad_magic"].as_u64() > Some(100), "{rejected}");
    // Still syncing.
    pair.c.send_frames(
        "c-a",
        &[pair
            .reply_from_c([10, 77, 0, 60], pair.a_mac, A_IP)
            .to_bytes()],
    )?;
    wait_neighbour(&pair.b, "b-c", "10.77.0.60", &pair.c_mac)?;
    a.query(&["status"])?;
    Ok(())
}

#[test]
fn a_peer_speaking_another_major_version_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    // A fake B: valid keepalives (so A connects), then a version 2 hello.
    let result = pair.b.run(|| {
        let listener = std::net::TcpListener::bind("169.254.77.2:7789")?;
        let udp = UdpSocket::bind("169.254.77.2:7789")?;
        let keepalive = b"MS\x01\x00\x04\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x1c\x00\x04\x00\x08\x00\x00\x00\x00\x00\x00\x00\x07";
        listener.set_nonblocking(true)?;
        for _ in 0..100 {
            udp.send_to(keepalive, "169.254.77.1:7789")?;
            if let Ok((mut stream, _)) = listener.accept() {
                stream.write_all(b"MS\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10")?;
                std::thread::sleep(Duration::from_millis(300));
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
    })?;
    assert!(result, "A never connected to the fake peer");
    let log = wait_until(WAIT, "A to log the version mismatch", || {
        let log = a.log_text();
        if log.contains("incompatible protocol version 2.0") {
            Ok(log)
        } else {
            Err(log.len())
        }
    })?;
    assert!(log.contains("closing the session"), "{log}");
    let peer = a.query(&["show", "peer"])?;
    assert_eq!(peer["counters"]["rejected"]["bad_version"], 1);
    assert_ne!(peer["state"], "up");
    let _ = B_IP;
    Ok(())
}

/// A fake peer B speaking protocol 1.0 properly, then hostile frames inside
/// the established session: A counts and drops each one, keeps the session,
/// and still learns the valid entry that follows.
#[test]
fn hostile_frames_inside_the_session_are_counted_and_the_session_survives() -> anyhow::Result<()> {
    use sync_common::wire::{DriverHeader, Encoder, MessageType, SubType, tlv};
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let frame = |msg: MessageType, sub: SubType, seq: u32, build: &dyn Fn(&mut Encoder)| {
        let mut buf = vec![0u8; 4096];
        let mut e = Encoder::new(&mut buf, msg, sub, seq).unwrap();
        build(&mut e);
        let len = e.finish();
        buf.truncate(len);
        buf
    };
    let hello = frame(MessageType::Hello, SubType::None, 0, &|e| {
        e.tlv(tlv::SYSTEM_NAME, &[b"fake-b"]).unwrap();
        e.tlv(tlv::BOOT_ID, &[&7u64.to_be_bytes()]).unwrap();
        e.tlv(tlv::CAPABILITIES, &[&1u32.to_be_bytes()]).unwrap();
    });
    let driver = DriverHeader {
        mlag_id: 1,
        outer_vlan: 0,
        inner_vlan: 0,
        vrf: 0,
        class: 1,
        vlan_count: 0,
    };
    let good_reply = pair
        .reply_from_c([10, 77, 0, 70], pair.a_mac, A_IP)
        .to_bytes();
    let mut request = good_reply.clone();
    request[21] = 1; // opcode: request
    let mut unknown_type = frame(MessageType::Ack, SubType::None, 0, &|_| ());
    unknown_type[4] = 77;
    let bad_entry = frame(MessageType::Sync, SubType::Arp, 1, &|e| {
        let mut head = [0u8; 16];
        head[3] = 1;
        head[14..16].copy_from_slice(&(request.len() as u16).to_be_bytes());
        e.tlv(tlv::ARP_ENTRY, &[&head, &request]).unwrap();
    });
    let unknown_mlag = frame(MessageType::Sync, SubType::Arp, 2, &|e| {
        e.arp_entry(
            &DriverHeader {
                mlag_id: 99,
                ..driver
            },
            &good_reply,
        )
        .unwrap();
    });
    let good = frame(MessageType::Sync, SubType::Arp, 3, &|e| {
        e.arp_entry(&driver, &good_reply).unwrap()
    });
    let connected = pair.b.run(|| {
        let listener = std::net::TcpListener::bind("169.254.77.2:7789")?;
        let udp = UdpSocket::bind("169.254.77.2:7789")?;
        let keepalive = frame(MessageType::Keepalive, SubType::None, 1, &|e| {
            e.tlv(tlv::BOOT_ID, &[&7u64.to_be_bytes()]).unwrap()
        });
        listener.set_nonblocking(true)?;
        for _ in 0..100 {
            udp.send_to(&keepalive, "169.254.77.1:7789")?;
            if let Ok((mut stream, _)) = listener.accept() {
                stream.set_nonblocking(false)?;
                for f in [&hello, &unknown_type, &bad_entry, &unknown_mlag, &good] {
                    stream.write_all(f)?;
                }
                for _ in 0..20 {
                    udp.send_to(&keepalive, "169.254.77.1:7789")?;
                    std::thread::sleep(Duration::from_millis(50));
                }
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
    })?;
    assert!(connected, "A never connected to the fake peer");
    wait_neighbour(&pair.a, "a-c", "10.77.0.70", &pair.c_mac)?;
    let peer = a.query(&["show", "peer"])?;
    let rejected = &peer["counters"]["rejected"];
    assert_eq!(rejected["unknown_type"], 1, "{rejected}");
    assert_eq!(rejected["bad_tlv"], 1, "{rejected}");
    assert_eq!(rejected["unknown_mlag_id"], 1, "{rejected}");
    // The valid entry came after the hostile frames on the same connection:
    // learning it proves the session outlived them. (The fake peer hangs up
    // afterwards, so the session is eventually lost; that is not checked.)
    assert_eq!(peer["counters"]["sessions_established"], 1);
    Ok(())
}

// ------------------------------------------- a stuck peer never blocks us

/// A frame of the sync protocol, built with the agent's own encoder.
fn wire_frame(
    msg: sync_common::wire::MessageType,
    seq: u32,
    build: &dyn Fn(&mut sync_common::wire::Encoder),
) -> Vec<u8> {
    use sync_common::wire::{Encoder, SubType};
    let mut buf = vec![0u8; 4096];
    let mut e = Encoder::new(&mut buf, msg, SubType::None, seq).unwrap();
    build(&mut e);
    let len = e.finish();
    buf.truncate(len);
    buf
}

const FAKE_BOOT: u64 = 0x5eed;

fn fake_hello() -> Vec<u8> {
    use sync_common::wire::{MessageType, tlv};
    wire_frame(MessageType::Hello, 0, &|e| {
        e.tlv(tlv::SYSTEM_NAME, &[b"stuck-b"]).unwrap();
        e.tlv(tlv::BOOT_ID, &[&FAKE_BOOT.to_be_bytes()]).unwrap();
        e.tlv(tlv::CAPABILITIES, &[&1u32.to_be_bytes()]).unwrap();
    })
}

fn fake_keepalive(seq: u32) -> Vec<u8> {
    use sync_common::wire::{MessageType, tlv};
    wire_frame(MessageType::Keepalive, seq, &|e| {
        e.tlv(tlv::BOOT_ID, &[&FAKE_BOOT.to_be_bytes()]).unwrap();
    })
}

/// `show peer` over the control socket itself, with how long the agent
/// took to answer.
fn timed_show_peer(agent: &Agent) -> anyhow::Result<(serde_json::Value, Duration)> {
    agent.timed_request(&sync_agent::control::protocol::Request::Peer)
}

/// A fake B that completes the hello and then never reads: A's writes to it
/// pile up (its receive window closes, A's writer blocks, A's queue to the
/// writer fills), while B's keepalives (B's own boot id) keep arriving.
/// A must not stall: `show peer` answers within 400 ms all along, A keeps
/// sending keepalives, still sees B alive, reports the stall and reconnects.
#[test]
fn a_peer_that_stops_reading_never_stalls_the_agent() -> anyhow::Result<()> {
    use std::{
        os::fd::AsRawFd as _,
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, AtomicU64, Ordering},
        },
        time::Instant,
    };
    const DEAD_MS: u64 = 500;
    pair::raise_neighbour_limits(16384)?;
    let pair = Pair::new()?;
    // Sockets opened inside B's namespace stay there when used from this thread.
    let (listener, udp) = pair.b.run(|| {
        let listener = std::net::TcpListener::bind("169.254.77.2:7789")?;
        // A small receive buffer (inherited by accepted connections) so that
        // a not-reading peer closes its window after a few kilobytes.
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt on a valid socket with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const size).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        anyhow::ensure!(rc == 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        Ok((listener, UdpSocket::bind("169.254.77.2:7789")?))
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    // Times at which A's keepalives reached the fake B.
    let heard: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let tcp = {
        let (stop, accepted) = (stop.clone(), accepted.clone());
        listener.set_nonblocking(true)?;
        std::thread::spawn(move || {
            // Held open and never read.
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.write_all(&fake_hello());
                        accepted.fetch_add(1, Ordering::Relaxed);
                        held.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let keepalives = {
        let (stop, heard) = (stop.clone(), heard.clone());
        udp.set_read_timeout(Some(Duration::from_millis(20)))?;
        std::thread::spawn(move || {
            let mut next_send = Instant::now();
            let mut seq = 0;
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next_send {
                    seq += 1;
                    let _ = udp.send_to(&fake_keepalive(seq), "169.254.77.1:7789");
                    next_send += Duration::from_millis(100);
                }
                if let Ok((_, from)) = udp.recv_from(&mut buf)
                    && from.ip().to_string() == "169.254.77.1"
                {
                    heard.lock().unwrap().push(Instant::now());
                }
            }
        })
    };
    let a = pair.agent_a("")?;
    a.wait_session_up()?;

    // Flood A with replies to capture (distinct hosts, then the same ones
    // again: each capture is an update to sync), until A gives up on the
    // stuck session.
    let replies: Vec<Vec<u8>> = (0..2000)
        .map(|i| pair.reply_from_c(ip_of(i), pair.a_mac, A_IP).to_bytes())
        .collect();
    let flood_until = Instant::now() + Duration::from_secs(20);
    let (mut slowest, mut queries) = (Duration::ZERO, 0u32);
    let mut stalled_at = None;
    let mut watched_from = None;
    while Instant::now() < flood_until {
        for chunk in replies.chunks(500) {
            pair.c.send_frames("c-a", chunk)?;
        }
        // While the peer is stuck, A answers within 400 ms every time. This is
        // a deadline, not a benchmark: an answer that waits on the peer-sync
        // task blocked behind the peer would take seconds (or forever); a
        // free loop answers in well under a millisecond. 100 ms was exceeded
        // once with the 2-core machine fully loaded by parallel builds; 400 ms
        // is still under the dead interval, so a stall cannot hide in it.
        let (peer, took) = timed_show_peer(&a)?;
        queries += 1;
        slowest = slowest.max(took);
        assert!(took < Duration::from_millis(400), "show peer took {took:?}");
        assert_eq!(
            peer["alive"], true,
            "A declared the healthy peer dead: {peer}"
        );
        if stalled_at.is_none() && peer["counters"]["sessions_stalled"].as_u64() >= Some(1) {
            stalled_at = Some(Instant::now());
        }
        // Keep the pressure on for several dead intervals past the first stall.
        if let Some(t) = stalled_at {
            watched_from.get_or_insert(t);
            if t.elapsed() > Duration::from_millis(6 * DEAD_MS) {
                break;
            }
        }
    }
    let stalled_at = stalled_at.context("A never reported the stuck session")?;
    let (peer, _) = timed_show_peer(&a)?;
    stop.store(true, Ordering::Relaxed);
    let _ = tcp.join();
    let _ = keepalives.join();

    // (b) A's keepalives kept reaching B through the whole stuck period: no
    // gap as long as a dead interval.
    let heard = heard.lock().unwrap().clone();
    let during: Vec<Instant> = heard.iter().copied().filter(|t| *t >= stalled_at).collect();
    assert!(
        during.len() >= 20,
        "only {} keepalives from A after the stall",
        during.len()
    );
    let worst_gap = during
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        worst_gap < Duration::from_millis(DEAD_MS),
        "A's keepalives paused for {worst_gap:?}"
    );
    // (d) The stall is reported and A reconnected to the (still alive) peer.
    let counters = &peer["counters"];
    assert!(counters["sessions_stalled"].as_u64() >= Some(1), "{peer}");
    assert!(
        counters["sessions_established"].as_u64() >= Some(2),
        "A did not reconnect: {peer}"
    );
    assert!(accepted.load(Ordering::Relaxed) >= 2);
    eprintln!(
        "stuck peer: {queries} show peer answers, slowest {slowest:?}; keepalives heard after the stall: {}, worst gap {worst_gap:?}; stalled {} times, {} sessions",
        during.len(),
        counters["sessions_stalled"],
        counters["sessions_established"]
    );
    Ok(())
}

/// A connection from the peer's address that never says hello holds B's
/// only session slot for `hello_timeout_ms`, no longer; the real A then
/// gets its session.
#[test]
fn a_connection_that_never_says_hello_is_closed_after_hello_timeout_ms() -> anyhow::Result<()> {
    use std::{io::Read as _, time::Instant};
    let pair = Pair::new()?;
    let b = pair.agent_b("hello_timeout_ms = 500")?;
    let (closed_after, said) = pair.a.run(|| {
        let mut stream = wait_until(WAIT, "B listening", || {
            TcpStream::connect_timeout(
                &"169.254.77.2:7789".parse().unwrap(),
                Duration::from_secs(1),
            )
            .map_err(|e| e.to_string())
        })?;
        let opened = Instant::now();
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        // B says hello, then hangs up when ours does not come.
        let mut said = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => said.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok((opened.elapsed(), said))
    })?;
    assert!(
        said.starts_with(b"MS\x01"),
        "B sent its hello first: {said:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(450) && closed_after < Duration::from_millis(2500),
        "B closed the hello-less connection after {closed_after:?} (hello_timeout_ms = 500)"
    );
    let peer = b.query(&["show", "peer"])?;
    assert_eq!(peer["counters"]["hello_timeouts"], 1, "{peer}");
    assert_ne!(peer["state"], "up");
    let a = pair.agent_a("")?;
    a.wait_session_up()?;
    b.wait_session_up()?;
    Ok(())
}
