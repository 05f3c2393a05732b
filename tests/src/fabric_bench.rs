//! SPEC 4 benchmark: 1,000 simulated members that really heartbeat against
//! the embedded broker of two real server agents (primary and backup) in
//! namespaces. It reports the servers' CPU and memory (broker threads and
//! the rest of the agent apart), heartbeat -> roster latency, config change
//! -> applied on all members, broker throughput (embedded rumqttd vs
//! mosquitto, same load, same run) and the takeover time after SIGKILL of
//! the primary.
//!
//! Simulated members share this process but use the agent's own link (with
//! failover), codec (`Codec::seal`/`open`: the library's encode and seal
//! path, so they follow whatever the envelope becomes) and config store,
//! over real brokers and a real bridge. Each subscribes to what a member at
//! this scale needs: config changes, the retained setting records and its
//! own roster record (how it measures its heartbeat -> roster latency).

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sync_agent::fabric::{
    identity::{Identity, Roster},
    link::{self, Endpoint, LinkEvent, LinkSettings},
    seal::{Codec, Opening},
    state::{ConfigStore, Outcome},
    wire::{ConfigAck, ConfigChange, Fault, Heartbeat, Message, Role, Topics, roster_bucket},
};
use tokio::sync::mpsc;

use crate::{
    agent::Agent,
    fabric::{FabricLab, HUB_IP, show, switch_ip},
    wait_until,
};

const MEMBERS: usize = 1000;
const ROUNDS: usize = 20;
const THROUGHPUT_MESSAGES: usize = 20_000;
const PUBLISHERS: usize = 4;
/// Simulated members' heartbeat interval (the default of `[fabric]`).
const HEARTBEAT: Duration = Duration::from_millis(1000);
/// Goals of issue 14.
const GOAL_APPLIED_P99: Duration = Duration::from_millis(200);
const GOAL_SERVER_RSS_MIB: f64 = 100.0;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

enum Note {
    /// A member applied a change: `received` is when its task took the
    /// delivery from its link, `at` when the change was applied.
    Applied {
        key: String,
        received: Instant,
        at: Instant,
    },
    Connected {
        index: usize,
        at: Instant,
    },
    Rostered {
        after_first_heartbeat: Duration,
    },
}

/// The simulated members' CPU time in the codec, summed over all of them:
/// where a config round's time goes on the members' side (opening is the
/// AEAD, the sender's Ed25519 signature, the body and the replay window;
/// sealing is the encoding and our own signature).
struct CodecWork {
    open_ns: AtomicU64,
    opened: AtomicU64,
    needless: AtomicU64,
    seal_ns: AtomicU64,
    sealed: AtomicU64,
}

static CODEC_WORK: CodecWork = CodecWork {
    open_ns: AtomicU64::new(0),
    opened: AtomicU64::new(0),
    needless: AtomicU64::new(0),
    seal_ns: AtomicU64::new(0),
    sealed: AtomicU64::new(0),
};

impl CodecWork {
    /// (open CPU, opens, seal CPU, seals, dropped unverified) so far.
    fn snapshot(&self) -> (Duration, u64, Duration, u64, u64) {
        (
            Duration::from_nanos(self.open_ns.load(Ordering::Relaxed)),
            self.opened.load(Ordering::Relaxed),
            Duration::from_nanos(self.seal_ns.load(Ordering::Relaxed)),
            self.sealed.load(Ordering::Relaxed),
            self.needless.load(Ordering::Relaxed),
        )
    }
}

