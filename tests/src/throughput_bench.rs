//! `cargo xtask bench` (or `mlag-bench throughput`): what the classifier
//! costs the traffic through a real port (issue 18, item 5). Switch-ASIC
//! ports get generic XDP, where every frame is an skb the kernel must make
//! linear and writable before the program sees it; driver mode is measured
//! beside it.
//!
//! Server C sends to switch A over a real veth (`c-a` -> `a-c`) with
//! `iperf3` (A runs the server): TCP (bulk, with the kernel's offloads) and
//! UDP with 64-byte payloads (per-packet cost: A's received packets per
//! second, the sender flooding). Three set-ups of A's member port, in
//! alternating rounds so that a change in the machine's load hits all
//! three alike: nothing attached, the pass-only program `mlag_pass`
//! attached, and A's agent running with the classifier attached in that
//! mode (as in production). The figure per set-up is the median of the
//! rounds; the goal is at most 5% throughput lost to the classifier, taken
//! against the bare port (the pass-only program's own cost is printed too).
//! Timings are printed, never asserted.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use sync_agent::dataplane::{AttachedMode, Classifier, config::EbpfLogLevel};

use crate::agent::Agent;
use crate::pair::{self, Pair};

/// Seconds each iperf3 run lasts.
const SECONDS: u32 = 3;
/// Rounds of the three set-ups per mode and protocol.
const ROUNDS: usize = 3;
/// Goal: at most this fraction of the bare port's throughput lost.
const GOAL_LOSS: f64 = 0.05;
const SERVER_PORT: &str = "5299";

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Bare,
    PassOnly,
    Classifier,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Bare, Setup::PassOnly, Setup::Classifier];

    fn name(self) -> &'static str {
        match self {
            Setup::Bare => "nothing attached",
            Setup::PassOnly => "pass-only program",
            Setup::Classifier => "classifier (agent)",
        }
    }
}

#[derive(Clone, Copy)]
enum Traffic {
    /// Received bits per second.
    Tcp,
    /// Received packets per second of 64-byte UDP payloads.
    SmallUdp,
}

/// The iperf3 server in A's namespace; killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What holds a set-up's program on A's port; dropping it detaches.
#[derive(Default)]
struct Attached {
    _pass_only: Option<Classifier>,
    _agent: Option<Agent>,
}

pub fn run() -> anyhow::Result<()> {
    let pair = Pair::new()?;
    pair.c.ip(&["addr", "add", "10.77.0.3/24", "dev", "c-a"])?;
    let _server = Server(
        pair.a
            .command(std::path::Path::new("iperf3"))
            .args(["-s", "-B", "10.77.0.1", "-p", SERVER_PORT])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 (cargo xtask setup installs it)")?,
    );
    crate::wait_until(
        Duration::from_secs(5),
        "iperf3 server listening in A",
        || -> Result<(), String> {
            let out = pair.a.exec("ss", &["-Hltn"]).map_err(|e| e.to_string())?;
            if out.contains(&format!("10.77.0.1:{SERVER_PORT}")) {
                Ok(())
            } else {
                Err(out)
            }
        },
    )?;
    println!();
    println!(
        "throughput through a real port, C -> A over veth with iperf3 ({SECONDS} s per run, median of {ROUNDS} alternating rounds; goal: classifier loses <= {:.0}%):",
        GOAL_LOSS * 100.0
    );
    for mode in [AttachedMode::Generic, AttachedMode::Driver] {
        for traffic in [Traffic::Tcp, Traffic::SmallUdp] {
            let mut figures: [Vec<f64>; 3] = Default::default();
            for _ in 0..ROUNDS {
                for (i, setup) in Setup::ALL.into_iter().enumerate() {
                    let attached = attach(&pair, setup, mode)?;
                    figures[i].push(measure(&pair, traffic)?);
                    drop(attached);
                    ensure_detached(&pair)?;
                }
            }
            report(mode, traffic, &mut figures);
        }
    }
    Ok(())
}

fn mode_name(mode: AttachedMode) -> &'static str {
    match mode {
        AttachedMode::Driver => "driver",
        AttachedMode::Generic => "generic",
    }
}

