//! Specification tests for the MLAG sync protocol codec, `sync_common::wire`.
//!
//! * Known-answer vectors: every byte of a keepalive, a hello, an ack and a
//!   sync/ARP frame is written out literally with a comment per field; the
//!   encoder must produce exactly those bytes and the decoder must give the
//!   fields back.
//! * Round-trip properties: random sync/ARP frames (random driver headers,
//!   valid ARP replies with 0-2 tags, unknown optional TLVs interleaved) and
//!   random hellos decode to what was encoded; a small buffer gives
//!   `EncodeError::NoRoom`, never a panic or an oversized frame.
//! * Decode errors: one test per way a frame can be wrong, each pinning the
//!   exact `DecodeError` and its counter label (`reason()`).
//! * Robustness: `decode_header` and `Frame::decode` never panic, whatever the
//!   bytes.

use proptest::prelude::*;
use proptest::sample::Index;
use sync_common::arp::{self, Parsed};
use sync_common::wire::{
    self, ArpDelete, ArpEntry, DecodeError, DriverHeader, EncodeError, Encoder, Frame, HEADER_LEN,
    MAX_FRAME_LEN, MessageType, SubType, Tlv, decode_header, tlv,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Encodes a frame with the given TLVs (type, value) into a fresh vector.
fn encode(msg_type: MessageType, sub_type: SubType, seq: u32, tlvs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut enc = Encoder::new(&mut buf, msg_type, sub_type, seq).unwrap();
    for (t, v) in tlvs {
        enc.tlv(*t, &[v]).unwrap();
    }
    let len = enc.finish();
    buf.truncate(len);
    buf
}

/// A header written by hand: magic, version, type, sub-type, flags, seq and
/// length field, for the error cases the encoder cannot produce.
#[allow(clippy::too_many_arguments)]
fn raw_header(
    magic: [u8; 2],
    major: u8,
    minor: u8,
    msg_type: u8,
    sub_type: u8,
    flags: u16,
    seq: u32,
    length: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&magic);
    out.push(major);
    out.push(minor);
    out.push(msg_type);
    out.push(sub_type);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out
}

/// A raw TLV: type, length field, value.
fn raw_tlv(tlv_type: u16, length: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&tlv_type.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// A frame of `msg_type`/`sub_type` with `body` behind a correct header.
fn frame_with_body(msg_type: MessageType, sub_type: SubType, body: &[u8]) -> Vec<u8> {
    let mut out = raw_header(
        wire::MAGIC,
        1,
        0,
        msg_type as u8,
        sub_type as u8,
        0,
        1,
        (HEADER_LEN + body.len()) as u32,
    );
    out.extend_from_slice(body);
    out
}

/// Asserts that `bytes` is refused with exactly `want`, labelled `reason`.
#[track_caller]
fn assert_decode_err(bytes: &[u8], max_len: usize, want: DecodeError, reason: &str) {
    let err = Frame::decode(bytes, max_len).expect_err("frame must be refused");
    assert_eq!(err, want);
    assert_eq!(err.reason(), reason);
}

/// An Ethernet/IPv4 ARP frame, untagged or with the given (TPID, TCI) tags.
fn arp_frame(tags: &[(u16, u16)], opcode: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src
    for (tpid, tci) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&tci.to_be_bytes());
    }
    out.extend_from_slice(&[0x08, 0x06]); // ARP
    out.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4]); // Ethernet/IPv4, 6/4
    out.extend_from_slice(&opcode.to_be_bytes());
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 10, 0, 0, 1]); // sha, spa
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 10, 0, 0, 2]); // tha, tpa
    out
}

const DRIVER: DriverHeader = DriverHeader {
    mlag_id: 1,
    outer_vlan: 10,
    inner_vlan: 0,
    vrf: 0,
    class: 1,
    vlan_count: 1,
};

// ---------------------------------------------------------------------------
// Known-answer vectors
// ---------------------------------------------------------------------------

#[test]
fn known_answer_keepalive() {
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x4d, 0x53,             // magic "MS"
        0x01, 0x01,             // version 1.1
        0x04,                   // message type: keepalive
        0x00,                   // sub-type: none
        0x00, 0x00,             // flags
        0x00, 0x00, 0x00, 0x07, // seq 7
        0x00, 0x00, 0x00, 0x10, // length 16 (header only)
    ];
    let mut buf = [0u8; 64];
    let len = Encoder::new(&mut buf, MessageType::Keepalive, SubType::None, 7)
        .unwrap()
        .finish();
    assert_eq!(&buf[..len], expected);

    let frame = Frame::decode(expected, MAX_FRAME_LEN).unwrap();
    assert_eq!(
        frame.header,
        wire::Header {
            major: 1,
            minor: 1,
            msg_type: MessageType::Keepalive,
            sub_type: SubType::None,
            seq: 7,
            length: 16
        }
    );
    assert_eq!(frame.tlvs().count(), 0);
    assert_eq!(
        decode_header(expected, MAX_FRAME_LEN).unwrap(),
        frame.header
    );
}

#[test]
fn known_answer_hello() {
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x4d, 0x53,             // magic "MS"
        0x01, 0x01,             // version 1.1
        0x01,                   // message type: hello
        0x00,                   // sub-type: none
        0x00, 0x00,             // flags
        0x00, 0x00, 0x00, 0x01, // seq 1
        0x00, 0x00, 0x00, 0x29, // length 41 = 16 + 5 + 8 + 12
        0x00, 0x01,             // TLV SYSTEM_NAME
        0x00, 0x01,             //   length 1
        0x61,                   //   "a"
        0x00, 0x03,             // TLV CAPABILITIES
        0x00, 0x04,             //   length 4
        0x00, 0x00, 0x00, 0x01, //   1 (ARP_SYNC)
        0x00, 0x04,             // TLV BOOT_ID
        0x00, 0x08,             //   length 8
        0x01, 0x02, 0x03, 0x04, //   0x0102030405060708
        0x05, 0x06, 0x07, 0x08,
    ];
    let mut buf = [0u8; 128];
    let mut enc = Encoder::new(&mut buf, MessageType::Hello, SubType::None, 1).unwrap();
    enc.tlv(tlv::SYSTEM_NAME, &[b"a"]).unwrap();
    enc.tlv(
        tlv::CAPABILITIES,
        &[&wire::capability::ARP_SYNC.to_be_bytes()],
    )
    .unwrap();
    enc.tlv(tlv::BOOT_ID, &[&0x0102_0304_0506_0708u64.to_be_bytes()])
        .unwrap();
    let len = enc.finish();
    assert_eq!(&buf[..len], expected);

    let frame = Frame::decode(expected, MAX_FRAME_LEN).unwrap();
    assert_eq!(frame.header.msg_type, MessageType::Hello);
    assert_eq!(frame.header.sub_type, SubType::None);
    assert_eq!(frame.header.seq, 1);
    assert_eq!(frame.header.length, 41);
    assert_eq!(frame.find(tlv::SYSTEM_NAME), Some(&b"a"[..]));
    assert_eq!(frame.u32_of(tlv::CAPABILITIES), Some(1));
    assert_eq!(frame.u64_of(tlv::BOOT_ID), Some(0x0102_0304_0506_0708));
    assert_eq!(frame.find(tlv::SYSTEM_ID), None);
    let types: Vec<u16> = frame.tlvs().map(|t| t.tlv_type).collect();
    assert_eq!(types, [tlv::SYSTEM_NAME, tlv::CAPABILITIES, tlv::BOOT_ID]);
}