/// CPU time of the calling thread: the members share two worker threads
/// with everything else in this process, and the machine with the servers,
/// so wall time over a call would count whoever preempted it.
fn thread_cpu_ns() -> u64 {
    crate::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Opens as the agent does: a setting record that repeats what the member
/// holds is dropped before its signature is checked (`needless` counts
/// those, their CPU time stays in `open_ns`).
fn timed_open(
    codec: &mut Codec,
    payload: &[u8],
    retained: bool,
    store: &ConfigStore,
) -> Option<sync_agent::fabric::seal::Opened> {
    let start = thread_cpu_ns();
    let opening = codec.open_unless(
        payload,
        retained,
        |message| matches!(message, Message::Setting(record) if !store.would_apply(&record.change)),
    );
    CODEC_WORK
        .open_ns
        .fetch_add(thread_cpu_ns() - start, Ordering::Relaxed);
    match opening {
        Ok(Opening::Opened(opened)) => {
            CODEC_WORK.opened.fetch_add(1, Ordering::Relaxed);
            Some(opened)
        }
        Ok(Opening::Needless) => {
            CODEC_WORK.needless.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(_) => {
            CODEC_WORK.opened.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn timed_seal(codec: &mut Codec, message: &Message) -> Vec<u8> {
    let start = thread_cpu_ns();
    let sealed = codec.seal(message);
    CODEC_WORK
        .seal_ns
        .fetch_add(thread_cpu_ns() - start, Ordering::Relaxed);
    CODEC_WORK.sealed.fetch_add(1, Ordering::Relaxed);
    sealed
}

fn sim_heartbeat(identity: &str, uptime: Duration) -> Message {
    Message::Heartbeat(Heartbeat {
        member: identity.to_string(),
        role: Role::Client,
        model: "sim".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        servers: vec![],
        addresses: vec![],
        uptime_s: uptime.as_secs(),
        interval_ms: HEARTBEAT.as_millis() as u64,
        ports: None,
    })
}

/// Names of the simulated members, the change's origin and the throughput
/// publisher: the lab puts them in every switch's roster.
fn bench_names() -> Vec<String> {
    (0..MEMBERS)
        .map(|n| format!("sim{n:03}"))
        .chain(["origin".to_string(), "bench".to_string()])
        .collect()
}

fn fault_message() -> Message {
    Message::Fault(Fault {
        member: "bench".into(),
        boot: 1,
        seq: 1,
        port: "Ethernet48".into(),
        kind: "port-down".into(),
        at_ms: 1,
    })
}

async fn simulated_member(
    me: Identity,
    roster: Roster,
    endpoints: Vec<Endpoint>,
    notes: mpsc::UnboundedSender<Note>,
) {
    let identity = me.name().to_string();
    let topics = Topics::new("mlag-sync");
    let mut codec = Codec::new(me, roster, None);
    let mut store = ConfigStore::default();
    let own_record = topics.roster_topic(roster_bucket(&identity));
    let departed = Message::Departed {
        member: identity.clone(),
        reason: "connection lost (last will)".into(),
    };
    let will = (topics.topic_for(&departed).0, codec.seal_will(&departed));
    let mut link = link::spawn(LinkSettings {
        client_id: identity.clone(),
        endpoints,
        tls_ca: None,
        tls_client: None,
        will: Some(will),
        failover_after: Duration::from_millis(1500),
        probe_every: Duration::from_secs(3600),
        subscriptions: vec![
            "mlag-sync/DEV_CONF_MSG/change/#".into(),
            topics.setting_topic("#"),
            own_record.clone(),
        ],
    });
    let started = Instant::now();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connected = false;
    let mut first_heartbeat: Option<Instant> = None;
    let mut rostered = false;
    loop {
        tokio::select! {
            event = link.events.recv() => {
                let Some(event) = event else { return };
                match event {
                    LinkEvent::Connected { index } => {
                        connected = true;
                        let _ = notes.send(Note::Connected { index, at: Instant::now() });
                    }
                    LinkEvent::Disconnected { .. } => connected = false,
                    LinkEvent::Publish { topic, payload, retained } => {
                        if payload.is_empty() {
                            continue;
                        }
                        let received = Instant::now();
                        let Some(opened) = timed_open(&mut codec, &payload, retained, &store) else {
                            continue;
                        };
                        match opened.message {
                            Message::Roster(record) if topic == own_record => {
                                if !rostered
                                    && record.entries.iter().any(|e| e.heartbeat.member == identity)
                                    && let Some(first) = first_heartbeat
                                {
                                    rostered = true;
                                    let _ = notes.send(Note::Rostered {
                                        after_first_heartbeat: first.elapsed(),
                                    });
                                }
                            }
                            Message::Setting(record) => {
                                store.apply(&record.change);
                            }
                            Message::Change(change) => {
                                let outcome = store.apply(&change);
                                if outcome == Outcome::Applied {
                                    let _ = notes.send(Note::Applied {
                                        key: change.key.clone(),
                                        received,
                                        at: Instant::now(),
                                    });
                                }
                                let ack = Message::Ack(ConfigAck {
                                    member: identity.clone(),
                                    origin: change.origin,
                                    seq: change.seq,
                                    outcome: outcome.ack_text(),
                                });
                                let (topic, _) = topics.topic_for(&ack);
                                let _ = link.client.try_publish(
                                    topic,
                                    QoS::AtLeastOnce,
                                    false,
                                    timed_seal(&mut codec, &ack),
                                );
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if connected {
                    let hb = sim_heartbeat(&identity, started.elapsed());
                    let (topic, _) = topics.topic_for(&hb);
                    if link
                        .client
                        .try_publish(topic, QoS::AtMostOnce, false, timed_seal(&mut codec, &hb))
                        .is_ok()
                    {
                        first_heartbeat.get_or_insert_with(Instant::now);
                    }
                }
            }
        }
    }
}

/// CPU time and memory of one process, the broker's threads apart.
#[derive(Clone, Copy, Default)]
struct Usage {
    broker_cpu: Duration,
    agent_cpu: Duration,
    rss_kib: u64,
    peak_rss_kib: u64,
}

/// Threads of the embedded broker (rumqttd's router, its server thread
/// named after the listener, its timer, and our supervisor).
fn is_broker_thread(comm: &str) -> bool {
    comm.starts_with("router-")
        || comm.starts_with("fabric-")
        || comm == "timer"
        || comm == "mqtt-broker"
}

fn usage(pid: u32) -> Usage {
    let mut out = Usage::default();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Some((comm, cpu)) = cpu_of(&task.path().join("stat")) else {
                continue;
            };
            if is_broker_thread(&comm) {
                out.broker_cpu += cpu;
            } else {
                out.agent_cpu += cpu;
            }
        }
    }
    let (rss, peak) = memory_kib(pid);
    out.rss_kib = rss;
    out.peak_rss_kib = peak;
    // A broker the agent runs as a child process (`broker = "mosquitto"`)
    // is the server's too: its CPU counts as the broker's, its memory adds.
    for child in children(pid) {
        let stat = std::path::PathBuf::from(format!("/proc/{child}/stat"));
        out.broker_cpu += cpu_of(&stat).map_or(Duration::ZERO, |(_, cpu)| cpu);
        let (rss, peak) = memory_kib(child);
        out.rss_kib += rss;
        out.peak_rss_kib += peak;
    }
    out
}

/// Resident and peak resident memory of process `pid`, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0, 0);
    };
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// The child processes of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The name and the user + system CPU time in a `/proc/…/stat` file (of a
/// thread, or of a whole process).
fn cpu_of(stat: &std::path::Path) -> Option<(String, Duration)> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let stat = std::fs::read_to_string(stat).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Some((comm, Duration::from_micros(ticks * 1_000_000 / hz)))
}

/// This process's user + system CPU time (the simulated members and the
/// bench's own clients).
fn own_cpu() -> Duration {
    cpu_of(std::path::Path::new("/proc/self/stat")).map_or(Duration::ZERO, |(_, cpu)| cpu)
}

fn print_usage(name: &str, before: Usage, after: Usage, window: Duration) {
    let pct = |a: Duration, b: Duration| {
        (a.saturating_sub(b)).as_secs_f64() / window.as_secs_f64() * 100.0
    };
    let rss = after.rss_kib as f64 / 1024.0;
    println!(
        "  {name}: CPU broker {:.1}%, rest of the agent {:.1}% (of one core, over {:.0} s); resident {rss:.1} MiB (peak {:.1} MiB; goal < {GOAL_SERVER_RSS_MIB:.0} MiB: {:.2} of the goal)",
        pct(after.broker_cpu, before.broker_cpu),
        pct(after.agent_cpu, before.agent_cpu),
        window.as_secs_f64(),
        after.peak_rss_kib as f64 / 1024.0,
        after.peak_rss_kib as f64 / 1024.0 / GOAL_SERVER_RSS_MIB,
    );
}

/// Messages per second through `host:port`: PUBLISHERS clients publish QoS 1
/// sealed-size fault messages, one subscriber counts them.
async fn throughput(host: &str, port: u16, bench: Identity) -> anyhow::Result<f64> {
    let topic = "bench/DEV_FAULT_MSG/load";
    let mut options = MqttOptions::new(format!("bench-sub-{port}"), host, port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_inflight(200);
    let (sub, mut sub_loop) = AsyncClient::new(options, 1000);
    sub.subscribe(topic, QoS::AtLeastOnce).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let counter = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut got = 0usize;
        let mut first = None;
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    first.get_or_insert_with(Instant::now);
                    got += 1;
                    if got == THROUGHPUT_MESSAGES {
                        return Ok::<_, anyhow::Error>(Instant::now());
                    }
                }
                Ok(_) => {}
                Err(e) => anyhow::bail!("subscriber: {e}"),
            }
        }
    });
    ready_rx.await?;
    let mut codec = Codec::new(bench, Roster::default(), None);
    let payload = codec.seal(&fault_message());
    let start = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut options = MqttOptions::new(format!("bench-pub-{port}-{p}"), host, port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_inflight(200);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let payload = payload.clone();
        publishers.push(tokio::spawn(async move {
            let sender = tokio::spawn(async move {
                for _ in 0..THROUGHPUT_MESSAGES / PUBLISHERS {
                    client
                        .publish(topic, QoS::AtLeastOnce, false, payload.clone())
                        .await?;
                }
                Ok::<_, anyhow::Error>(())
            });
            let mut acked = 0;
            while acked < THROUGHPUT_MESSAGES / PUBLISHERS {
                if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                    acked += 1;
                }
            }
            sender.await??;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for p in publishers {
        p.await??;
    }
    let done = tokio::time::timeout(Duration::from_secs(120), counter).await???;
    Ok(THROUGHPUT_MESSAGES as f64 / done.duration_since(start).as_secs_f64())
}

/// The lab's agent config for switch `n` at this scale: members heartbeat
/// every second (the default) and are declared departed after 5 s, so a
/// busy bench machine does not churn the roster; failover and takeover as
/// in the namespace tests.
fn server_config(lab: &FabricLab, n: usize, broker: &str) -> String {
    lab.config(n, &format!("broker = \"{broker}\"\n"))
        .replace(
            "heartbeat_interval_ms = 300",
            "heartbeat_interval_ms = 1000",
        )
        .replace("dead_after_ms = 1500", "dead_after_ms = 5000")
}

/// Runs the whole fabric benchmark with the servers hosting `broker`
/// (`embedded`: rumqttd in the agent; `mosquitto`: a mosquitto child of
/// the agent, whose CPU and memory count as the server's) and prints its
/// figures.
pub fn run(broker: &str) -> anyhow::Result<()> {
    println!();
    println!(
        "fabric sync over MQTT (SPEC 4), {MEMBERS} simulated members heartbeating every {} ms, servers' broker: {broker}:",
        HEARTBEAT.as_millis()
    );
    let names = bench_names();
    let lab = FabricLab::with_extra_members(2, &names)?;
    let mut agents = vec![
        Agent::start(&lab.nodes[0], &server_config(&lab, 0, broker))?,
        Agent::start(&lab.nodes[1], &server_config(&lab, 1, broker))?,
    ];
    wait_until(Duration::from_secs(30), "primary active", || {
        let f = show(&agents[0]).map_err(|e| e.to_string())?;
        if f["active"] == true {
            Ok(())
        } else {
            Err(f["active"].to_string())
        }
    })?;
    let pids = [
        agents[0].pid().context("primary running")?,
        agents[1].pid().context("backup running")?,
    ];
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener 1883 {HUB_IP}\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
        ),
    )?;
    let mut mosquitto = Command::new("ip")
        .args(["netns", "exec", lab.hub.name(), "mosquitto", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = lab.hub.run(|| {
        // Worker threads start here, so they and their sockets live in the hub
        // namespace, and keep running while the main thread watches the agents.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(async {
            let endpoints: Vec<Endpoint> = [0, 1].map(|n| Endpoint { host: switch_ip(n), port: 1883 }).to_vec();
            let (notes_tx, mut notes) = mpsc::unbounded_channel();
            let roster = lab.roster();
            let id = |name: &str| lab.identity(name);
            let spawned = Instant::now();
            for name in &names[..MEMBERS] {
                tokio::spawn(simulated_member(id(name), roster.clone(), endpoints.clone(), notes_tx.clone()));
            }
            // Every member connected, then every member in the roster (its
            // own retained record back from the active server).
            let mut connected = 0;
            let mut rostered = Vec::new();
            while rostered.len() < MEMBERS {
                match tokio::time::timeout(Duration::from_secs(60), notes.recv()).await {
                    Ok(Some(Note::Connected { .. })) => {
                        connected += 1;
                        if connected == MEMBERS {
                            println!("  all {MEMBERS} members connected {:.0} ms after start", ms(spawned.elapsed()));
                        }
                    }
                    Ok(Some(Note::Rostered { after_first_heartbeat })) => rostered.push(after_first_heartbeat),
                    Ok(Some(_)) => {}
                    Ok(None) => anyhow::bail!("members stopped"),
                    Err(_) => anyhow::bail!("only {} of {MEMBERS} members rostered after 60 s ({connected} connected)", rostered.len()),
                }
            }
            rostered.sort();
            println!(
                "  heartbeat -> roster (first heartbeat until the member's retained roster record arrives back): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(percentile(&rostered, 0.5)),
                ms(percentile(&rostered, 0.99)),
                ms(percentile(&rostered, 1.0)),
            );

            // Steady state: every member heartbeating, nothing else. The
            // embedded broker's heartbeat log keeps growing until it holds
            // its 4 x 4 MiB (about a minute at 1,000 members), so a longer
            // window (MLAG_BENCH_FABRIC_STEADY_S) shows where the resident
            // memory settles.
            let window = Duration::from_secs(
                std::env::var("MLAG_BENCH_FABRIC_STEADY_S")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(10),
            );
            let before = pids.map(usage);
            tokio::time::sleep(window).await;
            let after = pids.map(usage);
            print_usage("primary server (hosts the active broker)", before[0], after[0], window);
            print_usage("backup server (its broker idle, a member of the primary's)", before[1], after[1], window);

            // Change -> applied on all members, published by one member.
            let topics = Topics::new("mlag-sync");
            let mut origin = Codec::new(id("origin"), roster.clone(), None);
            let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("origin", switch_ip(0), 1883), 100);
            tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let mut last_applied = Vec::new();
            let mut last_received = Vec::new();
            let mut all_applied = Vec::new();
            let before = pids.map(usage);
            let bench_before = own_cpu();
            let work_before = CODEC_WORK.snapshot();
            let rounds_started = Instant::now();
            for round in 0..ROUNDS {
                let key = format!("site.bench{round}");
                let change = Message::Change(ConfigChange {
                    origin: "origin".into(),
                    seq: round as u64 + 1,
                    key: key.clone(),
                    value: "x".into(),
                    at_ms: sync_agent::clock::now_ms(),
                });
                let (topic, _) = topics.topic_for(&change);
                let start = Instant::now();
                client.publish(topic, QoS::AtLeastOnce, false, origin.seal(&change)).await?;
                let mut applied = 0;
                let mut latest_received = Duration::ZERO;
                while applied < MEMBERS {
                    match tokio::time::timeout(Duration::from_secs(10), notes.recv()).await {
                        Ok(Some(Note::Applied { key: k, received, at })) if k == key => {
                            applied += 1;
                            all_applied.push(at.duration_since(start));
                            latest_received = latest_received.max(received.duration_since(start));
                            if applied == MEMBERS {
                                last_applied.push(at.duration_since(start));
                                last_received.push(latest_received);
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => anyhow::bail!("members stopped"),
                        Err(_) => anyhow::bail!("round {round}: only {applied} of {MEMBERS} applied after 10 s"),
                    }
                }
                // Let the acknowledgements drain before the next change.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let after = pids.map(usage);
            let bench_cpu = own_cpu().saturating_sub(bench_before);
            let work_after = CODEC_WORK.snapshot();
            last_applied.sort();
            last_received.sort();
            all_applied.sort();
            let p99_all = percentile(&last_applied, 0.99);
            println!(
                "  config change -> applied on all {MEMBERS} members ({ROUNDS} rounds): p50 {:.1} ms, p99 {:.1} ms (goal < {} ms: {:.2} of the goal); per member p50 {:.1} ms, p99 {:.1} ms",
                ms(percentile(&last_applied, 0.5)),
                ms(p99_all),
                GOAL_APPLIED_P99.as_millis(),
                ms(p99_all) / ms(GOAL_APPLIED_P99),
                ms(percentile(&all_applied, 0.5)),
                ms(percentile(&all_applied, 0.99)),
            );
            let window = rounds_started.elapsed();
            print_usage("primary server during the config rounds", before[0], after[0], window);
            // Where a round's time goes: the last member to take the change
            // from its link, and the CPU the rounds cost (they include one
            // second's heartbeats per ~0.4 s round).
            let per_round = |d: Duration| ms(d) / ROUNDS as f64;
            println!(
                "  where a round goes: change published -> the last member takes it from its link p50 {:.1} ms, p99 {:.1} ms; CPU per round (over {:.0} ms): members (this process) {:.1} ms, of which opening {:.1} ms ({} opened and {} setting records that repeat a held change dropped before their signature check, {:.1} us each on average) and sealing {:.1} ms ({} sealed, {:.1} us each); primary broker {:.1} ms, primary agent {:.1} ms, backup agent {:.1} ms",
                ms(percentile(&last_received, 0.5)),
                ms(percentile(&last_received, 0.99)),
                ms(window) / ROUNDS as f64,
                per_round(bench_cpu),
                per_round(work_after.0 - work_before.0),
                work_after.1 - work_before.1,
                work_after.4 - work_before.4,
                (work_after.0 - work_before.0).as_secs_f64() * 1e6
                    / (work_after.1 - work_before.1 + work_after.4 - work_before.4).max(1) as f64,
                per_round(work_after.2 - work_before.2),
                work_after.3 - work_before.3,
                (work_after.2 - work_before.2).as_secs_f64() * 1e6 / (work_after.3 - work_before.3).max(1) as f64,
                per_round(after[0].broker_cpu.saturating_sub(before[0].broker_cpu)),
                per_round(after[0].agent_cpu.saturating_sub(before[0].agent_cpu)),
                per_round(after[1].agent_cpu.saturating_sub(before[1].agent_cpu)),
            );

            let embedded = throughput(&switch_ip(0), 1883, id("bench")).await?;
            let external = throughput(HUB_IP, 1883, id("bench")).await?;
            println!(
                "  broker throughput, {PUBLISHERS} publishers -> 1 subscriber, {THROUGHPUT_MESSAGES} QoS 1 messages of {} bytes, alongside the {MEMBERS} members' heartbeats on the server's: the server's ({broker}) {embedded:.0} msg/s, a separate mosquitto {external:.0} msg/s (server's/separate {:.2}x)",
                Codec::new(id("bench"), Roster::default(), None).seal(&fault_message()).len(),
                embedded / external
            );
            Ok::<_, anyhow::Error>(notes)
        })
        .map(|notes| (runtime, notes))
    });
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    let (runtime, mut notes) = result?;
    let end = pids.map(usage);
    println!(
        "  servers' resident memory at the end: primary {:.1} MiB (peak {:.1}), backup {:.1} MiB (peak {:.1}); goal < {GOAL_SERVER_RSS_MIB:.0} MiB: worst peak {:.2} of the goal",
        end[0].rss_kib as f64 / 1024.0,
        end[0].peak_rss_kib as f64 / 1024.0,
        end[1].rss_kib as f64 / 1024.0,
        end[1].peak_rss_kib as f64 / 1024.0,
        end[0].peak_rss_kib.max(end[1].peak_rss_kib) as f64 / 1024.0 / GOAL_SERVER_RSS_MIB,
    );

    // Backup takeover: SIGKILL the primary.
    let killed = Instant::now();
    // SAFETY: signalling a pid has no memory-safety preconditions.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let _ = agents[0].wait_exit(Duration::from_secs(5));
    let active = wait_until(Duration::from_secs(30), "backup active", || {
        let f = show(&agents[1]).map_err(|e| e.to_string())?;
        if f["active"] == true {
            Ok(killed.elapsed())
        } else {
            Err(f["active"].to_string())
        }
    })?;
    let moved = lab.hub.run(|| {
        runtime.block_on(async {
            let mut moved = 0;
            let mut last = Duration::ZERO;
            while moved < MEMBERS {
                match tokio::time::timeout(Duration::from_secs(30), notes.recv()).await {
                    Ok(Some(Note::Connected { index: 1, at, .. })) => {
                        moved += 1;
                        last = at.duration_since(killed);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => anyhow::bail!("members stopped"),
                    Err(_) => {
                        anyhow::bail!("only {moved} of {MEMBERS} members on the backup after 30 s")
                    }
                }
            }
            Ok(last)
        })
    })?;
    println!(
        "  backup takeover after SIGKILL of the primary (failover_after/takeover_after 1500 ms): backup announcing after {:.0} ms, all {MEMBERS} members on the backup after {:.0} ms",
        ms(active),
        ms(moved)
    );
    let backup = usage(pids[1]);
    println!(
        "  backup after taking over: resident {:.1} MiB (peak {:.1} MiB)",
        backup.rss_kib as f64 / 1024.0,
        backup.peak_rss_kib as f64 / 1024.0
    );
    drop(runtime);
    agents.clear();
    Ok(())
}
