//! SPEC 3 against real kernels: the pair elects a master, the slave's member
//! port takes the master's MAC and a regenerated link-local address, and the
//! slave takes over (with gratuitous ARP) when the master is gone. A stopped
//! agent leaves its ports as it found them.

use std::time::Duration;

use anyhow::Context as _;
use mlag_testbed::{
    agent::Agent,
    netns::{Netns, fmt_mac},
    pair::Pair,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(15);
/// MC-LAG without the init delay: these tests are about other things, and
/// a member port coming up again regenerates its link-local. The hold-down
/// has tests of its own below.
const MCLAG: &str = "\n[mclag]\ninit_delay_s = 0\n";

/// The EUI-64 link-local of a MAC, written independently of the product.
fn eui64(mac: &[u8; 6]) -> String {
    let groups = [
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    ];
    let addr = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, groups[0], groups[1], groups[2], groups[3]);
    addr.to_string()
}

fn link_locals(ns: &Netns, dev: &str) -> anyhow::Result<Vec<String>> {
    let json: serde_json::Value =
        serde_json::from_str(&ns.ip(&["-j", "-6", "addr", "show", "dev", dev, "scope", "link"])?)?;
    Ok(json[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["local"].as_str().map(String::from))
        .collect())
}

/// The addresses of `dev` in `ns`, sorted, as `ip -j addr` shows them.
fn sorted_link_locals(ns: &Netns, dev: &str) -> anyhow::Result<Vec<String>> {
    let mut list = link_locals(ns, dev)?;
    list.sort();
    Ok(list)
}

fn sorted(mut list: Vec<String>) -> Vec<String> {
    list.sort();
    list
}

fn arp_accept(ns: &Netns, dev: &str) -> anyhow::Result<String> {
    Ok(ns
        .exec(
            "cat",
            &[&format!("/proc/sys/net/ipv4/conf/{dev}/arp_accept")],
        )?
        .trim()
        .to_string())
}

fn wait_role(agent: &Agent, role: &str) -> anyhow::Result<serde_json::Value> {
    wait_until(WAIT, &format!("role {role}"), || {
        match agent.query(&["show", "mclag"]) {
            Ok(m) if m["role"] == role => Ok(m),
            other => Err(other
                .map(|m| m["role"].to_string())
                .map_err(|e| e.to_string())),
        }
    })
}

fn wait_mac(ns: &Netns, dev: &str, mac: &[u8; 6]) -> anyhow::Result<()> {
    wait_until(
        WAIT,
        &format!("{dev} to carry {}", fmt_mac(mac)),
        || match ns.mac(dev) {
            Ok(m) if m == *mac => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
}

#[test]
fn the_slave_member_port_takes_the_master_mac_and_a_regenerated_link_local() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a_original = pair.a_mac;
    let a = pair.agent_a(MCLAG)?;
    let b = pair.agent_b(MCLAG)?;
    // 169.254.77.2 > 169.254.77.1: B is master.
    wait_role(&b, "master")?;
    let report = wait_role(&a, "slave")?;
    wait_mac(&pair.a, "a-c", &pair.b_mac)?;
    let expected = eui64(&pair.b_mac);
    let lls = wait_until(WAIT, "exactly the new link-local on a-c", || {
        let lls = link_locals(&pair.a, "a-c").map_err(|e| e.to_string())?;
        if lls == [expected.clone()] {
            Ok(lls)
        } else {
            Err(format!("{lls:?}"))
        }
    })?;
    assert_eq!(lls, [eui64(&pair.b_mac)]);
    assert!(
        !lls.contains(&eui64(&a_original)),
        "the stale link-local is gone"
    );
    // The master keeps its own MAC.
    assert_eq!(pair.b.mac("b-c")?, pair.b_mac);
    // C reaches the slave's new link-local address (waits out DAD).
    wait_until(WAIT, "ping6 from C to the slave's link-local", || {
        pair.c
            .exec(
                "ping",
                &["-6", "-c", "1", "-W", "1", &format!("{expected}%c-a")],
            )
            .map_err(|e| e.to_string())
    })?;
    let port = &report["ports"][0];
    assert_eq!(port["original_mac"], fmt_mac(&a_original));
    assert_eq!(port["twin_mac"], fmt_mac(&pair.b_mac));
    let m = a.query(&["show", "mclag"])?;
    assert_eq!(m["ports"][0]["current_mac"], fmt_mac(&pair.b_mac));
    assert_eq!(m["shared_mac"], fmt_mac(&pair.b_mac));
    assert!(m["last_role_change_unix_ms"].is_u64());
    Ok(())
}

/// Whether this machine lets a thread of this process (root, as the
/// agents run) take SCHED_FIFO: tried on a thread of its own.
fn real_time_allowed() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: pid 0 is the calling thread, which ends right after.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
    })
    .join()
    .unwrap_or(false)
}

