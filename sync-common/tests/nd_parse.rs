//! The ND rules (`sync_common::nd`): known-answer vectors, and property
//! tests against etherparse 0.21.
//!
//! Frames are written with etherparse's own header types (`Ethernet2Header`,
//! `SingleVlanHeader`, `Ipv6Header`, `Ipv6RawExtHeader`, `Icmpv6Header`) with
//! 0..=2 tags, 0..=3 Hop-by-Hop / Destination Options headers, random ICMPv6
//! type/code (mostly 136/0), hop limit, flags, target, padding and an
//! optional truncation; `SlicedPacket::from_ethernet` is the oracle.
//!
//! DIFFERENCES by design (the oracle states each):
//! * etherparse follows any number of extension headers; ours at most two
//!   (a third: `Unfollowed`).
//! * etherparse calls an ICMPv6 type 136 with fewer than 24 bytes an NA;
//!   ours `Malformed(TruncatedNa)`. Type 136 with code != 0 is `Unknown` to
//!   etherparse and `Malformed(BadNaCode)` to ours; hop limit != 255 is fine
//!   for etherparse and `Malformed(BadHopLimit)` for ours (the kernel drops
//!   both).

use etherparse::{
    EtherType, Ethernet2Header, Icmpv6Header, Icmpv6Type, IpNumber, Ipv6Header, Ipv6RawExtHeader,
    LinkSlice, NetSlice, SingleVlanHeader, SlicedPacket, TransportSlice, VlanId, VlanPcp,
};
use proptest::prelude::*;
use proptest::sample::Index;
use sync_common::nd::{self, Delivery, MalformedReason, Parsed};

/// A solicited NA from fd00:77::3 (02:00:00:00:0c:01) to fd00:77::1
/// (02:00:00:00:0a:01), target fd00:77::3 with its link-layer address;
/// checksum computed by hand.
const KNOWN_NA: &str = concat!(
    "020000000a01",
    "020000000c01",
    "86dd",
    "60000000",
    "0020",
    "3a",
    "ff",
    "fd000077000000000000000000000003",
    "fd000077000000000000000000000001",
    "8800",
    "0f34",
    "60000000",
    "fd000077000000000000000000000003",
    "0201",
    "020000000c01",
);

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn known_answer_untagged_na() {
    let frame = hex(KNOWN_NA);
    let Parsed::Advert(advert) = nd::parse(&frame[..]) else {
        panic!("{:?}", nd::parse(&frame[..]));
    };
    assert_eq!(advert.dst_mac, [2, 0, 0, 0, 0x0a, 1]);
    assert_eq!(advert.src_mac, [2, 0, 0, 0, 0x0c, 1]);
    assert_eq!(
        (advert.ip_offset, advert.na_offset, advert.ip_end),
        (14, 54, 86)
    );
    assert_eq!(advert.vlan_count, 0);
    assert!(advert.solicited());
    let a = nd::addresses(&frame[..], &advert).unwrap();
    assert_eq!(a.target[15], 3);
    assert_eq!(a.dst_ip[15], 1);
    assert_eq!(a.target_mac, Some([2, 0, 0, 0, 0x0c, 1]));
    // The checksum in the vector is right by our own sum as well.
    let src: [u8; 16] = frame[22..38].try_into().unwrap();
    let dst: [u8; 16] = frame[38..54].try_into().unwrap();
    assert_eq!(nd::icmpv6_checksum(&src, &dst, &frame[54..86]), 0);
}

#[test]
fn known_answer_double_tagged_and_cut_short() {
    let plain = hex(KNOWN_NA);
    let mut frame = plain[..12].to_vec();
    frame.extend_from_slice(&hex("88a8000681000007"));
    frame.extend_from_slice(&plain[12..]);
    let Parsed::Advert(advert) = nd::parse(&frame[..]) else {
        panic!("{:?}", nd::parse(&frame[..]));
    };
    assert_eq!(
        (advert.outer_vlan, advert.inner_vlan, advert.vlan_count),
        (6, 7, 2)
    );
    assert_eq!(advert.na_offset, 62);
    let cases: [(usize, MalformedReason); 4] = [
        (30, MalformedReason::TruncatedIpv6),
        (70, MalformedReason::TruncatedPayload),
        (93, MalformedReason::TruncatedPayload),
        (
            16,
            MalformedReason::Link(sync_common::arp::MalformedReason::TruncatedVlanTag),
        ),
    ];
    for (keep, reason) in cases {
        assert_eq!(
            nd::parse(&frame[..keep]),
            Parsed::Malformed(reason),
            "{keep}"
        );
    }
    // Padding after the packet is fine.
    let mut padded = frame.clone();
    padded.extend_from_slice(&[0; 10]);
    assert!(matches!(nd::parse(&padded[..]), Parsed::Advert(_)));
}

