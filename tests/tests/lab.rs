//! `cargo xtask run`'s lab (the `mlag-lab` binary) run for one cycle of its
//! events, checked from what it prints: every part of the product did its
//! part, both switches of the pair learnt from each other, and nothing is
//! left behind when it exits.

use std::process::Command;

use anyhow::{Context as _, ensure};

/// The line of `output` that starts with `prefix`, after the line starting
/// with `after`.
fn line_after<'a>(output: &'a str, after: &str, prefix: &str) -> anyhow::Result<&'a str> {
    output
        .lines()
        .skip_while(|l| !l.starts_with(after))
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("no line {prefix:?} after {after:?} in:\n{output}"))
}

/// N in "learnt from the peer N" of a switch's line.
fn learnt(line: &str) -> u64 {
    line.split("learnt from the peer ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_lab_runs_every_part_of_the_product_for_four_rounds_and_cleans_up() -> anyhow::Result<()> {
    let lab = Command::new(env!("CARGO_BIN_EXE_mlag-lab"))
        .args(["--rounds", "4"])
        .output()
        .context("starting mlag-lab")?;
    let out = String::from_utf8_lossy(&lab.stdout).into_owned();
    let err = String::from_utf8_lossy(&lab.stderr);
    ensure!(
        lab.status.success(),
        "the lab failed ({}):\n{out}\n{err}",
        lab.status
    );

    // Round 1: B's member port flaps; A's model sees its MLAG interface
    // degraded meanwhile, and the fabric records B's port faults.
    let flap = line_after(&out, "--- round 1", "--- round 1")?;
    ensure!(flap.contains("mlag:1 degraded"), "{flap}");
    let fabric = line_after(&out, "--- round 1", "fabric (seen by sw-a)")?;
    ensure!(
        fabric.contains("members up 4") && fabric.contains("\"port\":\"b-c\""),
        "{fabric}"
    );
    // Round 2: a change rolled out with the canary alone in the first batch.
    let rollout = line_after(&out, "--- round 3", "rollout ")?;
    ensure!(
        rollout.contains("version 2") && rollout.contains(" [sw-d:"),
        "the canary's batch is not first: {rollout}"
    );
    let later = line_after(&out, "--- round 4", "rollout ")?;
    ensure!(
        later.contains("[sw-d:succeeded]") && !later.contains("failed"),
        "{later}"
    );
    // While the master is gone the survivor's alarms name the lost peer
    // switch as the root, with what depends on it under it.
    let alarms = line_after(&out, "--- round 3", "alarms on ")?;
    ensure!(alarms.contains("switch:mlag-peer"), "{alarms}");
    // Round 3: the master's agent is killed and the other takes over.
    let failure = line_after(&out, "--- round 3", "--- round 3")?;
    ensure!(failure.contains("took over as master"), "{failure}");
    // Round 4: it comes back and the peer session is up again.
    let back = line_after(&out, "--- round 4", "--- round 4")?;
    ensure!(back.contains("peer session up again"), "{back}");
    // Both switches learnt from the other at some point (replies were
    // misdelivered both ways every round).
    let mut learnt_a = 0;
    let mut learnt_b = 0;
    for line in out.lines() {
        if line.starts_with("switch A:") {
            learnt_a = learnt_a.max(learnt(line));
        } else if line.starts_with("switch B:") {
            learnt_b = learnt_b.max(learnt(line));
        }
    }
    ensure!(
        learnt_a > 0 && learnt_b > 0,
        "A learnt {learnt_a}, B learnt {learnt_b}:\n{out}"
    );
    // What A learnt: C's reply that landed on B, in A's kernel through its
    // own ARP path; and the VLAN 10 host's reply to B.
    ensure!(
        out.lines().any(|l| l.contains("A learnt from B: 10.77.0.3")
            && l.contains("kernel-arp")
            && l.contains("kernel REACHABLE")),
        "A must learn C's reply that landed on B:\n{out}"
    );
    ensure!(
        out.lines()
            .any(|l| l.contains("A learnt from B: 10.77.0.10") && l.contains("kernel-arp")),
        "the VLAN 10 reply to B reaches A:\n{out}"
    );
    ensure!(
        out.lines()
            .any(|l| l.contains("B learnt from A: 10.77.0.4")),
        "B must learn C's reply that landed on A:\n{out}"
    );
    ensure!(
        out.contains("config rollouts --center"),
        "no pointers to look yourself"
    );

    // Nothing left: namespaces are named after the lab's pid.
    let pid = lab_pid(&out).context("the lab printed no namespace names")?;
    let left = Command::new("ip").args(["netns", "list"]).output()?;
    let left = String::from_utf8_lossy(&left.stdout);
    ensure!(
        !left.contains(&format!("-{pid}-")),
        "namespaces of the lab left behind:\n{left}"
    );
    Ok(())
}

/// The pid part of the lab's namespace names (`mpa-PID-N`).
fn lab_pid(out: &str) -> Option<String> {
    let line = out.lines().find(|l| l.starts_with("namespaces: A "))?;
    let name = line.split_whitespace().nth(2)?;
    Some(name.split('-').nth(1)?.to_string())
}