#[test]
fn known_answer_ack() {
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x4d, 0x53,             // magic "MS"
        0x01, 0x01,             // version 1.1
        0x03,                   // message type: ack
        0x00,                   // sub-type: none
        0x00, 0x00,             // flags
        0x00, 0x00, 0x00, 0x03, // seq 3
        0x00, 0x00, 0x00, 0x18, // length 24 = 16 + 8
        0x00, 0x10,             // TLV ACK_SEQ
        0x00, 0x04,             //   length 4
        0x00, 0x00, 0x00, 0x2a, //   42
    ];
    let mut buf = [0u8; 64];
    let mut enc = Encoder::new(&mut buf, MessageType::Ack, SubType::None, 3).unwrap();
    enc.tlv(tlv::ACK_SEQ, &[&42u32.to_be_bytes()]).unwrap();
    let len = enc.finish();
    assert_eq!(&buf[..len], expected);

    let frame = Frame::decode(expected, MAX_FRAME_LEN).unwrap();
    assert_eq!(frame.header.msg_type, MessageType::Ack);
    assert_eq!(frame.header.seq, 3);
    assert_eq!(frame.header.length, 24);
    assert_eq!(frame.u32_of(tlv::ACK_SEQ), Some(42));
}

#[test]
fn known_answer_sync_arp() {
    #[rustfmt::skip]
    let arp_reply: &[u8] = &[
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // dst MAC
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src MAC
        0x81, 0x00,                         // TPID 802.1Q
        0x00, 0x0a,                         // TCI: VLAN 10
        0x08, 0x06,                         // ethertype ARP
        0x00, 0x01,                         // htype Ethernet
        0x08, 0x00,                         // ptype IPv4
        0x06, 0x04,                         // hlen 6, plen 4
        0x00, 0x02,                         // opcode reply
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // sender MAC
        0x0a, 0x00, 0x00, 0x01,             // sender IP 10.0.0.1
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // target MAC
        0x0a, 0x00, 0x00, 0x02,             // target IP 10.0.0.2
    ];
    assert_eq!(arp_reply.len(), 46);
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x4d, 0x53,             // magic "MS"
        0x01, 0x01,             // version 1.1
        0x02,                   // message type: sync
        0x01,                   // sub-type: ARP
        0x00, 0x00,             // flags
        0x00, 0x00, 0x00, 0x05, // seq 5
        0x00, 0x00, 0x00, 0x52, // length 82 = 16 + 4 + 16 + 46
        0x81, 0x01,             // TLV ARP_ENTRY (must understand)
        0x00, 0x3e,             //   length 62 = 16 + 46
        0x00, 0x00, 0x00, 0x01, //   driver: MLAG port id 1
        0x00, 0x0a,             //   driver: outer VLAN 10
        0x00, 0x00,             //   driver: inner VLAN 0
        0x00, 0x00, 0x00, 0x00, //   driver: VRF 0
        0x01,                   //   driver: class 1
        0x01,                   //   driver: vlan count 1
        0x00, 0x2e,             //   driver: frame length 46
        // the original frame, as above
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x81, 0x00, 0x00, 0x0a, 0x08, 0x06,
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x01,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x02,
    ];
    let mut buf = [0u8; 256];
    let mut enc = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, 5).unwrap();
    enc.arp_entry(&DRIVER, arp_reply).unwrap();
    let len = enc.finish();
    assert_eq!(&buf[..len], expected);

    let frame = Frame::decode(expected, MAX_FRAME_LEN).unwrap();
    assert_eq!(frame.header.msg_type, MessageType::Sync);
    assert_eq!(frame.header.sub_type, SubType::Arp);
    assert_eq!(frame.header.seq, 5);
    assert_eq!(frame.header.length, 82);
    let entries: Vec<ArpEntry> = frame.arp_entries().collect();
    assert_eq!(
        entries,
        [ArpEntry {
            driver: DRIVER,
            frame: arp_reply
        }]
    );
    // The carried frame is a reply by the classifier's own rules.
    let Parsed::ArpReply(reply) = arp::parse(entries[0].frame) else {
        panic!("not an ARP reply")
    };
    assert_eq!((reply.outer_vlan, reply.vlan_count), (10, 1));
    // The same value parses on its own.
    let tlvs: Vec<Tlv> = frame.tlvs().collect();
    assert_eq!(tlvs.len(), 1);
    assert_eq!(ArpEntry::parse(tlvs[0].value), Some(entries[0]));
    assert_eq!(ArpEntry::value_len(arp_reply.len()), 62);
}

/// 1.1: a sync/ARP frame withdrawing one entry (the sender's kernel dropped
/// it), every byte written out.
#[test]
fn known_answer_sync_arp_delete() {
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x4d, 0x53,             // magic "MS"
        0x01, 0x01,             // version 1.1
        0x02,                   // message type: sync
        0x01,                   // sub-type: ARP
        0x00, 0x00,             // flags
        0x00, 0x00, 0x00, 0x09, // seq 9
        0x00, 0x00, 0x00, 0x20, // length 32 = 16 + 4 + 12
        0x01, 0x02,             // TLV ARP_DELETE (optional: top bit clear)
        0x00, 0x0c,             //   length 12
        0x00, 0x00, 0x00, 0x03, //   MLAG port id 3
        0x00, 0x00, 0x00, 0x00, //   VRF 0
        0x0a, 0x4d, 0x00, 0x32, //   IPv4 10.77.0.50
    ];
    let delete = ArpDelete {
        mlag_id: 3,
        vrf: 0,
        ip: [10, 77, 0, 50],
    };
    let mut buf = [0u8; 64];
    let mut enc = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, 9).unwrap();
    enc.arp_delete(&delete).unwrap();
    let len = enc.finish();
    assert_eq!(&buf[..len], expected);

    let frame = Frame::decode(expected, MAX_FRAME_LEN).unwrap();
    assert_eq!(frame.header.seq, 9);
    assert_eq!(frame.arp_deletes().collect::<Vec<_>>(), [delete]);
    assert_eq!(frame.arp_entries().count(), 0);
    assert_eq!(tlv::ARP_DELETE & wire::TLV_MUST_UNDERSTAND, 0);
}

