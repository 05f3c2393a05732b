//! The classifier's verdict and counters on Neighbour Advertisements, run
//! directly in the kernel with BPF_PROG_RUN: whatever the frame, XDP_PASS;
//! NAs sorted by destination MAC like ARP replies and counted in their own
//! slots; malformed and truncated ones counted, never captured.

use std::sync::Mutex;

use mlag_testbed::frames::{self, Na, TPID_8021AD, TPID_8021Q, ipv6};
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
const HOST_IP: [u16; 8] = [0xfd00, 0x77, 0, 0, 0, 0, 0, 3];
const SWITCH_IP: [u16; 8] = [0xfd00, 0x77, 0, 0, 0, 0, 0, 1];

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

fn na_to(dst: [u8; 6]) -> Na {
    Na::solicited((HOST, ipv6(HOST_IP)), (dst, ipv6(SWITCH_IP)))
}

#[test]
fn adverts_pass_and_are_classified_by_destination() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dataplane, fd) = loaded();
    let mut behind_options = na_to(OWN);
    behind_options.ext = vec![(0, 0), (60, 1)];
    let adverts = [
        na_to(PEER).to_bytes(),
        na_to(PEER).tagged(&[(TPID_8021Q, 5)]).to_bytes(),
        na_to(OWN)
            .tagged(&[(TPID_8021AD, 6), (TPID_8021Q, 7)])
            .to_bytes(),
        behind_options.to_bytes(),
        // The IPv6 VRRP MAC: shared, never synced.
        na_to([0, 0, 0x5e, 0, 2, 9]).to_bytes(),
        // Unsolicited, to all nodes: nobody's class.
        na_to([0x33, 0x33, 0, 0, 0, 1]).to_bytes(),
    ];
    let before = dataplane.counters().unwrap();
    for frame in &adverts {
        assert_eq!(verdict(fd, frame), XDP_PASS);
    }
    let after = dataplane.counters().unwrap();
    assert_eq!(delta(before, after, counters::NA_ADVERTS), 6);
    assert_eq!(delta(before, after, counters::NA_PEER), 2);
    assert_eq!(delta(before, after, counters::NA_OWN), 2);
    assert_eq!(delta(before, after, counters::NA_SHARED), 1);
    assert_eq!(delta(before, after, counters::NA_UNMATCHED), 1);
    assert_eq!(delta(before, after, counters::NA_CAPTURED), 4);
    assert_eq!(delta(before, after, counters::NA_MALFORMED), 0);
    // Nothing of it is ARP.
    assert_eq!(delta(before, after, counters::ARP_REPLIES), 0);
    assert_eq!(delta(before, after, counters::CAPTURED), 0);
}

#[test]
fn malformed_and_truncated_adverts_pass_and_are_counted() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dataplane, fd) = loaded();
    let good = na_to(PEER).to_bytes();
    let mut bad: Vec<Vec<u8>> = Vec::new();
    // Cut inside the IPv6 header, inside the ICMPv6 header, inside the NA.
    for keep in [20, 53, 60, 70] {
        bad.push(good[..keep].to_vec());
    }
    let mut hop_limit = na_to(PEER);
    hop_limit.hop_limit = 64;
    bad.push(hop_limit.to_bytes());
    let mut code = good.clone();
    code[14 + 40 + 1] = 3;
    bad.push(code);
    let mut version = good.clone();
    version[14] = 0x40;
    bad.push(version);
    // An extension header longer than the payload.
    let mut ext = na_to(PEER);
    ext.ext = vec![(60, 0)];
    let mut ext = ext.to_bytes();
    ext[14 + 40 + 1] = 200;
    bad.push(ext);
    let before = dataplane.counters().unwrap();
    for frame in &bad {
        assert_eq!(verdict(fd, frame), XDP_PASS, "{frame:02x?}");
    }
    let after = dataplane.counters().unwrap();
    assert_eq!(
        delta(before, after, counters::NA_MALFORMED),
        bad.len() as u64
    );
    assert_eq!(delta(before, after, counters::NA_ADVERTS), 0);
    assert_eq!(delta(before, after, counters::NA_CAPTURED), 0);
}

#[test]
fn long_extension_chains_and_other_icmpv6_pass_unclassified() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (dataplane, fd) = loaded();
    let mut three = na_to(PEER);
    three.ext = vec![(0, 0), (60, 0), (60, 0)];
    let mut solicitation = na_to(PEER).to_bytes();
    solicitation[14 + 40] = 135;
    let before = dataplane.counters().unwrap();
    assert_eq!(verdict(fd, &three.to_bytes()), XDP_PASS);
    assert_eq!(verdict(fd, &solicitation), XDP_PASS);
    let after = dataplane.counters().unwrap();
    assert_eq!(delta(before, after, counters::IPV6_UNFOLLOWED), 1);
    assert_eq!(delta(before, after, counters::NA_ADVERTS), 0);
    assert_eq!(delta(before, after, counters::NA_MALFORMED), 0);
}

#[test]
fn arbitrary_bytes_claiming_ipv6_always_pass() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_dataplane, fd) = loaded();
    let mut x: u32 = 0x1234_5679;
    for len in 14..300usize {
        let mut frame: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        frame[12..14].copy_from_slice(&[0x86, 0xdd]);
        if len > 21 {
            // Next header ICMPv6 or an option header, so the deep paths run.
            frame[20] = [58, 0, 60][len % 3];
            frame[21] = 255;
        }
        assert_eq!(verdict(fd, &frame), XDP_PASS, "{len} bytes");
    }
    let _ = frames::ipv6([0; 8]);
}