/// The rt_priority and policy of process `pid`'s thread named `name`
/// (`/proc/PID/task/TID/stat`, fields 40 and 41).
fn thread_scheduling(pid: u32, name: &str) -> anyhow::Result<(u32, u32)> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat"))?;
        let after = stat.rfind(')').context("stat without a command")? + 2;
        let fields: Vec<&str> = stat[after..].split_whitespace().collect();
        return Ok((fields[40 - 3].parse()?, fields[41 - 3].parse()?));
    }
    anyhow::bail!("process {pid} has no thread named {name}")
}

fn is_gratuitous_arp_for(frame: &[u8], ip: [u8; 4]) -> bool {
    frame.len() >= 42 && frame[12..14] == [0x08, 0x06] && frame[28..32] == ip && frame[38..42] == ip
}

#[test]
fn when_the_master_is_gone_the_slave_takes_over_and_announces_itself() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a(MCLAG)?;
    let mut b = pair.agent_b(MCLAG)?;
    let slave = wait_role(&a, "slave")?;
    wait_mac(&pair.a, "a-c", &pair.b_mac)?;
    // The takeover runs on its own thread, one real-time priority below
    // the keepalive threads (default 10), as the kernel says; where this
    // machine refuses real time (no CAP_SYS_NICE, an RT cgroup without
    // budget) the agent says so and the thread runs normally.
    let pid = a.pid().context("A's pid")?;
    let scheduling = slave["scheduling"].as_str().unwrap_or_default();
    if real_time_allowed() {
        assert_eq!(scheduling, "SCHED_FIFO 9", "{slave}");
        assert_eq!(
            thread_scheduling(pid, "mclag")?,
            (9, 1),
            "rt_priority and policy (1: SCHED_FIFO) of A's mclag thread"
        );
    } else {
        assert!(scheduling.contains("real time refused"), "{slave}");
        assert_eq!(thread_scheduling(pid, "mclag")?, (0, 0));
    }
    let listener = pair.c.listen("c-a")?;
    b.stop()?;
    pair.b.ip(&["link", "set", "b-peer", "down"])?;
    let frames = listener.receive_until(WAIT, |got| {
        got.iter().any(|f| is_gratuitous_arp_for(f, [10, 77, 0, 1]))
    });
    let garp = frames
        .iter()
        .find(|f| is_gratuitous_arp_for(f, [10, 77, 0, 1]))
        .context("no gratuitous ARP from A on C's link")?;
    assert_eq!(&garp[6..12], &pair.b_mac, "A announces with the shared MAC");
    let report = wait_role(&a, "master")?;
    assert!(report["announcements_sent"].as_u64() >= Some(1));
    assert_eq!(
        pair.a.mac("a-c")?,
        pair.b_mac,
        "the downstream device sees no MAC change"
    );

    // The old master returns: roles settle, and A's port keeps its identity.
    pair.b.ip(&["link", "set", "b-peer", "up"])?;
    let b = pair.agent_b(MCLAG)?;
    wait_role(&b, "master")?;
    // No settling sleep: A's task aligns in the handler of B's hello, before
    // it can answer the query that reports it slave again.
    wait_role(&a, "slave")?;
    assert_eq!(pair.a.mac("a-c")?, pair.b_mac);
    assert_eq!(link_locals(&pair.a, "a-c")?, [eui64(&pair.b_mac)]);
    Ok(())
}