/// The version rule for the addition: a 1.0 receiver does not know
/// ARP_DELETE and, the must-understand bit being clear, skips it: the
/// entries of the same frame are still read, nothing else is. Decoding
/// with an unknown optional TLV in its place is exactly what 1.0 does.
#[test]
fn an_older_receiver_skips_the_delete_and_reads_the_entries() {
    let reply = arp_frame(&[], arp::ARP_OP_REPLY);
    let mut buf = [0u8; 256];
    let mut enc = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, 1).unwrap();
    enc.arp_delete(&ArpDelete {
        mlag_id: 1,
        vrf: 0,
        ip: [10, 0, 0, 9],
    })
    .unwrap();
    enc.arp_entry(&DRIVER, &reply).unwrap();
    let len = enc.finish();
    let mut as_seen_by_1_0 = buf[..len].to_vec();
    // A 1.0 build knows no TLV 0x0102; any optional type it does not know
    // takes the same path, so rename the delete to one nobody knows.
    as_seen_by_1_0[16..18].copy_from_slice(&0x7ffeu16.to_be_bytes());
    let frame = Frame::decode(&as_seen_by_1_0, MAX_FRAME_LEN).unwrap();
    assert_eq!(frame.arp_deletes().count(), 0);
    assert_eq!(frame.arp_entries().count(), 1);
    // And the real frame, read by this build, has both.
    let frame = Frame::decode(&buf[..len], MAX_FRAME_LEN).unwrap();
    assert_eq!(frame.arp_deletes().count(), 1);
    assert_eq!(frame.arp_entries().count(), 1);
}

#[test]
fn error_arp_delete_of_the_wrong_length() {
    for value_len in [0usize, 11, 13, 16] {
        let value = vec![0u8; value_len];
        let bytes = frame_with_body(
            MessageType::Sync,
            SubType::Arp,
            &raw_tlv(tlv::ARP_DELETE, value_len as u16, &value),
        );
        assert_decode_err(
            &bytes,
            MAX_FRAME_LEN,
            DecodeError::BadTlvValue {
                tlv_type: tlv::ARP_DELETE,
            },
            "bad_tlv",
        );
    }
}

proptest! {
    /// Deletes and entries interleaved come back in order, each kind
    /// through its own accessor.
    #[test]
    fn sync_arp_delete_round_trip(
        seq in any::<u32>(),
        deletes in prop::collection::vec((any::<u32>(), any::<u32>(), any::<[u8; 4]>()), 0..30),
        entry in (driver_strategy(), arp_reply_strategy()),
    ) {
        let deletes: Vec<ArpDelete> = deletes
            .into_iter()
            .map(|(mlag_id, vrf, ip)| ArpDelete { mlag_id, vrf, ip })
            .collect();
        let mut buf = vec![0u8; 4096];
        let mut enc = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, seq).unwrap();
        let half = deletes.len() / 2;
        for d in &deletes[..half] {
            enc.arp_delete(d).unwrap();
        }
        enc.arp_entry(&entry.0, &entry.1).unwrap();
        for d in &deletes[half..] {
            enc.arp_delete(d).unwrap();
        }
        let len = enc.finish();
        let frame = Frame::decode(&buf[..len], MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(frame.arp_deletes().collect::<Vec<_>>(), deletes.clone());
        prop_assert_eq!(frame.arp_entries().count(), 1);
        for d in &deletes {
            prop_assert_eq!(ArpDelete::parse(&d.to_bytes()), Some(*d));
        }
    }
}

/// 1.1: a port-state message, every byte written out.
#[test]
fn known_answer_port_state() {
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x4d, 0x53,             // magic "MS"
        0x01, 0x01,             // version 1.1
        0x05,                   // message type: port state
        0x00,                   // sub-type: none
        0x00, 0x00,             // flags
        0x00, 0x00, 0x00, 0x00, // seq 0
        0x00, 0x00, 0x00, 0x22, // length 34 = 16 + 2 * (4 + 5)
        0x00, 0x11,             // TLV PORT_STATE
        0x00, 0x05,             //   length 5
        0x00, 0x00, 0x00, 0x02, //   MLAG id 2
        0x01,                   //   up
        0x00, 0x11,             // TLV PORT_STATE
        0x00, 0x05,             //   length 5
        0x00, 0x00, 0x00, 0x07, //   MLAG id 7
        0x00,                   //   down
    ];
    let mut buf = [0u8; 64];
    let mut enc = Encoder::new(&mut buf, MessageType::PortState, SubType::None, 0).unwrap();
    enc.port_state(2, true).unwrap();
    enc.port_state(7, false).unwrap();
    let len = enc.finish();
    assert_eq!(&buf[..len], expected);
    let frame = Frame::decode(expected, MAX_FRAME_LEN).unwrap();
    assert_eq!(frame.header.msg_type, MessageType::PortState);
    assert_eq!(
        frame.port_states().collect::<Vec<_>>(),
        [(2, true), (7, false)]
    );
    // A state other than 0/1, or another length, is refused.
    for bad in [&[0u8, 0, 0, 2, 2][..], &[0, 0, 0, 2][..]] {
        let bytes = frame_with_body(
            MessageType::PortState,
            SubType::None,
            &raw_tlv(tlv::PORT_STATE, bad.len() as u16, bad),
        );
        assert_decode_err(
            &bytes,
            MAX_FRAME_LEN,
            DecodeError::BadTlvValue {
                tlv_type: tlv::PORT_STATE,
            },
            "bad_tlv",
        );
    }
    // Port state is not a sync message: no sub-type.
    let bytes = raw_header(wire::MAGIC, 1, 1, 5, 1, 0, 0, 16);
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::SubTypeMismatch {
            msg_type: 5,
            sub_type: 1,
        },
        "unknown_subtype",
    );
}

