//! Who learns what from one misdelivered reply, against real kernels: the
//! asking switch (through the peer link), the switch it landed on (SPEC 1.2,
//! "this switch learns it too"), and nobody twice — in generic XDP mode a
//! classifier sees every injected frame again, and without the injection
//! mark the reply would be synced back and forth forever. `cargo xtask test`
//! runs this suite in driver mode and again with `MLAG_TEST_XDP_MODE=generic`.

use std::time::Duration;

use anyhow::Context as _;
use mlag_testbed::{
    agent::Agent,
    netns::{Netns, fmt_mac},
    pair::{self, A_IP, B_IP, C_IP, Pair},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(15);
/// Without the init delay: these tests are about learning, not hold-down.
const MCLAG: &str = "\n[mclag]\ninit_delay_s = 0\n";

/// Waits until `ns` resolves `ip` to `mac` on `dev`; returns the state.
fn wait_learnt(ns: &Netns, dev: &str, ip: &str, mac: &[u8; 6]) -> anyhow::Result<String> {
    wait_until(
        WAIT,
        &format!("{ip} -> {} on {dev} in {}", fmt_mac(mac), ns.name()),
        || match pair::neighbour(ns, dev, ip) {
            Ok(Some((state, lladdr)))
                if lladdr == fmt_mac(mac) && state != "FAILED" && state != "INCOMPLETE" =>
            {
                Ok(state)
            }
            other => Err(format!("{other:?}")),
        },
    )
}

/// Waits until `mac` is in the classifier's peer table of `agent`.
fn wait_peer_mac(agent: &Agent, mac: &[u8; 6]) -> anyhow::Result<()> {
    wait_until(WAIT, &format!("{} in the peer table", fmt_mac(mac)), || {
        let status = agent.query(&["status"]).map_err(|e| e.to_string())?;
        if status["peer_macs"]
            .as_array()
            .is_some_and(|m| m.contains(&serde_json::json!(fmt_mac(mac))))
        {
            Ok(())
        } else {
            Err(status["peer_macs"].to_string())
        }
    })
}

fn counter(agent: &Agent, name: &str) -> anyhow::Result<u64> {
    agent.query(&["show", "counters"])?[name]
        .as_u64()
        .with_context(|| format!("counter {name}"))
}

#[test]
fn one_misdelivered_reply_is_captured_once_and_learnt_by_both_switches() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    let a = pair.agent_a("")?;
    let b = pair.agent_b("")?;
    a.wait_session_up()?;
    b.wait_session_up()?;
    let mut ping = pair.a_starts_resolving("10.77.0.3")?;
    // C's load balancing sends the reply to A out of its link to B.
    pair.c.send_frames(
        "c-b",
        &[pair.reply_from_c(C_IP, pair.a_mac, A_IP).to_bytes()],
    )?;
    wait_learnt(&pair.a, "a-c", "10.77.0.3", &pair.c_mac)?;
    // B did not ask, but the reply came through its port: it learns too.
    wait_learnt(&pair.b, "b-c", "10.77.0.3", &pair.c_mac)?;
    let _ = ping.kill();
    // The quiet period is the assertion: an echo (each switch re-capturing
    // the other's injection) would keep capturing within microseconds.
    std::thread::sleep(Duration::from_secs(1));
    let captured = counter(&a, "captured")? + counter(&b, "captured")?;
    assert_eq!(captured, 1, "one reply, one capture in total");
    if pair::xdp_mode() == "generic" {
        // Both injections (A learning the synced reply, B learning it
        // itself) were seen again by the generic-mode classifiers.
        assert!(counter(&a, "echo_suppressed")? >= 1);
        assert!(counter(&b, "echo_suppressed")? >= 1);
    }
    let peer = b.query(&["show", "peer"])?;
    assert_eq!(peer["counters"]["learnt_here"], 1);
    let arp = b.query(&["show", "arp"])?;
    let entry = arp
        .as_array()
        .context("show arp is a list")?
        .iter()
        .find(|e| e["ip"] == "10.77.0.3" && e["direction"] == "sent")
        .context("B's sent entry")?;
    assert_eq!(entry["class"], "peer");
    assert_eq!(entry["learnt_here"], "kernel-arp");
    assert!(
        matches!(
            entry["kernel_state"].as_str(),
            Some("REACHABLE" | "STALE" | "DELAY" | "PROBE")
        ),
        "{entry}"
    );
    Ok(())
}

#[test]
fn the_peer_macs_from_the_hello_are_classified_peer_without_configuring_them() -> anyhow::Result<()>
{
    let pair = Pair::new()?;
    // Neither switch lists the other's MAC: only the hello tells them.
    let forget = |config: String, mac: &[u8; 6]| {
        config.replace(&format!("peer_macs = [\"{}\"]", fmt_mac(mac)), "")
    };
    let a = Agent::start(&pair.a, &forget(pair.config_a(""), &pair.b_mac))?;
    let b = Agent::start(&pair.b, &forget(pair.config_b(""), &pair.a_mac))?;
    a.wait_session_up()?;
    wait_peer_mac(&b, &pair.a_mac)?;
    let mut ping = pair.a_starts_resolving("10.77.0.3")?;
    pair.c.send_frames(
        "c-b",
        &[pair.reply_from_c(C_IP, pair.a_mac, A_IP).to_bytes()],
    )?;
    wait_learnt(&pair.a, "a-c", "10.77.0.3", &pair.c_mac)?;
    let _ = ping.kill();
    Ok(())
}

