//! SPEC 4 benchmark: config change to application on 100 members, broker
//! throughput (embedded rumqttd vs mosquitto, same load, same run), and the
//! backup's takeover time. Simulated members share this process but use the
//! agent's own link (with failover), codec and config store, over real
//! brokers and a real bridge.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sync_agent::fabric::{
    identity::{Identity, Roster},
    link::{self, Endpoint, LinkEvent, LinkSettings},
    seal::Codec,
    state::{ConfigStore, Outcome},
    wire::{ConfigAck, ConfigChange, Fault, Message, Topics},
};
use tokio::sync::mpsc;

use crate::{
    fabric::{FabricLab, HUB_IP, show, switch_ip},
    wait_until,
};

const MEMBERS: usize = 100;
const ROUNDS: usize = 10;
const THROUGHPUT_MESSAGES: usize = 20_000;
const PUBLISHERS: usize = 4;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

enum Note {
    Applied { key: String, at: Instant },
    Connected { index: usize, at: Instant },
}

/// Key pairs for the simulated members, the change's origin and the
/// throughput publisher, and the roster naming them.
fn bench_identities() -> (Vec<Identity>, Roster) {
    let ids: Vec<Identity> = (0..MEMBERS)
        .map(|n| format!("sim{n:03}"))
        .chain(["origin".to_string(), "bench".to_string()])
        .map(|name| Identity::generate(&name))
        .collect();
    let roster = Roster::generated(&ids, &[]);
    (ids, roster)
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
    let mut link = link::spawn(LinkSettings {
        client_id: identity.clone(),
        endpoints,
        tls_ca: None,
        will: None,
        failover_after: Duration::from_millis(1500),
        probe_every: Duration::from_secs(3600),
        subscriptions: vec!["mlag-sync/DEV_CONF_MSG/#".into()],
    });
    while let Some(event) = link.events.recv().await {
        match event {
            LinkEvent::Connected { index } => {
                let _ = notes.send(Note::Connected {
                    index,
                    at: Instant::now(),
                });
            }
            LinkEvent::Publish {
                payload, retained, ..
            } => {
                let Ok(opened) = codec.open(&payload, retained) else {
                    continue;
                };
                if let Message::Change(change) = opened.message {
                    let outcome = store.apply(&change);
                    if outcome == Outcome::Applied {
                        let _ = notes.send(Note::Applied {
                            key: change.key.clone(),
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
                    let _ =
                        link.client
                            .try_publish(topic, QoS::AtLeastOnce, false, codec.seal(&ack));
                }
            }
            LinkEvent::Disconnected { .. } => {}
        }
    }
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

/// Runs the whole fabric benchmark and prints its figures.
pub fn run() -> anyhow::Result<()> {
    println!();
    println!("fabric sync over MQTT (SPEC 4):");
    let lab = FabricLab::new(2)?;
    let mut agents = vec![lab.start(0, "")?, lab.start(1, "")?];
    wait_until(Duration::from_secs(20), "primary active", || {
        let f = show(&agents[0]).map_err(|e| e.to_string())?;
        if f["active"] == true {
            Ok(())
        } else {
            Err(f["active"].to_string())
        }
    })?;
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
            let (ids, roster) = bench_identities();
            let id = |name: &str| ids.iter().find(|i| i.name() == name).cloned().expect("bench identity");
            for me in &ids[..MEMBERS] {
                tokio::spawn(simulated_member(me.clone(), roster.clone(), endpoints.clone(), notes_tx.clone()));
            }
            let mut connected = 0;
            while connected < MEMBERS {
                if let Some(Note::Connected { .. }) = notes.recv().await {
                    connected += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;

            // Change -> applied on all members, published by one member.
            let topics = Topics::new("mlag-sync");
            let mut origin = Codec::new(id("origin"), roster.clone(), None);
            let (client, mut eventloop) = AsyncClient::new(MqttOptions::new("origin", switch_ip(0), 1883), 100);
            tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
            let mut last_applied = Vec::new();
            let mut all_applied = Vec::new();
            for round in 0..ROUNDS {
                let key = format!("site.bench{round}");
                let change = Message::Change(ConfigChange {
                    origin: "origin".into(),
                    seq: round as u64 + 1,
                    key: key.clone(),
                    value: "x".into(),
                    at_ms: 1 + round as u64,
                });
                let (topic, _) = topics.topic_for(&change);
                let start = Instant::now();
                client.publish(topic, QoS::AtLeastOnce, false, origin.seal(&change)).await?;
                let mut applied = 0;
                while applied < MEMBERS {
                    match tokio::time::timeout(Duration::from_secs(10), notes.recv()).await? {
                        Some(Note::Applied { key: k, at, .. }) if k == key => {
                            applied += 1;
                            all_applied.push(at.duration_since(start));
                            if applied == MEMBERS {
                                last_applied.push(at.duration_since(start));
                            }
                        }
                        _ => {}
                    }
                }
            }
            last_applied.sort();
            all_applied.sort();
            println!(
                "  config change -> applied on {MEMBERS} members ({ROUNDS} rounds): last member p50 {:.1} ms, max {:.1} ms; per member p50 {:.1} ms, p99 {:.1} ms",
                percentile(&last_applied, 0.5).as_secs_f64() * 1e3,
                percentile(&last_applied, 1.0).as_secs_f64() * 1e3,
                percentile(&all_applied, 0.5).as_secs_f64() * 1e3,
                percentile(&all_applied, 0.99).as_secs_f64() * 1e3,
            );

            let embedded = throughput(&switch_ip(0), 1883, id("bench")).await?;
            let external = throughput(HUB_IP, 1883, id("bench")).await?;
            println!(
                "  broker throughput, {PUBLISHERS} publishers -> 1 subscriber, {THROUGHPUT_MESSAGES} QoS 1 messages of {} bytes: embedded rumqttd {embedded:.0} msg/s, mosquitto {external:.0} msg/s (embedded/mosquitto {:.2}x)",
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

    // Backup takeover: SIGKILL the primary.
    let killed = Instant::now();
    // SAFETY: signalling a pid has no memory-safety preconditions.
    unsafe { libc::kill(agents[0].pid().expect("running") as i32, libc::SIGKILL) };
    let _ = agents[0].wait_exit(Duration::from_secs(5));
    let active = wait_until(Duration::from_secs(20), "backup active", || {
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
                match tokio::time::timeout(Duration::from_secs(20), notes.recv()).await? {
                    Some(Note::Connected { index: 1, at, .. }) => {
                        moved += 1;
                        last = at.duration_since(killed);
                    }
                    Some(_) => {}
                    None => anyhow::bail!("members stopped"),
                }
            }
            Ok(last)
        })
    })?;
    println!(
        "  backup takeover after SIGKILL of the primary (failover_after/takeover_after 1500 ms): backup announcing after {:.0} ms, all {MEMBERS} members on the backup after {:.0} ms",
        active.as_secs_f64() * 1e3,
        moved.as_secs_f64() * 1e3
    );
    drop(runtime);
    agents.clear();
    Ok(())
}