#[test]
fn module_doc_vector_matches_keepalive() {
    // The vector quoted in the module documentation.
    let doc = [
        0x4d, 0x53, 0x01, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
        0x10,
    ];
    assert_eq!(encode(MessageType::Keepalive, SubType::None, 7, &[]), doc);
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

fn driver_strategy() -> impl Strategy<Value = DriverHeader> {
    (
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        any::<u8>(),
        0u8..=2,
    )
        .prop_map(
            |(mlag_id, outer_vlan, inner_vlan, vrf, class, vlan_count)| DriverHeader {
                mlag_id,
                outer_vlan,
                inner_vlan,
                vrf,
                class,
                vlan_count,
            },
        )
}

/// A valid Ethernet/IPv4 ARP reply with 0-2 tags, random addresses and
/// random trailing padding.
fn arp_reply_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        prop::collection::vec(
            (prop_oneof![Just(0x8100u16), Just(0x88a8u16)], any::<u16>()),
            0..=2,
        ),
        any::<[u8; 6]>(),
        any::<[u8; 4]>(),
        any::<[u8; 6]>(),
        any::<[u8; 4]>(),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(dst, src, tags, sha, spa, tha, tpa, padding)| {
            let mut out = Vec::new();
            out.extend_from_slice(&dst);
            out.extend_from_slice(&src);
            for (tpid, tci) in &tags {
                out.extend_from_slice(&tpid.to_be_bytes());
                out.extend_from_slice(&tci.to_be_bytes());
            }
            out.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02]);
            out.extend_from_slice(&sha);
            out.extend_from_slice(&spa);
            out.extend_from_slice(&tha);
            out.extend_from_slice(&tpa);
            out.extend_from_slice(&padding);
            out
        })
}

#[derive(Clone, Debug, PartialEq)]
enum Item {
    Entry(DriverHeader, Vec<u8>),
    /// An unknown TLV without the must-understand bit.
    Unknown(u16, Vec<u8>),
}