#[test]
fn with_mclag_aligned_a_reply_to_the_shared_mac_reaches_both_without_own_sync() -> anyhow::Result<()>
{
    let pair = Pair::new()?;
    let no_own_sync = |config: String| config.replace("[peer]", "sync_own_replies = false\n[peer]");
    let a = Agent::start(&pair.a, &no_own_sync(pair.config_a(MCLAG)))?;
    let b = Agent::start(&pair.b, &no_own_sync(pair.config_b(MCLAG)))?;
    // 169.254.77.2 > 169.254.77.1: B is master, A's port takes B's MAC.
    wait_until(WAIT, "A's member port on the shared MAC", || {
        match pair.a.mac("a-c") {
            Ok(mac) if mac == pair.b_mac => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })?;
    wait_peer_mac(&a, &pair.b_mac)?;
    wait_peer_mac(&b, &pair.b_mac)?;
    // The slave asks; the answer (to the shared MAC) lands on the master,
    // where the shared MAC is its own port's: without MC-LAG's part it would
    // be class `own` there, and with own-sync off A would never learn it.
    let mut ping = pair.a_starts_resolving("10.77.0.3")?;
    pair.c.send_frames(
        "c-b",
        &[pair.reply_from_c(C_IP, pair.b_mac, A_IP).to_bytes()],
    )?;
    wait_learnt(&pair.a, "a-c", "10.77.0.3", &pair.c_mac)?;
    let _ = ping.kill();
    // The master asks; the answer lands on the slave.
    let mut ping = pair.b_starts_resolving("10.77.0.4")?;
    pair.c.send_frames(
        "c-a",
        &[pair
            .reply_from_c([10, 77, 0, 4], pair.b_mac, B_IP)
            .to_bytes()],
    )?;
    wait_learnt(&pair.b, "b-c", "10.77.0.4", &pair.c_mac)?;
    let _ = ping.kill();
    Ok(())
}

/// Whether program `id` is loaded (`bpftool prog show id`), with its name.
fn program_loaded(id: &str) -> bool {
    mlag_testbed::netns::sh("bpftool", &["prog", "show", "id", id])
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("mlag_inject_tc"))
}

/// Where the kernel refuses `BPF_PROG_RUN` live frames (EPERM on hardened
/// builds) the agent hands synced replies to the receive path through a tc
/// redirect on the loopback device. Forced here, so the path is tested
/// whatever this kernel allows: the reply still goes through the kernel's
/// own ARP learning (`kernel-arp`, never the netlink fallback), and the tc
/// link goes with the agent, even on SIGKILL.
#[test]
fn with_the_tc_redirect_a_synced_reply_is_learnt_by_the_kernel_and_the_link_dies_with_the_agent()
-> anyhow::Result<()> {
    let pair = Pair::new()?;
    let forced =
        |config: String| config.replace("[dataplane]\n", "[dataplane]\ninject = \"tc-redirect\"\n");
    let mut a = Agent::start(&pair.a, &forced(pair.config_a("")))?;
    let b = Agent::start(&pair.b, &forced(pair.config_b("")))?;
    a.wait_session_up()?;
    b.wait_session_up()?;
    for agent in [&a, &b] {
        assert_eq!(
            agent.query(&["show", "peer"])?["inject_method"],
            "tc-redirect"
        );
    }
    let status = a.query(&["status"])?;
    let program_id = status["inject_redirect_program_id"]
        .as_u64()
        .with_context(|| format!("mlag_inject_tc's id in {status}"))?;
    let program = program_id.to_string();
    assert!(
        program_loaded(&program),
        "mlag_inject_tc id {program} loaded"
    );
    // Attached: a TCX link holding it (kernels >= 6.6; bpftool 7.1 prints
    // the link type as its number, 11), or a filter on the loopback's
    // clsact qdisc on older kernels.
    let links = mlag_testbed::netns::sh("bpftool", &["-j", "link", "show"])?;
    let links: serde_json::Value = serde_json::from_slice(&links.stdout)?;
    let tcx_link = links.as_array().is_some_and(|l| {
        l.iter()
            .any(|l| l["prog_id"] == program_id && (l["type"] == 11 || l["type"] == "tcx"))
    });
    let tc_filter = pair
        .a
        .exec("bpftool", &["net", "show", "dev", "lo"])?
        .contains("mlag_inject_tc");
    assert!(
        tcx_link || tc_filter,
        "program {program} attached: links {links}"
    );
    let mut ping = pair.a_starts_resolving("10.77.0.3")?;
    pair.c.send_frames(
        "c-b",
        &[pair.reply_from_c(C_IP, pair.a_mac, A_IP).to_bytes()],
    )?;
    wait_learnt(&pair.a, "a-c", "10.77.0.3", &pair.c_mac)?;
    wait_learnt(&pair.b, "b-c", "10.77.0.3", &pair.c_mac)?;
    let _ = ping.kill();
    let arp = a.query(&["show", "arp"])?;
    let received = arp
        .as_array()
        .context("show arp is a list")?
        .iter()
        .find(|e| e["ip"] == "10.77.0.3" && e["direction"] == "received")
        .with_context(|| format!("A's received entry in {arp}"))?;
    assert_eq!(received["how"], "kernel-arp", "{received}");
    assert_eq!(counter(&a, "netlink_fallback").unwrap_or(0), 0);
    // Nothing is left on the loopback once the agent is gone, however it
    // went: the link held the program, so the program goes with it.
    a.kill()?;
    wait_until(WAIT, "mlag_inject_tc unloaded after SIGKILL", || {
        if program_loaded(&program) {
            Err(format!("program {program} still loaded"))
        } else {
            Ok(())
        }
    })?;
    Ok(())
}