#[test]
fn known_answer_rewrite_to_all_nodes() {
    let mut frame = hex(KNOWN_NA);
    let Parsed::Advert(advert) = nd::parse(&frame[..]) else {
        panic!()
    };
    assert!(nd::rewrite(&mut frame, &advert, Delivery::AllNodes));
    assert_eq!(frame[..6], nd::ALL_NODES_MAC);
    assert_eq!(frame[38..54], nd::ALL_NODES);
    assert_eq!(frame[58], 0x20, "Solicited cleared, Override kept");
    let packet = SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(TransportSlice::Icmpv6(icmp)) = packet.transport else {
        panic!()
    };
    assert!(icmp.is_checksum_valid(frame[22..38].try_into().unwrap(), nd::ALL_NODES));
    let Parsed::Advert(again) = nd::parse(&frame[..]) else {
        panic!()
    };
    assert!(!again.solicited());
}

#[derive(Clone, Debug)]
struct Spec {
    dst: [u8; 6],
    src: [u8; 6],
    tags: Vec<(u16, u16)>,
    /// Extension header lengths in 8-byte units minus one; the first is
    /// Hop-by-Hop, the others Destination Options.
    ext: Vec<u8>,
    hop_limit: u8,
    icmp_type: u8,
    code: u8,
    flags: u8,
    body: Vec<u8>,
    padding: Vec<u8>,
    cut: Option<Index>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        prop::collection::vec(
            (prop_oneof![Just(0x8100u16), Just(0x88a8u16)], 0u16..4096),
            0..=2,
        ),
        prop::collection::vec(0u8..3, 0..=3),
        prop_oneof![4 => Just(255u8), 1 => any::<u8>()],
        prop_oneof![6 => Just(136u8), 1 => Just(135u8), 1 => any::<u8>()],
        prop_oneof![6 => Just(0u8), 1 => any::<u8>()],
        any::<u8>(),
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 24..=24),
            1 => prop::collection::vec(any::<u8>(), 0..40)
        ],
        prop::collection::vec(any::<u8>(), 0..12),
        prop::option::weighted(0.3, any::<Index>()),
    )
        .prop_map(
            |(dst, src, tags, ext, hop_limit, icmp_type, code, flags, body, padding, cut)| Spec {
                dst,
                src,
                tags,
                ext,
                hop_limit,
                icmp_type,
                code,
                flags,
                body,
                padding,
                cut,
            },
        )
}