/// 0..20 ARP entries with unknown optional TLVs (`unknown_types`) at random
/// places between them.
fn items_strategy(unknown_types: impl Strategy<Value = u16>) -> impl Strategy<Value = Vec<Item>> {
    (
        prop::collection::vec((driver_strategy(), arp_reply_strategy()), 0..20),
        prop::collection::vec(
            (
                any::<Index>(),
                unknown_types,
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            0..8,
        ),
    )
        .prop_map(|(entries, unknowns)| {
            let mut items: Vec<Item> = entries
                .into_iter()
                .map(|(d, f)| Item::Entry(d, f))
                .collect();
            for (at, t, v) in unknowns {
                let at = at.index(items.len() + 1);
                items.insert(at, Item::Unknown(t, v));
            }
            items
        })
}

fn encode_items(buf: &mut [u8], seq: u32, items: &[Item]) -> Result<usize, EncodeError> {
    let mut enc = Encoder::new(buf, MessageType::Sync, SubType::Arp, seq)?;
    for item in items {
        match item {
            Item::Entry(driver, frame) => enc.arp_entry(driver, frame)?,
            Item::Unknown(t, v) => enc.tlv(*t, &[v])?,
        }
    }
    Ok(enc.finish())
}

proptest! {
    /// Encode then decode gives the same header, every TLV in order, and the
    /// same ARP entries in the same order; unknown optional TLVs do not make
    /// the frame invalid and are not mistaken for entries.
    #[test]
    fn sync_arp_round_trip(seq in any::<u32>(), items in items_strategy((0u16..wire::TLV_MUST_UNDERSTAND).prop_filter("a TLV this build knows", |t| *t != tlv::ARP_DELETE))) {
        let mut buf = vec![0u8; 8192];
        let len = encode_items(&mut buf, seq, &items).unwrap();
        let bytes = &buf[..len];

        let frame = Frame::decode(bytes, MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(frame.header.msg_type, MessageType::Sync);
        prop_assert_eq!(frame.header.sub_type, SubType::Arp);
        prop_assert_eq!(frame.header.seq, seq);
        prop_assert_eq!(frame.header.length as usize, len);
        prop_assert_eq!(frame.header.major, wire::VERSION_MAJOR);
        prop_assert_eq!(frame.header.minor, wire::VERSION_MINOR);
        prop_assert_eq!(decode_header(bytes, MAX_FRAME_LEN).unwrap(), frame.header);

        let want_entries: Vec<ArpEntry> = items
            .iter()
            .filter_map(|i| match i {
                Item::Entry(driver, frame) => Some(ArpEntry { driver: *driver, frame }),
                Item::Unknown(..) => None,
            })
            .collect();
        let got_entries: Vec<ArpEntry> = frame.arp_entries().collect();
        prop_assert_eq!(got_entries, want_entries);

        let want_tlvs: Vec<(u16, Vec<u8>)> = items
            .iter()
            .map(|i| match i {
                Item::Entry(driver, frame) => {
                    let mut v = Vec::new();
                    v.extend_from_slice(&driver.mlag_id.to_be_bytes());
                    v.extend_from_slice(&driver.outer_vlan.to_be_bytes());
                    v.extend_from_slice(&driver.inner_vlan.to_be_bytes());
                    v.extend_from_slice(&driver.vrf.to_be_bytes());
                    v.push(driver.class);
                    v.push(driver.vlan_count);
                    v.extend_from_slice(&(frame.len() as u16).to_be_bytes());
                    v.extend_from_slice(frame);
                    (tlv::ARP_ENTRY, v)
                }
                Item::Unknown(t, v) => (*t, v.clone()),
            })
            .collect();
        let got_tlvs: Vec<(u16, Vec<u8>)> = frame.tlvs().map(|t| (t.tlv_type, t.value.to_vec())).collect();
        prop_assert_eq!(got_tlvs, want_tlvs);
    }

    /// A hello with its fields and unknown optional TLVs round-trips through
    /// `find`, `u32_of` and `u64_of`.
    #[test]
    fn hello_round_trip(
        seq in any::<u32>(),
        name in "[a-zA-Z0-9é-]{0,16}",
        system_id in any::<[u8; 6]>(),
        caps in any::<u32>(),
        boot_id in any::<u64>(),
        max_frame in any::<u32>(),
        unknowns in prop::collection::vec((0x0008u16..0x8000, prop::collection::vec(any::<u8>(), 0..16)), 0..4),
    ) {
        let mut tlvs: Vec<(u16, Vec<u8>)> = unknowns.clone();
        tlvs.insert(0, (tlv::SYSTEM_NAME, name.as_bytes().to_vec()));
        tlvs.push((tlv::SYSTEM_ID, system_id.to_vec()));
        tlvs.push((tlv::CAPABILITIES, caps.to_be_bytes().to_vec()));
        tlvs.push((tlv::BOOT_ID, boot_id.to_be_bytes().to_vec()));
        tlvs.push((tlv::MAX_FRAME, max_frame.to_be_bytes().to_vec()));
        let refs: Vec<(u16, &[u8])> = tlvs.iter().map(|(t, v)| (*t, v.as_slice())).collect();
        let bytes = encode(MessageType::Hello, SubType::None, seq, &refs);

        let frame = Frame::decode(&bytes, MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(frame.header.seq, seq);
        prop_assert_eq!(frame.find(tlv::SYSTEM_NAME), Some(name.as_bytes()));
        prop_assert_eq!(frame.find(tlv::SYSTEM_ID), Some(&system_id[..]));
        prop_assert_eq!(frame.u32_of(tlv::CAPABILITIES), Some(caps));
        prop_assert_eq!(frame.u64_of(tlv::BOOT_ID), Some(boot_id));
        prop_assert_eq!(frame.u32_of(tlv::MAX_FRAME), Some(max_frame));
        prop_assert_eq!(frame.find(tlv::RESUME), None);
        prop_assert_eq!(frame.arp_entries().count(), 0);
        let got: Vec<(u16, Vec<u8>)> = frame.tlvs().map(|t| (t.tlv_type, t.value.to_vec())).collect();
        prop_assert_eq!(got, tlvs);
    }

    /// With a buffer too small for everything the encoder refuses with
    /// `NoRoom` (never panics), leaves what it had intact, and the frame it
    /// finishes fits the buffer and decodes to the entries that fitted.
    #[test]
    fn small_buffer_gives_no_room(
        buf_len in 0usize..600,
        seq in any::<u32>(),
        entries in prop::collection::vec((driver_strategy(), arp_reply_strategy()), 0..20),
    ) {
        let mut buf = vec![0u8; buf_len];
        let mut enc = match Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, seq) {
            Ok(enc) => enc,
            Err(e) => {
                prop_assert!(buf_len < HEADER_LEN);
                prop_assert_eq!(e, EncodeError::NoRoom);
                return Ok(());
            }
        };
        prop_assert!(buf_len >= HEADER_LEN);
        prop_assert_eq!(enc.room(), buf_len - HEADER_LEN);
        prop_assert!(enc.is_empty());
        let mut fitted = Vec::new();
        for (driver, frame) in &entries {
            let need = wire::TLV_HEADER_LEN + ArpEntry::value_len(frame.len());
            let (room_before, len_before) = (enc.room(), enc.len());
            match enc.arp_entry(driver, frame) {
                Ok(()) => {
                    prop_assert!(need <= room_before);
                    prop_assert_eq!(enc.len(), len_before + need);
                    fitted.push(ArpEntry { driver: *driver, frame });
                }
                Err(e) => {
                    prop_assert_eq!(e, EncodeError::NoRoom);
                    prop_assert!(need > room_before);
                    prop_assert_eq!((enc.room(), enc.len()), (room_before, len_before));
                }
            }
            prop_assert!(enc.len() <= buf_len);
        }
        let len = enc.finish();
        prop_assert!(len <= buf_len);
        let frame = Frame::decode(&buf[..len], buf_len).unwrap();
        prop_assert_eq!(frame.header.seq, seq);
        let got: Vec<ArpEntry> = frame.arp_entries().collect();
        prop_assert_eq!(got, fitted);
    }
}

#[test]
fn encoder_refuses_header_only_overflow_and_long_values() {
    // Fewer than 16 bytes: not even a header fits.
    let mut tiny = [0u8; 15];
    assert_eq!(
        Encoder::new(&mut tiny, MessageType::Keepalive, SubType::None, 0).err(),
        Some(EncodeError::NoRoom)
    );

    // Exactly a header: a keepalive fits, no TLV does.
    let mut buf = [0u8; 16];
    let mut enc = Encoder::new(&mut buf, MessageType::Ack, SubType::None, 0).unwrap();
    assert_eq!(enc.room(), 0);
    assert_eq!(
        enc.tlv(tlv::ACK_SEQ, &[&1u32.to_be_bytes()]),
        Err(EncodeError::NoRoom)
    );
    assert_eq!(enc.finish(), 16);

    // A value over 65535 bytes cannot be described by the TLV length.
    let mut big = vec![0u8; MAX_FRAME_LEN];
    let mut enc = Encoder::new(&mut big, MessageType::Hello, SubType::None, 0).unwrap();
    let long = vec![0u8; 65536];
    assert_eq!(enc.tlv(0x0100, &[&long]), Err(EncodeError::ValueTooLong));
    assert_eq!(
        enc.tlv(0x0100, &[&long[..40000], &long[..40000]]),
        Err(EncodeError::ValueTooLong)
    );
    assert_eq!(
        enc.arp_entry(&DRIVER, &long[..65535 - 15]),
        Err(EncodeError::ValueTooLong)
    );
    assert_eq!(enc.tlv(0x0100, &[&long[..65535]]), Ok(()));
    assert!(enc.finish() <= MAX_FRAME_LEN);
}

#[test]
fn encoder_never_exceeds_max_frame_len() {
    // A buffer larger than the protocol maximum is used only up to it.
    let mut buf = vec![0u8; MAX_FRAME_LEN + 1000];
    let mut enc = Encoder::new(&mut buf, MessageType::Hello, SubType::None, 0).unwrap();
    assert_eq!(enc.room(), MAX_FRAME_LEN - HEADER_LEN);
    let value = vec![0u8; 65535];
    let mut added = 0;
    loop {
        match enc.tlv(0x0100, &[&value]) {
            Ok(()) => added += 1,
            Err(e) => {
                assert_eq!(e, EncodeError::NoRoom);
                break;
            }
        }
    }
    assert_eq!(added, 3);
    let len = enc.finish();
    assert!(len <= MAX_FRAME_LEN);
    Frame::decode(&buf[..len], MAX_FRAME_LEN).unwrap();
}

// ---------------------------------------------------------------------------
// Decode errors
// ---------------------------------------------------------------------------

fn ack() -> Vec<u8> {
    encode(
        MessageType::Ack,
        SubType::None,
        3,
        &[(tlv::ACK_SEQ, &42u32.to_be_bytes())],
    )
}

#[test]
fn error_truncated_header() {
    let bytes = &ack()[..10];
    assert_decode_err(
        bytes,
        MAX_FRAME_LEN,
        DecodeError::Incomplete { need: 16, have: 10 },
        "truncated",
    );
    assert_eq!(
        decode_header(bytes, MAX_FRAME_LEN),
        Err(DecodeError::Incomplete { need: 16, have: 10 })
    );
    assert_decode_err(
        &[],
        MAX_FRAME_LEN,
        DecodeError::Incomplete { need: 16, have: 0 },
        "truncated",
    );
}

#[test]
fn error_truncated_body() {
    // Length field 24, only 20 bytes: the header alone is fine (a stream
    // reader learns it must wait for 4 more bytes), the frame is incomplete.
    let bytes = &ack()[..20];
    assert_eq!(decode_header(bytes, MAX_FRAME_LEN).unwrap().length, 24);
    assert_decode_err(
        bytes,
        MAX_FRAME_LEN,
        DecodeError::Incomplete { need: 24, have: 20 },
        "truncated",
    );
}

#[test]
fn error_trailing_bytes() {
    let mut bytes = ack();
    bytes.push(0);
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::BadLength(24),
        "bad_header",
    );
}

#[test]
fn error_bad_magic() {
    let mut bytes = ack();
    bytes[1] = b'X';
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::BadMagic([0x4d, 0x58]),
        "bad_magic",
    );
}

