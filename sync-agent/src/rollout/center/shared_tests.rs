//! Several centers on one etcd (a real single-member etcd from the Debian
//! package, see [`super::storage::etcd_backend::tests::Etcd`]): changes
//! made through one answer the long polls held by another, and the rollout
//! engine's timed work moves to another center when its center stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::storage::etcd_backend::tests::Etcd;
use super::{Center, CenterConfig, RolloutOptions, StoreKind};
use crate::rollout::wire::{
    Ack, ConfigKey, Format, PutConfig, Register, RolloutState, ServiceRegistration, md5_hex,
};

fn shared(etcd: &Etcd, pace_ms: u64) -> CenterConfig {
    CenterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        db_path: "/nonexistent/unused.redb".into(),
        store: StoreKind::Etcd,
        etcd_endpoints: vec![etcd.url.clone()],
        etcd_prefix: Some("/shared/".into()),
        etcd_lease_ttl_s: 3,
        batch_size: 1,
        pace_ms,
        ..Default::default()
    }
}

fn open(config: &CenterConfig) -> Arc<Center> {
    let center = Center::open(config).unwrap();
    center.start();
    center
}

fn put(content: &str) -> PutConfig {
    PutConfig {
        format: Format::Text,
        content: content.into(),
        description: String::new(),
        author: "alice".into(),
    }
}

fn registration(key: &ConfigKey) -> Register {
    Register {
        services: vec![ServiceRegistration {
            name: "s".into(),
            config: key.clone(),
            depends_on: vec![],
        }],
        ..Default::default()
    }
}

/// Waits (up to 10 s) for `what` to hold, polling every 20 ms.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_one_center_answers_a_long_poll_held_by_another() {
    let etcd = Etcd::start();
    let config = shared(&etcd, 0);
    let one = open(&config);
    let two = open(&config);
    let key: ConfigKey = "n/g/k".parse().unwrap();
    one.put(key.clone(), put("one"), RolloutOptions::default())
        .await
        .unwrap();
    one.register("d1".into(), registration(&key)).await.unwrap();
    // Center two learns of the device from the store (a poll before that
    // would be told to register).
    until("center two knows d1", async || {
        two.devices().await.is_ok_and(|d| d.len() == 1)
    })
    .await;
    let have = HashMap::from([("s".to_string(), md5_hex("one"))]);
    let poll = {
        let two = two.clone();
        tokio::spawn(async move { two.watch("d1", &have, Duration::from_secs(30)).await })
    };
    until("the poll is held by center two", async || {
        two.waiting_polls() == 1
    })
    .await;
    assert!(
        !poll.is_finished(),
        "nothing new for d1 yet: the poll waits"
    );
    // Center two announces the release for the fabric push too.
    let mut releases = two.subscribe_releases();
    let started = Instant::now();
    let record = one
        .put(key.clone(), put("two"), RolloutOptions::default())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poll held by center two was answered")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(got.len(), 1, "answered by the change, not by its timeout");
    assert_eq!((got[0].version, &got[0].md5), (2, &record.md5));
    assert_eq!(record.version, 2);
    eprintln!("put through center one -> poll on center two answered in {took:?}");
    let announced = tokio::time::timeout(Duration::from_secs(10), releases.recv())
        .await
        .expect("center two announced the release")
        .unwrap();
    assert_eq!(
        (announced.key.as_str(), announced.version, &announced.md5),
        ("n/g/k", 2, &record.md5)
    );

    // The other way round, an ack through center two moves the rollout
    // both centers show.
    let ack = Ack {
        rollout_id: got[0].rollout_id,
        service: "s".into(),
        version: 2,
        ok: true,
        reason: String::new(),
    };
    two.ack("d1", &ack).await.unwrap();
    until("center one shows the rollout done", async || {
        one.rollout(ack.rollout_id)
            .await
            .is_ok_and(|r| r.state == RolloutState::Done)
    })
    .await;
}