const SRC_IP: [u8; 16] = [0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
const DST_IP: [u8; 16] = [0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn write(spec: &Spec) -> Vec<u8> {
    let mut icmp_body = vec![spec.flags, 0, 0, 0];
    icmp_body.extend_from_slice(&spec.body);
    let icmp = Icmpv6Header {
        icmp_type: Icmpv6Type::Unknown {
            type_u8: spec.icmp_type,
            code_u8: spec.code,
            bytes5to8: [spec.flags, 0, 0, 0],
        },
        checksum: 0,
    };
    let mut upper = Vec::new();
    icmp.write(&mut upper).unwrap();
    upper.extend_from_slice(&spec.body);
    let mut exts = Vec::new();
    for (i, len) in spec.ext.iter().enumerate() {
        let next = if i + 1 < spec.ext.len() {
            IpNumber::IPV6_DESTINATION_OPTIONS
        } else {
            IpNumber::IPV6_ICMP
        };
        let payload = vec![0u8; (*len as usize + 1) * 8 - 2];
        Ipv6RawExtHeader::new_raw(next, &payload)
            .unwrap()
            .write(&mut exts)
            .unwrap();
    }
    let first = match spec.ext.len() {
        0 => IpNumber::IPV6_ICMP,
        _ => IpNumber::IPV6_HEADER_HOP_BY_HOP,
    };
    let ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: (exts.len() + upper.len()) as u16,
        next_header: first,
        hop_limit: spec.hop_limit,
        source: SRC_IP,
        destination: DST_IP,
    };
    let mut f = Vec::new();
    let first_type = |i: usize| {
        spec.tags
            .get(i)
            .map_or(EtherType::IPV6, |(tpid, _)| EtherType(*tpid))
    };
    Ethernet2Header {
        source: spec.src,
        destination: spec.dst,
        ether_type: first_type(0),
    }
    .write(&mut f)
    .unwrap();
    for (i, (_, vid)) in spec.tags.iter().enumerate() {
        SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(*vid).unwrap(),
            ether_type: first_type(i + 1),
        }
        .write(&mut f)
        .unwrap();
    }
    ip.write(&mut f).unwrap();
    f.extend_from_slice(&exts);
    f.extend_from_slice(&upper);
    f.extend_from_slice(&spec.padding);
    if let Some(cut) = &spec.cut {
        let keep = cut.index(f.len() + 1);
        f.truncate(keep);
    }
    f
}