#[test]
fn error_major_version_2() {
    let mut bytes = ack();
    bytes[2] = 2;
    bytes[3] = 3;
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::IncompatibleVersion { major: 2, minor: 3 },
        "bad_version",
    );
    bytes[2] = 0;
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::IncompatibleVersion { major: 0, minor: 3 },
        "bad_version",
    );
}

#[test]
fn minor_version_9_is_accepted() {
    let mut bytes = ack();
    bytes[3] = 9;
    let frame = Frame::decode(&bytes, MAX_FRAME_LEN).unwrap();
    assert_eq!((frame.header.major, frame.header.minor), (1, 9));
    assert_eq!(frame.u32_of(tlv::ACK_SEQ), Some(42));
}

#[test]
fn error_unknown_message_type() {
    for t in [0u8, 6, 0xff] {
        let bytes = raw_header(wire::MAGIC, 1, 0, t, 0, 0, 0, 16);
        assert_decode_err(
            &bytes,
            MAX_FRAME_LEN,
            DecodeError::UnknownType(t),
            "unknown_type",
        );
    }
}

#[test]
fn error_unknown_sub_type() {
    let bytes = raw_header(wire::MAGIC, 1, 0, MessageType::Sync as u8, 5, 0, 0, 16);
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::UnknownSubType(5),
        "unknown_subtype",
    );
}

#[test]
fn error_sync_with_sub_type_none() {
    let bytes = raw_header(wire::MAGIC, 1, 0, 2, 0, 0, 0, 16);
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::SubTypeMismatch {
            msg_type: 2,
            sub_type: 0,
        },
        "unknown_subtype",
    );
}

#[test]
fn error_hello_with_sub_type_arp() {
    let bytes = raw_header(wire::MAGIC, 1, 0, 1, 1, 0, 0, 16);
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::SubTypeMismatch {
            msg_type: 1,
            sub_type: 1,
        },
        "unknown_subtype",
    );
}

#[test]
fn error_non_zero_flags() {
    for flags in [0x0001u16, 0x8000] {
        let bytes = raw_header(wire::MAGIC, 1, 0, 4, 0, flags, 0, 16);
        assert_decode_err(
            &bytes,
            MAX_FRAME_LEN,
            DecodeError::BadFlags(flags),
            "bad_header",
        );
    }
}

#[test]
fn error_length_below_header() {
    let bytes = raw_header(wire::MAGIC, 1, 0, 4, 0, 0, 0, 15);
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::BadLength(15),
        "bad_header",
    );
    assert_eq!(
        decode_header(&bytes, MAX_FRAME_LEN),
        Err(DecodeError::BadLength(15))
    );
    let bytes = raw_header(wire::MAGIC, 1, 0, 4, 0, 0, 0, 0);
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::BadLength(0),
        "bad_header",
    );
}

#[test]
fn error_length_above_max_len() {
    // The 24-byte ack is refused by a receiver that accepts at most 20 bytes,
    // from the header alone.
    let bytes = ack();
    assert_decode_err(&bytes, 20, DecodeError::BadLength(24), "bad_header");
    assert_eq!(
        decode_header(&bytes[..16], 23),
        Err(DecodeError::BadLength(24))
    );
    assert!(decode_header(&bytes[..16], 24).is_ok());
    // The protocol maximum applies even when the caller allows more.
    let big = raw_header(wire::MAGIC, 1, 0, 4, 0, 0, 0, MAX_FRAME_LEN as u32 + 1);
    assert_eq!(
        decode_header(&big, usize::MAX),
        Err(DecodeError::BadLength(MAX_FRAME_LEN as u32 + 1))
    );
    assert_decode_err(
        &big,
        usize::MAX,
        DecodeError::BadLength(MAX_FRAME_LEN as u32 + 1),
        "bad_header",
    );
}

#[test]
fn error_tlv_header_cut_short() {
    // Three bytes of body: not even a TLV header.
    let bytes = frame_with_body(MessageType::Keepalive, SubType::None, &[0x00, 0x04, 0x00]);
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::TlvOverrun { offset: 16 },
        "bad_tlv",
    );
    // After a complete ACK_SEQ TLV (bytes 16..24), two stray bytes.
    let mut body = raw_tlv(tlv::ACK_SEQ, 4, &[0, 0, 0, 1]);
    body.extend_from_slice(&[0x00, 0x10]);
    let bytes = frame_with_body(MessageType::Ack, SubType::None, &body);
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::TlvOverrun { offset: 24 },
        "bad_tlv",
    );
}

#[test]
fn error_tlv_value_past_end() {
    // ACK_SEQ says 8 bytes of value, the frame ends after 4.
    let bytes = frame_with_body(
        MessageType::Ack,
        SubType::None,
        &raw_tlv(tlv::ACK_SEQ, 8, &[0, 0, 0, 1]),
    );
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::TlvOverrun { offset: 16 },
        "bad_tlv",
    );
    // Same for an unknown optional TLV: skipping it still needs its bytes.
    let bytes = frame_with_body(MessageType::Ack, SubType::None, &raw_tlv(0x0100, 1, &[]));
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::TlvOverrun { offset: 16 },
        "bad_tlv",
    );
}

#[test]
fn error_unknown_must_understand_tlv() {
    let bytes = frame_with_body(
        MessageType::Hello,
        SubType::None,
        &raw_tlv(0x8fff, 2, &[1, 2]),
    );
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::UnknownMandatoryTlv(0x8fff),
        "unknown_tlv",
    );
    // ARP_ENTRY is only understood in a sync frame.
    let bytes = frame_with_body(
        MessageType::Hello,
        SubType::None,
        &raw_tlv(tlv::ARP_ENTRY, 0, &[]),
    );
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::UnknownMandatoryTlv(tlv::ARP_ENTRY),
        "unknown_tlv",
    );
    // The same type without the bit (0x0fff) is skipped.
    let bytes = frame_with_body(
        MessageType::Hello,
        SubType::None,
        &raw_tlv(0x0fff, 2, &[1, 2]),
    );
    let frame = Frame::decode(&bytes, MAX_FRAME_LEN).unwrap();
    assert_eq!(frame.find(0x0fff), Some(&[1u8, 2][..]));
}

