//! The classifier's verdict and counters on every kind of frame, run directly
//! in the kernel with BPF_PROG_RUN (no interface involved): whatever the
//! frame, the verdict is XDP_PASS, and the counters say what it was.

use std::sync::Mutex;

use mlag_testbed::frames::{self, Arp, TPID_8021AD, TPID_8021Q};
use sync_agent::{
    dataplane::config::EbpfLogLevel,
    dataplane::{CLASSIFIER_PROGRAM, Classifier, KernelCounters, MacTables, testrun},
    mac::MacAddr,
};
use sync_common::counters;

const XDP_PASS: u32 = 2;
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
const OWN: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const HOST: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];

/// Each test loads its own copy of the object; the lock only keeps the
/// kernel work of parallel tests from interleaving in the timings.
static SERIAL: Mutex<()> = Mutex::new(());

fn loaded() -> (Classifier, i32) {
    let (mut dataplane, _ring, _log) =
        Classifier::load(EbpfLogLevel::Off).expect("load the XDP object (run as root)");
    dataplane
        .set_tables(MacTables {
            peer: [MacAddr(PEER)].into(),
            own: [MacAddr(OWN)].into(),
            shared: Default::default(),
        })
        .unwrap();
    dataplane.set_policy(sync_common::policy::DEFAULT).unwrap();
    let fd = dataplane.program_fd(CLASSIFIER_PROGRAM).unwrap();
    (dataplane, fd)
}

fn verdict(fd: i32, frame: &[u8]) -> u32 {
    testrun::timed(fd, frame, 1)
        .unwrap_or_else(|e| panic!("BPF_PROG_RUN on {} bytes: {e}", frame.len()))
        .retval
}

fn delta(before: KernelCounters, after: KernelCounters, slot: u32) -> u64 {
    after.get(slot) - before.get(slot)
}

#[test]
fn every_malformed_frame_passes_and_is_counted() {
    let _serial = SERIAL.lock().unwrap();
    let (dataplane, fd) = loaded();
    let bad = [
        frames::truncated_vlan(OWN, HOST),
        frames::truncated_arp(OWN, HOST, 0),
        frames::truncated_arp(OWN, HOST, 7),
        frames::truncated_arp(OWN, HOST, 27),
        frames::garbage_arp(OWN, HOST, 1, 0),
        frames::garbage_arp(OWN, HOST, 2, 100),
    ];
    let before = dataplane.counters().unwrap();
    for frame in &bad {
        assert_eq!(verdict(fd, frame), XDP_PASS, "{frame:02x?}");
    }
    let after = dataplane.counters().unwrap();
    assert_eq!(delta(before, after, counters::MALFORMED), bad.len() as u64);
    assert_eq!(delta(before, after, counters::SEEN), bad.len() as u64);
    assert_eq!(delta(before, after, counters::ARP_REPLIES), 0);
}

#[test]
fn arbitrary_bytes_always_pass() {
    let _serial = SERIAL.lock().unwrap();
    let (_dataplane, fd) = loaded();
    let mut x: u32 = 0x9e37_79b9;
    for len in 14..300usize {
        let frame: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert_eq!(verdict(fd, &frame), XDP_PASS, "random frame of {len} bytes");
        // The same bytes made to claim ARP behind one and two tags.
        let mut tagged = frame.clone();
        tagged[12..14].copy_from_slice(&[0x81, 0x00]);
        if len > 18 {
            tagged[16..18].copy_from_slice(&[0x08, 0x06]);
        }
        assert_eq!(verdict(fd, &tagged), XDP_PASS);
    }
}

#[test]
fn replies_pass_and_are_classified_by_destination() {
    let _serial = SERIAL.lock().unwrap();
    let (dataplane, fd) = loaded();
    let before = dataplane.counters().unwrap();
    let replies = [
        Arp::reply((HOST, [10, 0, 0, 3]), (PEER, [10, 0, 0, 2])).to_bytes(),
        Arp::reply((HOST, [10, 0, 0, 3]), (PEER, [10, 0, 0, 2]))
            .tagged(&[(TPID_8021Q, 5)])
            .to_bytes(),
        Arp::reply((HOST, [10, 0, 0, 3]), (OWN, [10, 0, 0, 1]))
            .tagged(&[(TPID_8021AD, 6), (TPID_8021Q, 7)])
            .to_bytes(),
        Arp::reply(
            (HOST, [10, 0, 0, 3]),
            ([0, 0, 0x5e, 0, 1, 9], [10, 0, 0, 1]),
        )
        .to_bytes(),
    ];
    for frame in &replies {
        assert_eq!(verdict(fd, frame), XDP_PASS);
    }
    let after = dataplane.counters().unwrap();
    assert_eq!(delta(before, after, counters::ARP_REPLIES), 4);
    assert_eq!(delta(before, after, counters::PEER), 2);
    assert_eq!(delta(before, after, counters::OWN), 1);
    assert_eq!(delta(before, after, counters::SHARED), 1);
    assert_eq!(delta(before, after, counters::CAPTURED), 3);
    assert_eq!(delta(before, after, counters::MALFORMED), 0);
}