fn check(spec: &Spec, frame: &[u8]) -> Result<(), TestCaseError> {
    let ours = nd::parse(frame);
    let theirs = match SlicedPacket::from_ethernet(frame) {
        Err(err) => {
            prop_assert!(
                matches!(ours, Parsed::Malformed(_)),
                "etherparse: {err:?}, ours {ours:?}"
            );
            return Ok(());
        }
        Ok(p) => p,
    };
    let Some(NetSlice::Ipv6(ipv6)) = &theirs.net else {
        return Err(TestCaseError::fail(format!("no IPv6: {theirs:?}")));
    };
    // DIFFERENCE: at most two extension headers followed.
    if spec.ext.len() > nd::MAX_EXT_HEADERS {
        prop_assert_eq!(ours, Parsed::Unfollowed);
        return Ok(());
    }
    let Some(TransportSlice::Icmpv6(icmp)) = &theirs.transport else {
        return Err(TestCaseError::fail("no ICMPv6"));
    };
    if icmp.type_u8() != nd::ICMPV6_NA {
        prop_assert_eq!(ours, Parsed::Other);
        return Ok(());
    }
    // DIFFERENCES: length, code and hop limit rules of ND.
    if icmp.slice().len() < nd::NA_LEN {
        prop_assert_eq!(ours, Parsed::Malformed(MalformedReason::TruncatedNa));
        return Ok(());
    }
    if icmp.code_u8() != 0 {
        let unknown = matches!(icmp.icmp_type(), Icmpv6Type::Unknown { .. });
        prop_assert!(unknown);
        prop_assert_eq!(ours, Parsed::Malformed(MalformedReason::BadNaCode));
        return Ok(());
    }
    let is_na = matches!(icmp.icmp_type(), Icmpv6Type::NeighborAdvertisement(_));
    prop_assert!(is_na);
    if ipv6.header().hop_limit() != nd::ND_HOP_LIMIT {
        prop_assert_eq!(ours, Parsed::Malformed(MalformedReason::BadHopLimit));
        return Ok(());
    }
    let Parsed::Advert(advert) = ours else {
        return Err(TestCaseError::fail(format!("ours {ours:?}")));
    };
    let Some(LinkSlice::Ethernet2(eth)) = &theirs.link else {
        return Err(TestCaseError::fail("no Ethernet"));
    };
    let ids: Vec<u16> = theirs.vlan_ids().iter().map(|v| v.value()).collect();
    prop_assert_eq!(advert.dst_mac, eth.destination());
    prop_assert_eq!(advert.vlan_count as usize, ids.len());
    prop_assert_eq!(advert.outer_vlan, ids.first().copied().unwrap_or(0));
    prop_assert_eq!(advert.inner_vlan, ids.get(1).copied().unwrap_or(0));
    prop_assert_eq!(&advert.target[..], &icmp.payload()[..16]);
    prop_assert_eq!(advert.flags, icmp.bytes5to8()[0]);
    prop_assert_eq!(
        advert.na_offset as usize + icmp.slice().len(),
        advert.ip_end as usize
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn nd_rules_agree_with_etherparse(spec in spec()) {
        let frame = write(&spec);
        check(&spec, &frame)?;
    }

    /// The classifier's early exit reads every IPv6 frame, tagged or not,
    /// cut short or whole, through to the ND rules.
    #[test]
    fn the_early_exit_keeps_every_ipv6_frame(spec in spec(), cut in any::<Index>()) {
        let frame = write(&spec);
        let frame = &frame[..cut.index(frame.len() + 1)];
        let full = sync_common::arp::link(frame);
        let early = sync_common::arp::link_if_may_hold_reply(frame);
        prop_assert_eq!(early, full.map(Some));
    }

    /// Whatever an advertisement looked like, the rewrite for this
    /// switch's kernel leaves a valid checksum (by etherparse) and an
    /// advertisement the rules still find.
    #[test]
    fn rewrite_keeps_a_valid_advert(spec in spec(), unicast in any::<bool>()) {
        let mut spec = spec;
        spec.cut = None;
        let mut frame = write(&spec);
        let Parsed::Advert(advert) = nd::parse(&frame[..]) else {
            return Ok(());
        };
        let delivery = if unicast {
            Delivery::Unicast { mac: [2, 0, 0, 0, 0x0a, 0x99] }
        } else {
            Delivery::AllNodes
        };
        prop_assert!(nd::rewrite(&mut frame, &advert, delivery));
        let Parsed::Advert(after) = nd::parse(&frame[..]) else {
            return Err(TestCaseError::fail("not an advert after the rewrite"));
        };
        let packet = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = packet.transport else {
            return Err(TestCaseError::fail("no ICMPv6 after the rewrite"));
        };
        let dst: [u8; 16] = frame[after.ip_offset as usize + 24..after.ip_offset as usize + 40]
            .try_into()
            .unwrap();
        prop_assert!(icmp.is_checksum_valid(SRC_IP, dst));
        if !unicast {
            prop_assert!(!after.solicited());
            prop_assert_eq!(dst, nd::ALL_NODES);
        }
    }
}

/// The ND sync frame of the fuzz seeds decodes to one entry and one
/// delete, and encoding them again gives the same bytes.
#[test]
fn nd_sync_frame_seed_round_trips() {
    use sync_common::wire::{Encoder, Frame, MessageType, SubType};
    let seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/sync_nd")).unwrap();
    let frame = Frame::decode(&seed, 1 << 16).unwrap();
    assert_eq!(frame.header.sub_type, SubType::Nd);
    let entries: Vec<_> = frame.nd_entries().collect();
    let deletes: Vec<_> = frame.nd_deletes().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].frame, &hex(KNOWN_NA)[..]);
    assert_eq!(entries[0].driver.mlag_id, 1);
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].ip[15], 9);
    assert_eq!(frame.arp_entries().count(), 0);
    let mut buf = vec![0u8; 512];
    let mut e = Encoder::new(&mut buf, MessageType::Sync, SubType::Nd, 5).unwrap();
    e.nd_entry(&entries[0].driver, entries[0].frame).unwrap();
    e.nd_delete(&deletes[0]).unwrap();
    let len = e.finish();
    assert_eq!(&buf[..len], &seed[..]);
}

/// An ND entry whose frame is not an advertisement makes the frame bad
/// (the entry TLV is must-understand and checked like ARP's).
#[test]
fn nd_entry_with_a_non_advert_frame_is_refused() {
    use sync_common::wire::{DecodeError, Frame, tlv};
    let mut seed =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/sync_nd")).unwrap();
    // The ICMPv6 type inside the entry's frame: 136 -> 135.
    let at = 16 + 4 + 16 + 54;
    assert_eq!(seed[at], 136);
    seed[at] = 135;
    assert_eq!(
        Frame::decode(&seed, 1 << 16).unwrap_err(),
        DecodeError::BadTlvValue {
            tlv_type: tlv::ND_ENTRY
        }
    );
}