#[test]
fn error_arp_entry_carrying_request() {
    let mut buf = [0u8; 256];
    let mut enc = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, 1).unwrap();
    enc.arp_entry(&DRIVER, &arp_frame(&[(0x8100, 10)], arp::ARP_OP_REQUEST))
        .unwrap();
    let len = enc.finish();
    assert_decode_err(
        &buf[..len],
        MAX_FRAME_LEN,
        DecodeError::BadTlvValue {
            tlv_type: tlv::ARP_ENTRY,
        },
        "bad_tlv",
    );
}

#[test]
fn error_arp_entry_frame_length_mismatch() {
    let mut buf = [0u8; 256];
    let mut enc = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, 1).unwrap();
    enc.arp_entry(&DRIVER, &arp_frame(&[(0x8100, 10)], arp::ARP_OP_REPLY))
        .unwrap();
    let len = enc.finish();
    assert!(Frame::decode(&buf[..len], MAX_FRAME_LEN).is_ok());
    // Driver header frame length (bytes 14..16 of the value, 34..36 of the
    // frame) says 45 while the value carries 46 bytes of frame.
    assert_eq!(buf[34..36], [0x00, 46]);
    for claimed in [45u8, 47, 0] {
        buf[35] = claimed;
        assert_decode_err(
            &buf[..len],
            MAX_FRAME_LEN,
            DecodeError::BadTlvValue {
                tlv_type: tlv::ARP_ENTRY,
            },
            "bad_tlv",
        );
    }
}

#[test]
fn error_arp_entry_other_bad_values() {
    let reply = arp_frame(&[], arp::ARP_OP_REPLY);
    // Shorter than a driver header.
    let bytes = frame_with_body(
        MessageType::Sync,
        SubType::Arp,
        &raw_tlv(tlv::ARP_ENTRY, 15, &[0; 15]),
    );
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::BadTlvValue {
            tlv_type: tlv::ARP_ENTRY,
        },
        "bad_tlv",
    );
    // vlan count 3.
    let bad = DriverHeader {
        vlan_count: 3,
        ..DRIVER
    };
    let mut buf = [0u8; 256];
    let mut enc = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, 1).unwrap();
    enc.arp_entry(&bad, &reply).unwrap();
    let len = enc.finish();
    assert_decode_err(
        &buf[..len],
        MAX_FRAME_LEN,
        DecodeError::BadTlvValue {
            tlv_type: tlv::ARP_ENTRY,
        },
        "bad_tlv",
    );
    // A truncated ARP reply.
    let mut enc = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, 1).unwrap();
    enc.arp_entry(&DRIVER, &reply[..reply.len() - 1]).unwrap();
    let len = enc.finish();
    assert_decode_err(
        &buf[..len],
        MAX_FRAME_LEN,
        DecodeError::BadTlvValue {
            tlv_type: tlv::ARP_ENTRY,
        },
        "bad_tlv",
    );
}

#[test]
fn error_system_id_of_5_bytes() {
    let bytes = encode(
        MessageType::Hello,
        SubType::None,
        1,
        &[(tlv::SYSTEM_ID, &[2, 0, 0, 0, 1])],
    );
    assert_decode_err(
        &bytes,
        MAX_FRAME_LEN,
        DecodeError::BadTlvValue {
            tlv_type: tlv::SYSTEM_ID,
        },
        "bad_tlv",
    );
}

#[test]
fn error_other_bad_known_values() {
    let cases: &[(MessageType, u16, &[u8])] = &[
        (MessageType::Hello, tlv::SYSTEM_NAME, &[0xff]), // not UTF-8
        (MessageType::Hello, tlv::SYSTEM_NAME, &[b'a'; 65]), // over 64 bytes
        (MessageType::Hello, tlv::CAPABILITIES, &[0, 0, 1]),
        (MessageType::Hello, tlv::BOOT_ID, &[0; 7]),
        (MessageType::Hello, tlv::MAX_FRAME, &[0; 5]),
        (MessageType::Hello, tlv::PORT, &[0; 9]),
        (MessageType::Hello, tlv::RESUME, &[0; 13]),
        (MessageType::Keepalive, tlv::BOOT_ID, &[0; 4]),
        (MessageType::Ack, tlv::ACK_SEQ, &[]),
    ];
    for (msg_type, t, value) in cases {
        let bytes = encode(*msg_type, SubType::None, 1, &[(*t, value)]);
        assert_decode_err(
            &bytes,
            MAX_FRAME_LEN,
            DecodeError::BadTlvValue { tlv_type: *t },
            "bad_tlv",
        );
    }
    // 64 bytes of UTF-8 is the longest name.
    let bytes = encode(
        MessageType::Hello,
        SubType::None,
        1,
        &[(tlv::SYSTEM_NAME, &[b'a'; 64])],
    );
    assert!(Frame::decode(&bytes, MAX_FRAME_LEN).is_ok());
}

#[test]
fn accessors_do_not_panic_on_short_unvalidated_values() {
    // An ack carrying a 0-byte BOOT_ID (BOOT_ID is only checked in hello and
    // keepalive, so the ack decoder skips it as unknown optional).
    let bytes = encode(
        MessageType::Ack,
        SubType::None,
        1,
        &[(tlv::ACK_SEQ, &[0, 0, 0, 1]), (tlv::BOOT_ID, &[])],
    );
    let frame = Frame::decode(&bytes, MAX_FRAME_LEN).unwrap();
    assert_eq!(
        std::panic::catch_unwind(|| frame.u64_of(tlv::BOOT_ID)).ok(),
        Some(None)
    );
    // A keepalive carrying a 2-byte CAPABILITIES.
    let bytes = encode(
        MessageType::Keepalive,
        SubType::None,
        1,
        &[(tlv::CAPABILITIES, &[0, 1])],
    );
    let frame = Frame::decode(&bytes, MAX_FRAME_LEN).unwrap();
    assert_eq!(
        std::panic::catch_unwind(|| frame.u32_of(tlv::CAPABILITIES)).ok(),
        Some(None)
    );
}

// ---------------------------------------------------------------------------
// Never panics
// ---------------------------------------------------------------------------

