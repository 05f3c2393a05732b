//! The capture ring buffer between the classifier and the agent's reader
//! (`dataplane::capture::run`), run in the kernel with BPF_PROG_RUN: the
//! classifier submits every record without a wakeup of its own and wakes
//! the reader only when it has announced a sleep, so these check that
//! nothing is left waiting for the reader's timeout.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mlag_testbed::frames::Arp;
use sync_agent::{
    dataplane::config::EbpfLogLevel,
    dataplane::{
        CLASSIFIER_PROGRAM, Classifier, MacTables,
        capture::{self, CaptureStats},
        testrun,
    },
    mac::MacAddr,
};

const PEER: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
const HOST: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];

/// Tests here load their own object each; one at a time keeps their
/// readers from sharing the CPUs.
static SERIAL: Mutex<()> = Mutex::new(());

/// A loaded classifier whose ring is drained by the agent's real reader on
/// a runtime of its own; `received` counts what reached its queue, `altered`
/// what reached it with a frame other than [`reply`]'s (the only frame
/// these tests send).
struct Reader {
    dataplane: Classifier,
    fd: i32,
    stats: Arc<CaptureStats>,
    received: Arc<AtomicU64>,
    altered: Arc<AtomicU64>,
}

fn start_reader() -> Reader {
    let (mut dataplane, ring, _log) =
        Classifier::load(EbpfLogLevel::Off).expect("load the XDP object (run as root)");
    dataplane
        .set_tables(MacTables {
            peer: [MacAddr(PEER)].into(),
            ..Default::default()
        })
        .unwrap();
    dataplane.set_policy(sync_common::policy::DEFAULT).unwrap();
    let fd = dataplane.program_fd(CLASSIFIER_PROGRAM).unwrap();
    let stats = Arc::new(CaptureStats::default());
    let received = Arc::new(AtomicU64::new(0));
    let altered = Arc::new(AtomicU64::new(0));
    let (thread_stats, thread_received, thread_altered) =
        (stats.clone(), received.clone(), altered.clone());
    let sent = reply();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(capture::queue_batches(4096));
            tokio::spawn(capture::run(ring, None, tx, thread_stats));
            while let Some(batch) = rx.recv().await {
                thread_received.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let altered = batch.iter().filter(|r| r.frame[..] != sent[..]).count();
                thread_altered.fetch_add(altered as u64, Ordering::Relaxed);
            }
        });
    });
    Reader {
        dataplane,
        fd,
        stats,
        received,
        altered,
    }
}

fn reply() -> Vec<u8> {
    Arp::reply((HOST, [10, 0, 0, 3]), (PEER, [10, 0, 0, 1])).to_bytes()
}

/// Waits (bounded) until `received` reaches `count`.
fn wait_received(reader: &Reader, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.received.load(Ordering::Relaxed) < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records reached the agent",
            reader.received.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_lone_capture_wakes_the_sleeping_reader() {
    let _serial = SERIAL.lock().unwrap();
    let reader = start_reader();
    // Well past the reader's first drain: it has announced its sleep.
    std::thread::sleep(Duration::from_millis(20));
    for n in 1..=20u64 {
        let wakeups = reader.stats.wakeups.load(Ordering::Relaxed);
        let run = testrun::timed(reader.fd, &reply(), 1).unwrap();
        assert_eq!(run.retval, 2, "XDP_PASS");
        wait_received(&reader, n);
        // Delivered by a wakeup, not by the reader's timeout (which counts
        // no wakeup): the classifier woke the reader for this one record.
        assert_eq!(
            reader.stats.wakeups.load(Ordering::Relaxed),
            wakeups + 1,
            "record {n} reached the agent without exactly one wakeup"
        );
        // Let the reader go back to sleep before the next one.
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(reader.dataplane);
}

#[test]
fn a_burst_is_delivered_whole() {
    let _serial = SERIAL.lock().unwrap();
    let reader = start_reader();
    std::thread::sleep(Duration::from_millis(20));
    let mut sent = 0;
    for burst in [1u32, 2, 63, 64, 65, 1000, 4000] {
        testrun::timed(reader.fd, &reply(), burst).unwrap();
        sent += u64::from(burst);
        wait_received(&reader, sent);
    }
    let counters = reader.dataplane.counters().unwrap();
    assert_eq!(counters.get(sync_common::counters::CAPTURED), sent);
    assert_eq!(counters.get(sync_common::counters::RINGBUF_FULL), 0);
    assert_eq!(reader.received.load(Ordering::Relaxed), sent);
}

/// The reader maps the ring's data area once, so a record that runs past
/// its end is put back together from two pieces: three laps of the ring
/// cross the end at a different place in the record each time (a record
/// is 160 bytes, the ring 4 MiB), and every record must arrive whole.
#[test]
fn records_that_wrap_around_the_ring_arrive_whole() {
    let _serial = SERIAL.lock().unwrap();
    let reader = start_reader();
    let record_bytes =
        (8 + std::mem::size_of::<sync_common::capture::CaptureRecord>()).next_multiple_of(8) as u64;
    let laps = 3 * u64::from(sync_common::capture::CAPTURE_RING_BYTES) / record_bytes + 1;
    let mut sent = 0;
    while sent < laps {
        testrun::timed(reader.fd, &reply(), 4000).unwrap();
        sent += 4000;
        wait_received(&reader, sent);
    }
    let counters = reader.dataplane.counters().unwrap();
    assert_eq!(counters.get(sync_common::counters::RINGBUF_FULL), 0);
    assert_eq!(
        reader.stats.invalid.load(Ordering::Relaxed),
        0,
        "records the reader could not decode"
    );
    assert_eq!(reader.received.load(Ordering::Relaxed), sent);
    assert_eq!(
        reader.altered.load(Ordering::Relaxed),
        0,
        "records that arrived altered"
    );
}
