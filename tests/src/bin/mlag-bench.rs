//! `cargo xtask bench`: figures for the XDP classifier and the capture path.
//!
//! - Classifier cost per frame, measured in the kernel with BPF_PROG_RUN and
//!   a repeat count, for several kinds of frame, each as a ratio to the
//!   pass-only program `mlag_pass` on the same frame in the same run.
//! - Sustained ring-buffer-to-agent rate: the classifier produces capture
//!   records as fast as the kernel can run it while the agent's real reader
//!   (`dataplane::capture::run`) drains them into its queue.
//!
//! Timings are printed, never asserted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mlag_testbed::frames::{Arp, TPID_8021AD, TPID_8021Q};
use sync_agent::{
    config::EbpfLogLevel,
    dataplane::{
        CLASSIFIER_PROGRAM, Dataplane, MacTables, PASS_PROGRAM,
        capture::{self, CaptureStats},
        testrun,
    },
    mac::MacAddr,
};
use sync_common::counters;

const PEER: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
const OWN: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const HOST: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];
const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0x0d, 0x01];
const VRRP: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x01];
const REPEAT: u32 = 1_000_000;
const RUNS: usize = 7;
const RATE_RECORDS: u64 = 2_000_000;
const RATE_BATCH: u32 = 10_000;

fn reply(dst: [u8; 6]) -> Arp {
    Arp::reply((HOST, [10, 0, 0, 3]), (dst, [10, 0, 0, 1]))
}

fn ipv4_udp() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&OWN);
    f.extend_from_slice(&HOST);
    f.extend_from_slice(&[0x08, 0x00]);
    // IPv4 header (20) + UDP header (8) + 18 bytes payload.
    f.extend_from_slice(&[
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 3, 10, 0, 0, 1,
    ]);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 26, 0, 0]);
    f.extend_from_slice(&[0u8; 18]);
    f
}

/// Nanoseconds per run of `fd` over `frame`: wall time of one BPF_PROG_RUN
/// call with REPEAT iterations, divided by REPEAT; median of RUNS calls.
fn ns_per_frame(fd: i32, frame: &[u8]) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let run = testrun::timed(fd, frame, REPEAT).context("BPF_PROG_RUN")?;
        let elapsed = start.elapsed();
        anyhow::ensure!(
            run.retval == 2,
            "program returned {} instead of XDP_PASS",
            run.retval
        );
        samples.push(elapsed.as_nanos() as f64 / REPEAT as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[RUNS / 2])
}

fn main() -> anyhow::Result<()> {
    let (mut dataplane, ring, _log) =
        Dataplane::load(EbpfLogLevel::Off).context("loading the XDP object (run as root)")?;
    dataplane.set_tables(MacTables {
        peer: [MacAddr(PEER)].into(),
        own: [MacAddr(OWN)].into(),
        shared: Default::default(),
    })?;
    dataplane.set_policy(sync_common::policy::DEFAULT)?;
    let classify = dataplane.program_fd(CLASSIFIER_PROGRAM)?;
    let pass = dataplane.program_fd(PASS_PROGRAM)?;

    // The agent's real ring buffer reader runs throughout, as in production.
    let stats = Arc::new(CaptureStats::default());
    let received = Arc::new(AtomicU64::new(0));
    let last_receive_ns = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    {
        let (stats, received, last) = (stats.clone(), received.clone(), last_receive_ns.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
                tokio::spawn(capture::run(ring, tx, stats));
                while rx.recv().await.is_some() {
                    received.fetch_add(1, Ordering::Relaxed);
                    last.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            });
        });
    }

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "mlag-sync benchmark — kernel {}, {cpus} CPUs",
        kernel.trim()
    );
    println!();
    println!("XDP classifier, ns per frame (BPF_PROG_RUN, {REPEAT} repeats, median of {RUNS}),");
    println!("as a ratio to the pass-only program mlag_pass on the same frame:");
    println!(
        "{:<52} {:>9} {:>9} {:>7}",
        "frame", "classify", "pass", "ratio"
    );
    let cases: [(&str, Vec<u8>); 5] = [
        (
            "ARP reply to the peer's MAC (class peer, captured)",
            reply(PEER).to_bytes(),
        ),
        (
            "ARP reply to a VRRP MAC (class shared, not captured)",
            reply(VRRP).to_bytes(),
        ),
        (
            "ARP reply to another host (class unmatched)",
            reply(OTHER).to_bytes(),
        ),
        (
            "double-tagged ARP reply to another host",
            reply(OTHER)
                .tagged(&[(TPID_8021AD, 100), (TPID_8021Q, 200)])
                .to_bytes(),
        ),
        ("IPv4/UDP frame (not ARP)", ipv4_udp()),
    ];
    for (name, frame) in &cases {
        let c = ns_per_frame(classify, frame)?;
        let p = ns_per_frame(pass, frame)?;
        println!("{name:<52} {c:>9.1} {p:>9.1} {:>7.2}", c / p);
    }

    // Sustained rate: produce RATE_RECORDS peer-class captures flat out.
    std::thread::sleep(Duration::from_millis(200));
    let before = dataplane.counters()?;
    let received_before = received.load(Ordering::Relaxed);
    let frame = reply(PEER).to_bytes();
    let start_ns = epoch.elapsed().as_nanos() as u64;
    let mut produced = 0u64;
    while produced < RATE_RECORDS {
        testrun::timed(classify, &frame, RATE_BATCH)?;
        produced += RATE_BATCH as u64;
    }
    let produce_ns = epoch.elapsed().as_nanos() as u64 - start_ns;
    // Wait until the reader has gone quiet.
    let mut last = received.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = received.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let after = dataplane.counters()?;
    let got = received.load(Ordering::Relaxed) - received_before;
    let drain_ns = last_receive_ns
        .load(Ordering::Relaxed)
        .saturating_sub(start_ns)
        .max(1);
    let ring_full = after.get(counters::RINGBUF_FULL) - before.get(counters::RINGBUF_FULL);
    println!();
    println!("ring buffer -> agent (peer-class replies produced flat out by BPF_PROG_RUN):");
    println!(
        "  kernel produced {produced} in {:.3} s ({:.0} per s)",
        produce_ns as f64 / 1e9,
        produced as f64 / (produce_ns as f64 / 1e9)
    );
    println!(
        "  agent received  {got} in {:.3} s: {:.0} events per s sustained",
        drain_ns as f64 / 1e9,
        got as f64 / (drain_ns as f64 / 1e9)
    );
    println!(
        "  lost at a full ring buffer (counted by the kernel): {ring_full} ({:.1}%)",
        100.0 * ring_full as f64 / produced as f64
    );
    Ok(())
}