/// Reads everything a receiver may read from a decoded frame: every TLV,
/// every ARP entry, and the integer TLVs the frame's type validates.
fn exercise(frame: &Frame) {
    for t in frame.tlvs() {
        let _ = frame.find(t.tlv_type);
    }
    let tlv_count = frame
        .tlvs()
        .filter(|t| t.tlv_type == tlv::ARP_ENTRY)
        .count();
    // Every ARP entry TLV of a decoded sync frame was validated, so none is
    // dropped.
    assert_eq!(frame.arp_entries().count(), tlv_count);
    for e in frame.arp_entries() {
        assert!(matches!(arp::parse(e.frame), Parsed::ArpReply(_)));
        assert!(e.driver.vlan_count <= 2);
    }
    match frame.header.msg_type {
        MessageType::Hello => {
            let _ = frame.u32_of(tlv::CAPABILITIES);
            let _ = frame.u32_of(tlv::MAX_FRAME);
            let _ = frame.u64_of(tlv::BOOT_ID);
            let _ = frame.u64_of(tlv::RESUME);
            let _ = frame.u32_of(tlv::PORT);
        }
        MessageType::Keepalive => {
            let _ = frame.u64_of(tlv::BOOT_ID);
        }
        MessageType::Ack => {
            let _ = frame.u32_of(tlv::ACK_SEQ);
        }
        MessageType::Sync => {}
        MessageType::PortState => {
            let _ = frame.port_states().count();
        }
    }
}

fn valid_header_kind() -> impl Strategy<Value = (MessageType, SubType)> {
    prop_oneof![
        Just((MessageType::Hello, SubType::None)),
        Just((MessageType::Ack, SubType::None)),
        Just((MessageType::Keepalive, SubType::None)),
        Just((MessageType::PortState, SubType::None)),
        Just((MessageType::Sync, SubType::Arp)),
        Just((MessageType::Sync, SubType::Nd)),
        Just((MessageType::Sync, SubType::Igmp)),
        Just((MessageType::Sync, SubType::Mac)),
    ]
}

/// A TLV-shaped chunk: an interesting type, a length that is usually right,
/// and random bytes (sometimes an ARP entry, sometimes broken).
fn tlvish_strategy() -> impl Strategy<Value = Vec<u8>> {
    let tlv_type = prop_oneof![
        Just(tlv::SYSTEM_NAME),
        Just(tlv::SYSTEM_ID),
        Just(tlv::CAPABILITIES),
        Just(tlv::BOOT_ID),
        Just(tlv::MAX_FRAME),
        Just(tlv::PORT),
        Just(tlv::RESUME),
        Just(tlv::ACK_SEQ),
        Just(tlv::ARP_ENTRY),
        any::<u16>(),
    ];
    prop_oneof![
        4 => (tlv_type, prop::collection::vec(any::<u8>(), 0..16), prop::option::weighted(0.2, any::<u16>()))
            .prop_map(|(t, v, len)| raw_tlv(t, len.unwrap_or(v.len() as u16), &v)),
        1 => (driver_strategy(), arp_reply_strategy(), any::<Index>()).prop_map(|(d, f, cut)| {
            let mut v = Vec::new();
            v.extend_from_slice(&d.mlag_id.to_be_bytes());
            v.extend_from_slice(&[0; 8]);
            v.push(d.class);
            v.push(d.vlan_count);
            v.extend_from_slice(&(f.len() as u16).to_be_bytes());
            v.extend_from_slice(&f);
            // Usually whole; sometimes cut.
            let keep = if cut.index(4) == 0 { cut.index(v.len() + 1) } else { v.len() };
            raw_tlv(tlv::ARP_ENTRY, v.len() as u16, &v[..keep])
        }),
    ]
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048), max_len in any::<usize>()) {
        let _ = decode_header(&bytes, max_len);
        let _ = decode_header(&bytes, MAX_FRAME_LEN);
        if let Ok(frame) = Frame::decode(&bytes, max_len) {
            exercise(&frame);
        }
        if let Ok(frame) = Frame::decode(&bytes, MAX_FRAME_LEN) {
            exercise(&frame);
        }
    }

    #[test]
    fn decode_never_panics_behind_a_valid_header(
        (msg_type, sub_type) in valid_header_kind(),
        minor in any::<u8>(),
        seq in any::<u32>(),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut bytes = raw_header(wire::MAGIC, 1, minor, msg_type as u8, sub_type as u8, 0, seq, (HEADER_LEN + body.len()) as u32);
        bytes.extend_from_slice(&body);
        let header = decode_header(&bytes, MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(header.length as usize, bytes.len());
        if let Ok(frame) = Frame::decode(&bytes, MAX_FRAME_LEN) {
            prop_assert_eq!(frame.header, header);
            exercise(&frame);
        }
    }

    #[test]
    fn decode_never_panics_on_tlv_shaped_bodies(
        (msg_type, sub_type) in valid_header_kind(),
        chunks in prop::collection::vec(tlvish_strategy(), 0..12),
        cut in prop::option::weighted(0.2, any::<Index>()),
    ) {
        let mut body: Vec<u8> = chunks.concat();
        if let Some(cut) = cut {
            body.truncate(cut.index(body.len() + 1));
        }
        let bytes = frame_with_body(msg_type, sub_type, &body);
        if let Ok(frame) = Frame::decode(&bytes, MAX_FRAME_LEN) {
            exercise(&frame);
        }
        // Every prefix is refused as incomplete, never a panic.
        for n in [0, 1, HEADER_LEN - 1, HEADER_LEN, bytes.len().saturating_sub(1)] {
            if n < bytes.len() {
                prop_assert!(Frame::decode(&bytes[..n], MAX_FRAME_LEN).is_err());
            }
        }
    }
}

/// The end of a bulk resync: a sync frame with no entries and a SYNC_DONE
/// TLV (optional, no value), every byte written out.
#[test]
fn known_answer_sync_done() {
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x4d, 0x53,             // magic "MS"
        0x01, 0x01,             // version 1.1
        0x02,                   // message type: sync
        0x01,                   // sub-type: ARP
        0x00, 0x00,             // flags
        0x00, 0x00, 0x00, 0x0b, // seq 11
        0x00, 0x00, 0x00, 0x14, // length 20 = 16 + 4
        0x00, 0x12,             // TLV SYNC_DONE (optional: top bit clear)
        0x00, 0x00,             //   length 0
    ];
    let mut buf = [0u8; 64];
    let mut enc = Encoder::new(&mut buf, MessageType::Sync, SubType::Arp, 11).unwrap();
    enc.sync_done().unwrap();
    let len = enc.finish();
    assert_eq!(&buf[..len], expected);

    let frame = Frame::decode(expected, MAX_FRAME_LEN).unwrap();
    assert!(frame.is_sync_done());
    assert_eq!(frame.arp_entries().count(), 0);
    assert_eq!(tlv::SYNC_DONE & wire::TLV_MUST_UNDERSTAND, 0);

    // A value on it is malformed.
    let mut bad = expected.to_vec();
    bad[15] = 0x15;
    bad[19] = 0x01;
    bad.push(0x00);
    assert!(Frame::decode(&bad, MAX_FRAME_LEN).is_err());
}