#[test]
fn a_peer_alive_on_the_backup_path_is_a_split_brain_and_the_slave_stays_slave() -> anyhow::Result<()>
{
    let pair = Pair::new()?;
    let (backup_a, backup_b) = pair.add_backup_path()?;
    let a = pair.agent_a(&format!("{MCLAG}{backup_a}"))?;
    let _b = pair.agent_b(&format!("{MCLAG}{backup_b}"))?;
    wait_role(&a, "slave")?;
    wait_until(WAIT, "backup path alive", || {
        match a.query(&["show", "mclag"]) {
            Ok(m) if m["backup_alive"] == true => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })?;
    pair.a.ip(&["link", "set", "a-peer", "down"])?;
    let report = wait_until(WAIT, "split brain reported", || {
        match a.query(&["show", "mclag"]) {
            Ok(m) if m["split_brain"] == true => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })?;
    assert_eq!(report["role"], "slave");
    assert!(a.log_text().contains("split brain"));
    // Dual-active protection: the slave's member port goes down, so C's
    // bond would use the master alone; it says why.
    wait_admin_up(&pair.a, "a-c", false)?;
    let report = a.query(&["show", "mclag"])?;
    assert_eq!(
        report["holds"],
        serde_json::json!(["split-brain"]),
        "{report}"
    );
    assert_eq!(report["ports"][0]["held_down"], true);
    assert!(
        pair.b
            .ip(&["-j", "link", "show", "b-c"])?
            .contains("\"UP\""),
        "the master keeps its port"
    );
    // The peer link returns: the session comes back, the pair resyncs and
    // the port is in service again.
    pair.a.ip(&["link", "set", "a-peer", "up"])?;
    wait_admin_up(&pair.a, "a-c", true)?;
    let report = wait_until(WAIT, "hold released", || {
        match a.query(&["show", "mclag"]) {
            Ok(m) if m["holds"] == serde_json::json!([]) && m["split_brain"] == false => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })?;
    assert_eq!(report["role"], "slave");
    Ok(())
}

/// Whether `dev` in `ns` is administratively up (its IFF_UP flag).
fn admin_up(ns: &Netns, dev: &str) -> anyhow::Result<bool> {
    let json: serde_json::Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", dev])?)?;
    Ok(json[0]["flags"]
        .as_array()
        .context("flags")?
        .iter()
        .any(|f| f == "UP"))
}

fn wait_admin_up(ns: &Netns, dev: &str, up: bool) -> anyhow::Result<()> {
    wait_until(
        WAIT,
        &format!("{dev} admin {}", if up { "up" } else { "down" }),
        || match admin_up(ns, dev) {
            Ok(now) if now == up => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
}

#[test]
fn the_init_delay_holds_member_ports_down_until_the_peers_bulk_sync_is_applied()
-> anyhow::Result<()> {
    let pair = Pair::new()?;
    // Long enough that only the peer's sync can end it within the test.
    let held = "\n[mclag]\ninit_delay_s = 600\n";
    let a = pair.agent_a(held)?;
    wait_admin_up(&pair.a, "a-c", false)?;
    let report = a.query(&["show", "mclag"])?;
    assert_eq!(
        report["holds"],
        serde_json::json!(["init-delay"]),
        "{report}"
    );
    assert!(report["init_delay_remaining_ms"].as_u64() > Some(500_000));
    assert_eq!(report["converged"], false);
    let b = pair.agent_b(held)?;
    for (agent, ns, dev) in [(&a, &pair.a, "a-c"), (&b, &pair.b, "b-c")] {
        wait_admin_up(ns, dev, true)?;
        let report = wait_until(WAIT, "converged", || {
            match agent.query(&["show", "mclag"]) {
                Ok(m) if m["converged"] == true && m["holds"] == serde_json::json!([]) => Ok(m),
                other => Err(format!("{other:?}")),
            }
        })?;
        assert_eq!(report["init_delay_remaining_ms"], serde_json::Value::Null);
        assert!(agent.query(&["show", "peer"])?["counters"]["peer_syncs_done"].as_u64() >= Some(1));
    }
    // Held down while aligning, the slave still ends with the master's MAC
    // and exactly the link-local of it once back up.
    wait_role(&a, "slave")?;
    wait_mac(&pair.a, "a-c", &pair.b_mac)?;
    let expected = eui64(&pair.b_mac);
    wait_until(WAIT, "the master's link-local on a-c", || {
        let lls = link_locals(&pair.a, "a-c").map_err(|e| e.to_string())?;
        if lls == [expected.clone()] {
            Ok(())
        } else {
            Err(format!("{lls:?}"))
        }
    })?;
    Ok(())
}

#[test]
fn a_lone_switch_brings_its_member_ports_up_when_the_init_delay_is_over() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a("\n[mclag]\ninit_delay_s = 3\n")?;
    wait_admin_up(&pair.a, "a-c", false)?;
    wait_admin_up(&pair.a, "a-c", true)?;
    let report = a.query(&["show", "mclag"])?;
    assert_eq!(report["holds"], serde_json::json!([]));
    assert_eq!(report["converged"], false, "no peer was ever seen");
    assert!(a.log_text().contains("init delay over without a bulk sync"));
    Ok(())
}

#[test]
fn equal_election_addresses_are_reported_on_both_sides() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let same = format!("{MCLAG}address = \"192.0.2.9\"\n");
    let a = pair.agent_a(&same)?;
    let b = pair.agent_b(&same)?;
    for agent in [&a, &b] {
        let report = wait_until(WAIT, "election error", || {
            match agent.query(&["show", "mclag"]) {
                Ok(m) if m["error"].is_string() => Ok(m),
                other => Err(format!("{other:?}")),
            }
        })?;
        assert!(
            report["error"]
                .as_str()
                .unwrap()
                .contains("both switches use election address 192.0.2.9"),
            "{report}"
        );
        assert_eq!(report["role"], "undecided");
    }
    assert_eq!(
        pair.a.mac("a-c")?,
        pair.a_mac,
        "no MAC change without an election"
    );
    Ok(())
}

#[test]
fn a_stopped_slave_gives_its_ports_back_their_mac_link_local_and_arp_accept() -> anyhow::Result<()>
{
    let pair = Pair::new()?;
    let operator = "fe80::1234".to_string();
    pair.a
        .ip(&["addr", "add", "fe80::1234/64", "dev", "a-c", "nodad"])?;
    let original = sorted(vec![eui64(&pair.a_mac), operator.clone()]);
    wait_until(
        WAIT,
        "a-c's own EUI-64 link-local and the operator's",
        || match sorted_link_locals(&pair.a, "a-c") {
            Ok(lls) if lls == original => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;
    let arp_accept_before = arp_accept(&pair.a, "a-c")?;
    assert_eq!(arp_accept_before, "0", "the namespace default");

    let mut a = pair.agent_a(MCLAG)?;
    let _b = pair.agent_b(MCLAG)?;
    wait_role(&a, "slave")?;
    wait_mac(&pair.a, "a-c", &pair.b_mac)?;
    let aligned = sorted(vec![eui64(&pair.b_mac), operator.clone()]);
    wait_until(
        WAIT,
        "the derived link-local replaced, the operator's kept",
        || match sorted_link_locals(&pair.a, "a-c") {
            Ok(lls) if lls == aligned => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )?;
    assert_eq!(arp_accept(&pair.a, "a-c")?, "1", "peer sync's policy `set`");

    let status = a.stop()?;
    assert!(status.success(), "clean exit: {status:?}\n{}", a.log_text());
    // The agent restores before it exits: nothing to wait for.
    assert_eq!(
        fmt_mac(&pair.a.mac("a-c")?),
        fmt_mac(&pair.a_mac),
        "the original MAC is back"
    );
    assert_eq!(
        sorted_link_locals(&pair.a, "a-c")?,
        original,
        "the original EUI-64 link-local is back, the operator's is still there, the derived one is gone"
    );
    assert_eq!(arp_accept(&pair.a, "a-c")?, arp_accept_before);
    let log = a.log_text();
    assert!(log.contains("member port restored"), "{log}");
    assert!(log.contains("arp_accept restored"), "{log}");
    Ok(())
}

/// A peer that freezes (SIGSTOP) for less than the dead interval while this
/// switch floods it with sync frames changes nothing: no role flips on
/// either side, and this switch's control socket keeps answering fast.
#[test]
fn a_master_frozen_for_less_than_the_dead_interval_flips_no_role() -> anyhow::Result<()> {
    use sync_agent::control::protocol::Request;
    let pair = Pair::new()?;
    let a = pair.agent_a(MCLAG)?;
    let b = pair.agent_b(MCLAG)?;
    wait_role(&b, "master")?;
    wait_role(&a, "slave")?;
    let before_a = a.query(&["show", "mclag"])?["role_changes"].clone();
    let before_b = b.query(&["show", "mclag"])?["role_changes"].clone();
    // Replies for B land on A: each is captured and synced to B, which is
    // frozen and reads nothing.
    let flood: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| {
            pair.reply_from_c(
                [10, 81, (i / 250) as u8, 1 + (i % 250) as u8],
                pair.b_mac,
                [10, 77, 0, 2],
            )
            .to_bytes()
        })
        .collect();
    let b_pid = b.pid().context("B runs")? as i32;
    // SAFETY: signals to a child process this test started.
    unsafe { libc::kill(b_pid, libc::SIGSTOP) };
    let frozen = std::time::Instant::now();
    pair.c.send_frames("c-a", &flood)?;
    let mut slowest = Duration::ZERO;
    // 300 ms of the 500 ms dead interval: keepalives resume before it ends.
    while frozen.elapsed() < Duration::from_millis(300) {
        let (_, took) = a.timed_request(&Request::Peer)?;
        slowest = slowest.max(took);
    }
    // SAFETY: as above.
    unsafe { libc::kill(b_pid, libc::SIGCONT) };
    // A deadline, not a benchmark: an agent blocked behind its peer would
    // answer only after seconds (or never).
    assert!(
        slowest < Duration::from_millis(100),
        "show peer took {slowest:?}"
    );
    // The quiet period is the assertion: a takeover would happen within
    // a dead interval of the freeze.
    std::thread::sleep(Duration::from_millis(700));
    let a_now = a.query(&["show", "mclag"])?;
    let b_now = b.query(&["show", "mclag"])?;
    assert_eq!(a_now["role"], "slave");
    assert_eq!(b_now["role"], "master");
    assert_eq!(a_now["role_changes"], before_a);
    assert_eq!(b_now["role_changes"], before_b);
    Ok(())
}

#[test]
fn a_mismatched_mlag_id_is_reported_on_both_sides() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    // A calls its member port MLAG id 7; B keeps the default, 1.
    let a = pair.agent_a(&format!("mlag_ids = {{ a-c = 7 }}\n{MCLAG}"))?;
    let b = pair.agent_b(MCLAG)?;
    for (agent, local_only, peer_only) in [(&a, 7, 1), (&b, 1, 7)] {
        let report = wait_until(WAIT, "mismatches reported", || {
            match agent.query(&["show", "mclag"]) {
                Ok(m) if m["mismatches"].as_array().is_some_and(|l| l.len() == 2) => Ok(m),
                other => Err(format!("{other:?}")),
            }
        })?;
        let list = report["mismatches"].as_array().unwrap();
        assert!(
            list.iter().any(|m| m["field"] == "mlag-id"
                && m["mlag_id"] == local_only
                && m["peer"] == "none"),
            "{report}"
        );
        assert!(
            list.iter().any(|m| m["field"] == "mlag-id"
                && m["mlag_id"] == peer_only
                && m["local"] == "none"),
            "{report}"
        );
        assert!(report["mismatches_found"].as_u64() >= Some(2));
        assert_eq!(
            report["holds"],
            serde_json::json!([]),
            "warn only, by default"
        );
    }
    Ok(())
}

#[test]
fn differing_vlan_interface_maps_are_reported_on_both_sides_with_both_values() -> anyhow::Result<()>
{
    let pair = Pair::new()?;
    // A hands VLANs 10 and 20.5 of MLAG port 1 to an interface; B none.
    let a = pair.agent_a(&format!(
        "[[peer.vlan_interfaces]]\nmlag_id = 1\nouter_vlan = 10\ninterface = \"a-c\"\n\
         [[peer.vlan_interfaces]]\nmlag_id = 1\nouter_vlan = 20\ninner_vlan = 5\n\
         interface = \"a-c\"\n{MCLAG}"
    ))?;
    let b = pair.agent_b(MCLAG)?;
    for (agent, local, peer) in [(&a, "10,20.5", "none"), (&b, "none", "10,20.5")] {
        let report = wait_until(WAIT, "the VLAN map mismatch reported", || {
            match agent.query(&["show", "mclag"]) {
                Ok(m) if m["mismatches"].as_array().is_some_and(|l| !l.is_empty()) => Ok(m),
                other => Err(format!("{other:?}")),
            }
        })?;
        assert_eq!(
            report["mismatches"],
            serde_json::json!([{
                "field": "vlans",
                "mlag_id": 1,
                "port": report["ports"][0]["name"],
                "local": local,
                "peer": peer,
            }]),
            "{report}"
        );
    }
    Ok(())
}

#[test]
fn a_slave_with_shut_port_takes_a_port_of_another_mtu_out_of_service() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    pair.a.ip(&["link", "set", "a-c", "mtu", "9000"])?;
    let shut = "\n[mclag]\ninit_delay_s = 0\non_mismatch = \"shut-port\"\n";
    let a = pair.agent_a(shut)?;
    let b = pair.agent_b(shut)?;
    wait_role(&a, "slave")?;
    wait_admin_up(&pair.a, "a-c", false)?;
    let report = a.query(&["show", "mclag"])?;
    let mismatch = &report["mismatches"][0];
    assert_eq!(mismatch["field"], "mtu", "{report}");
    assert_eq!(
        (mismatch["local"].as_str(), mismatch["peer"].as_str()),
        (Some("9000"), Some("1500"))
    );
    assert_eq!(report["ports"][0]["held_down"], true);
    // The master reports it too but keeps its port.
    let master = wait_until(WAIT, "the master sees it", || {
        match b.query(&["show", "mclag"]) {
            Ok(m) if m["mismatches"].as_array().is_some_and(|l| !l.is_empty()) => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })?;
    assert_eq!(master["ports"][0]["held_down"], false);
    assert!(admin_up(&pair.b, "b-c")?);
    // The operator aligns the MTU: the port comes back.
    pair.a.ip(&["link", "set", "a-c", "mtu", "1500"])?;
    wait_admin_up(&pair.a, "a-c", true)?;
    Ok(())
}