/// The center running the engine stops in the middle of a paced rollout
/// (its pace timer running): the other takes the engine over and releases
/// the remaining batches, in order, none before its pace, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_center_takes_over_a_paced_rollout_when_the_engines_center_stops() {
    const PACE_MS: u64 = 1500;
    let etcd = Etcd::start();
    let config = shared(&etcd, PACE_MS);
    let one = open(&config);
    until("center one runs the engine", async || one.runs_engine()).await;
    let two = open(&config);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!two.runs_engine(), "one engine at a time");
    let key: ConfigKey = "n/g/k".parse().unwrap();
    for d in ["d1", "d2", "d3"] {
        two.register(d.into(), registration(&key)).await.unwrap();
    }
    two.put(key.clone(), put("v1"), RolloutOptions::default())
        .await
        .unwrap();
    let rollout = two.rollouts().await.unwrap()[0].clone();
    let order: Vec<String> = rollout
        .batches
        .iter()
        .map(|b| {
            assert_eq!(b.len(), 1);
            b[0].device.clone()
        })
        .collect();
    assert_eq!(order.len(), 3);
    let none = HashMap::new();
    let ack = Ack {
        rollout_id: rollout.id,
        service: "s".into(),
        version: 1,
        ok: true,
        reason: String::new(),
    };
    // Batch 1, through center two.
    let got = two
        .watch(&order[0], &none, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    two.ack(&order[0], &ack).await.unwrap();
    let mut acked = Instant::now();
    // Center one (the engine) arms the pace timer of batch 2 from the
    // stored state; then it stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(one.runs_engine());
    drop(one);
    until("center two runs the engine", async || two.runs_engine()).await;

    for (batch, device) in order.iter().enumerate().skip(1) {
        // Not yet released to the batch after.
        if let Some(later) = order.get(batch + 1) {
            let early = two
                .watch(later, &none, Duration::from_millis(10))
                .await
                .unwrap();
            assert!(early.is_empty(), "{later} released before its batch");
        }
        let got = two
            .watch(device, &none, Duration::from_secs(10))
            .await
            .unwrap();
        let waited = acked.elapsed();
        assert_eq!(got.len(), 1, "batch {} released to {device}", batch + 1);
        assert!(
            waited >= Duration::from_millis(PACE_MS),
            "batch {} released {waited:?} after the previous ack: before its pace",
            batch + 1
        );
        two.ack(device, &ack).await.unwrap();
        acked = Instant::now();
    }
    let done = two.rollout(rollout.id).await.unwrap();
    assert_eq!(done.state, RolloutState::Done, "{done:?}");
    assert!(
        done.batches
            .iter()
            .flatten()
            .all(|s| s.state == crate::rollout::wire::StepState::Succeeded),
        "none skipped: {done:?}"
    );
}

/// Two centers on one etcd with devices expiring after 5 s: center one
/// runs the engine, d1 registered through center two.
async fn engine_center_and_another_with_d1() -> (Etcd, Arc<Center>, Arc<Center>) {
    let etcd = Etcd::start();
    let mut config = shared(&etcd, 0);
    config.device_expiry_s = 5;
    let one = open(&config);
    until("center one runs the engine", async || one.runs_engine()).await;
    let two = open(&config);
    let key: ConfigKey = "n/g/k".parse().unwrap();
    two.register("d1".into(), registration(&key)).await.unwrap();
    (etcd, one, two)
}

/// A device that polls only a center not running the engine is not lost
/// on the engine's center (the centers tell each other who polled), and
/// centers with nothing to write do not make each other reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_answered_elsewhere_keep_a_device_from_expiring_and_idle_centers_do_not_reload() {
    let (_etcd, one, two) = engine_center_and_another_with_d1().await;
    until("center one knows d1", async || {
        one.devices().await.is_ok_and(|d| d.len() == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reloads = (one.reloads(), two.reloads());
    // d1 polls center two only, for longer than the expiry.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        let got = two
            .watch("d1", &HashMap::new(), Duration::from_secs(1))
            .await
            .unwrap();
        assert!(got.is_empty());
    }
    let devices = one.devices().await.unwrap();
    assert!(
        !devices[0].lost,
        "d1 lost on the engine's center though it polled center two: {devices:?}"
    );
    assert_eq!(
        (one.reloads(), two.reloads()),
        reloads,
        "nothing was written, yet a center reloaded"
    );
}

/// Reloads caused by other centers' writes do not count as hearing from a
/// device: a silent device is lost on the engine's center on time, while
/// the other center keeps writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_is_lost_on_time_while_another_center_keeps_writing() {
    let (_etcd, one, two) = engine_center_and_another_with_d1().await;
    let other: ConfigKey = "n/g/other".parse().unwrap();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(8) {
        n += 1;
        two.put(
            other.clone(),
            put(&format!("{n}")),
            RolloutOptions::default(),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(one.reloads() > 5, "center one followed the writes");
    let devices = one.devices().await.unwrap();
    assert!(
        devices[0].lost,
        "d1 said nothing for 8 s (expiry 5 s) and is not lost: {devices:?}"
    );
}