fn attach(pair: &Pair, setup: Setup, mode: AttachedMode) -> anyhow::Result<Attached> {
    let attached = match setup {
        Setup::Bare => Attached::default(),
        Setup::PassOnly => {
            let ifindex = pair.a.ifindex("a-c")?;
            let classifier = pair.a.run(|| {
                let (mut classifier, _ring, _log) = Classifier::load(EbpfLogLevel::Off)?;
                classifier.attach_pass_only("a-c", ifindex, mode)?;
                Ok(classifier)
            })?;
            Attached {
                _pass_only: Some(classifier),
                ..Attached::default()
            }
        }
        Setup::Classifier => {
            let config = pair.config_a("").replace(
                &format!("xdp_mode = \"{}\"", pair::xdp_mode()),
                &format!("xdp_mode = \"{}\"", mode_name(mode)),
            );
            Attached {
                _agent: Some(Agent::start(&pair.a, &config)?),
                ..Attached::default()
            }
        }
    };
    // What is on the port must be what the set-up says, in that mode.
    let link = pair.a.ip(&["-d", "link", "show", "dev", "a-c"])?;
    // `ip -d link` says `xdpgeneric` for generic mode and a bare `xdp`
    // for driver mode.
    let expected = match mode {
        AttachedMode::Generic => " xdpgeneric ",
        AttachedMode::Driver => " xdp ",
    };
    match setup {
        Setup::Bare if link.contains("prog/xdp") => {
            bail!("a-c has an XDP program before any is attached: {link}")
        }
        Setup::PassOnly | Setup::Classifier if !link.contains(expected) => {
            bail!(
                "{} not attached in {} mode on a-c: {link}",
                setup.name(),
                mode_name(mode)
            )
        }
        _ => {}
    }
    Ok(attached)
}

fn ensure_detached(pair: &Pair) -> anyhow::Result<()> {
    crate::wait_until(
        Duration::from_secs(5),
        "a-c without an XDP program",
        || -> Result<(), String> {
            let link = pair
                .a
                .ip(&["-d", "link", "show", "dev", "a-c"])
                .map_err(|e| e.to_string())?;
            if link.contains("prog/xdp") {
                Err(link)
            } else {
                Ok(())
            }
        },
    )
}

/// One iperf3 run from C: received bits/s (TCP) or received packets/s (UDP).
fn measure(pair: &Pair, traffic: Traffic) -> anyhow::Result<f64> {
    let seconds = SECONDS.to_string();
    let mut args = vec!["-c", "10.77.0.1", "-p", SERVER_PORT, "-t", &seconds, "-J"];
    if let Traffic::SmallUdp = traffic {
        args.extend(["-u", "-l", "64", "-b", "0"]);
    }
    let out = Command::new("ip")
        .args(["netns", "exec", pair.c.name(), "iperf3"])
        .args(&args)
        .output()
        .context("running iperf3 in C")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3's output: {}",
            String::from_utf8_lossy(&out.stdout)
                .chars()
                .take(400)
                .collect::<String>()
        )
    })?;
    if let Some(error) = json["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let received = &json["end"]["sum_received"];
    match traffic {
        Traffic::Tcp => received["bits_per_second"]
            .as_f64()
            .context("iperf3 gave no received bits_per_second"),
        Traffic::SmallUdp => {
            let packets = received["packets"].as_f64().context("no packets")?;
            let lost = received["lost_packets"]
                .as_f64()
                .context("no lost_packets")?;
            let seconds = received["seconds"].as_f64().context("no seconds")?;
            Ok((packets - lost) / seconds)
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(mode: AttachedMode, traffic: Traffic, figures: &mut [Vec<f64>; 3]) {
    let (what, scale, unit) = match traffic {
        Traffic::Tcp => ("TCP bulk", 1e9, "Gbit/s"),
        Traffic::SmallUdp => ("UDP 64-byte packets received", 1e3, "kpps"),
    };
    let medians: Vec<f64> = figures.iter_mut().map(|f| median(f)).collect();
    let line: Vec<String> = Setup::ALL
        .iter()
        .zip(&medians)
        .map(|(setup, m)| format!("{} {:.2} {unit}", setup.name(), m / scale))
        .collect();
    println!("  {} XDP, {what}: {}", mode_name(mode), line.join(", "));
    let loss = |m: f64, against: f64| 1.0 - m / against;
    let classifier_loss = loss(medians[2], medians[0]);
    println!(
        "    lost to the classifier {:.1}% of the bare port (any program, the pass-only one: {:.1}%; the classifier beyond the pass-only program: {:.1}%); goal <= {:.0}%: {}",
        classifier_loss * 100.0,
        loss(medians[1], medians[0]) * 100.0,
        loss(medians[2], medians[1]) * 100.0,
        GOAL_LOSS * 100.0,
        if classifier_loss <= GOAL_LOSS {
            "met"
        } else {
            "NOT MET"
        }
    );
}
