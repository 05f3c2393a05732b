//! Property tests: `sync_common::arp::parse` against etherparse 0.21.
//!
//! Frames are built from etherparse's own header types (`Ethernet2Header`,
//! `SingleVlanHeader`, `ArpPacket`, `Ipv4Header`) with 0, 1 or 2 VLAN tags,
//! random MACs/IPs/opcodes, random trailing padding and an optional random
//! truncation. Each frame is then sliced by `SlicedPacket::from_ethernet`
//! (which exposes the VLAN ids through `vlan_ids()` and ARP through
//! `net: Some(NetSlice::Arp(_))`) and our verdict must follow from etherparse's.
//!
//! Where the two parsers differ *by design*, the generator stays clear of the
//! corner or the oracle states the difference explicitly; each such place is
//! marked `DIFFERENCE:` and the differences are pinned by their own tests at
//! the bottom of this file:
//!
//! * etherparse looks through up to three link extensions, treats 0x9100 as a
//!   VLAN TPID and parses MACsec (0x88e5); our rules look through at most two
//!   tags and only 0x8100/0x88a8. The generator only emits 0x8100/0x88a8 tags,
//!   at most two, and never picks 0x8100/0x88a8/0x9100/0x88e5 as the payload
//!   ethertype.
//! * etherparse accepts an ARP packet with any address lengths; for an
//!   Ethernet/IPv4 ARP (htype 1, ptype 0x0800) whose lengths are not 6/4 ours
//!   says `Malformed(BadArpAddressLength)`.
//! * etherparse reports a length error for any ARP packet shorter than its
//!   declared address lengths; ours stops at htype/ptype and says `Other` for a
//!   non-Ethernet/IPv4 ARP once its 8-byte fixed header is present, and
//!   `BadArpAddressLength` (not `TruncatedArp`) for an Ethernet/IPv4 ARP with
//!   wrong lengths.

use etherparse::err::Layer;
use etherparse::err::packet::SliceError;
use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, ArpPacketSlice, EtherType, Ethernet2Header, IpNumber,
    Ipv4Header, LinkSlice, NetSlice, SingleVlanHeader, SlicedPacket, VlanId, VlanPcp,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use sync_common::arp::{self, MalformedReason, Parsed};

// ---------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Tag {
    tpid: u16,
    pcp: u8,
    dei: bool,
    vid: u16,
}

#[derive(Clone, Debug)]
struct ArpSpec {
    htype: u16,
    ptype: u16,
    opcode: u16,
    sha: Vec<u8>,
    spa: Vec<u8>,
    tha: Vec<u8>,
    tpa: Vec<u8>,
}

impl ArpSpec {
    fn is_eth_ipv4(&self) -> bool {
        self.htype == 1 && self.ptype == 0x0800
    }
    fn has_eth_ipv4_lengths(&self) -> bool {
        self.sha.len() == 6 && self.spa.len() == 4
    }
}

#[derive(Clone, Debug)]
enum Payload {
    Arp(ArpSpec),
    Ipv4 {
        src: [u8; 4],
        dst: [u8; 4],
        protocol: u8,
        data: Vec<u8>,
    },
    Other {
        ether_type: u16,
        data: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
struct FrameSpec {
    dst: [u8; 6],
    src: [u8; 6],
    tags: Vec<Tag>,
    payload: Payload,
    padding: Vec<u8>,
    /// Cut the frame (after padding) to `cut.index(len + 1)` bytes.
    cut: Option<Index>,
}

fn tag_strategy() -> impl Strategy<Value = Tag> {
    (
        prop_oneof![Just(0x8100u16), Just(0x88a8u16)],
        0u8..8,
        any::<bool>(),
        0u16..4096,
    )
        .prop_map(|(tpid, pcp, dei, vid)| Tag {
            tpid,
            pcp,
            dei,
            vid,
        })
}

fn opcode_strategy() -> impl Strategy<Value = u16> {
    prop_oneof![3 => Just(1u16), 3 => Just(2u16), 1 => any::<u16>()]
}

fn arp_strategy() -> impl Strategy<Value = ArpSpec> {
    let htype = prop_oneof![8 => Just(1u16), 1 => any::<u16>()];
    let ptype = prop_oneof![8 => Just(0x0800u16), 1 => any::<u16>()];
    let hlen = prop_oneof![8 => Just(6usize), 1 => 0usize..=16];
    let plen = prop_oneof![8 => Just(4usize), 1 => 0usize..=16];
    (htype, ptype, opcode_strategy(), hlen, plen).prop_flat_map(
        |(htype, ptype, opcode, hlen, plen)| {
            (
                prop::collection::vec(any::<u8>(), hlen),
                prop::collection::vec(any::<u8>(), plen),
                prop::collection::vec(any::<u8>(), hlen),
                prop::collection::vec(any::<u8>(), plen),
            )
                .prop_map(move |(sha, spa, tha, tpa)| ArpSpec {
                    htype,
                    ptype,
                    opcode,
                    sha,
                    spa,
                    tha,
                    tpa,
                })
        },
    )
}

/// An Ethernet/IPv4 ARP with 6/4 address lengths and opcode 1, 2 or random.
fn eth_ipv4_arp_strategy() -> impl Strategy<Value = ArpSpec> {
    (
        opcode_strategy(),
        any::<[u8; 6]>(),
        any::<[u8; 4]>(),
        any::<[u8; 6]>(),
        any::<[u8; 4]>(),
    )
        .prop_map(|(opcode, sha, spa, tha, tpa)| ArpSpec {
            htype: 1,
            ptype: 0x0800,
            opcode,
            sha: sha.to_vec(),
            spa: spa.to_vec(),
            tha: tha.to_vec(),
            tpa: tpa.to_vec(),
        })
}

/// Ethertypes for the "something else" payload. DIFFERENCE: 0x8100, 0x88a8,
/// 0x9100 and 0x88e5 are excluded (see the module docs); ARP and IPv4 have
/// their own payload kinds.
fn other_ether_type_strategy() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0x86ddu16), // IPv6
        Just(0x0842u16), // Wake-on-LAN
        any::<u16>(),
    ]
    .prop_filter("no VLAN/MACsec/ARP/IPv4 ethertype", |t| {
        !matches!(*t, 0x8100 | 0x88a8 | 0x9100 | 0x88e5 | 0x0806 | 0x0800)
    })
}

fn payload_strategy() -> impl Strategy<Value = Payload> {
    prop_oneof![
        6 => arp_strategy().prop_map(Payload::Arp),
        1 => (any::<[u8; 4]>(), any::<[u8; 4]>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(src, dst, protocol, data)| Payload::Ipv4 { src, dst, protocol, data }),
        1 => (other_ether_type_strategy(), prop::collection::vec(any::<u8>(), 0..60))
            .prop_map(|(ether_type, data)| Payload::Other { ether_type, data }),
    ]
}

fn frame_strategy() -> impl Strategy<Value = FrameSpec> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        prop::collection::vec(tag_strategy(), 0..=2),
        payload_strategy(),
        prop::collection::vec(any::<u8>(), 0..32),
        prop::option::weighted(0.3, any::<Index>()),
    )
        .prop_map(|(dst, src, tags, payload, padding, cut)| FrameSpec {
            dst,
            src,
            tags,
            payload,
            padding,
            cut,
        })
}

fn payload_ether_type(payload: &Payload) -> u16 {
    match payload {
        Payload::Arp(_) => 0x0806,
        Payload::Ipv4 { .. } => 0x0800,
        Payload::Other { ether_type, .. } => *ether_type,
    }
}

/// Writes the frame with etherparse's header types.
fn build(spec: &FrameSpec) -> Vec<u8> {
    let inner_type = payload_ether_type(&spec.payload);
    // The ethertype in each header is the TPID of the next tag, or finally
    // the payload's ethertype.
    let mut next_types: Vec<u16> = spec.tags.iter().map(|t| t.tpid).collect();
    next_types.push(inner_type);

    let mut out = Vec::new();
    let eth = Ethernet2Header {
        source: spec.src,
        destination: spec.dst,
        ether_type: EtherType(next_types[0]),
    };
    out.extend_from_slice(&eth.to_bytes());
    for (i, t) in spec.tags.iter().enumerate() {
        let vlan = SingleVlanHeader {
            pcp: VlanPcp::try_new(t.pcp).unwrap(),
            drop_eligible_indicator: t.dei,
            vlan_id: VlanId::try_new(t.vid).unwrap(),
            ether_type: EtherType(next_types[i + 1]),
        };
        out.extend_from_slice(&vlan.to_bytes());
    }
    match &spec.payload {
        Payload::Arp(a) => {
            let packet = ArpPacket::new(
                ArpHardwareId(a.htype),
                EtherType(a.ptype),
                ArpOperation(a.opcode),
                &a.sha,
                &a.spa,
                &a.tha,
                &a.tpa,
            )
            .unwrap();
            out.extend_from_slice(&packet.to_bytes());
        }
        Payload::Ipv4 {
            src,
            dst,
            protocol,
            data,
        } => {
            let header =
                Ipv4Header::new(data.len() as u16, 64, IpNumber(*protocol), *src, *dst).unwrap();
            out.extend_from_slice(&header.to_bytes());
            out.extend_from_slice(data);
        }
        Payload::Other { data, .. } => out.extend_from_slice(data),
    }
    out.extend_from_slice(&spec.padding);
    if let Some(cut) = &spec.cut {
        let len = cut.index(out.len() + 1);
        out.truncate(len);
    }
    out
}

// ---------------------------------------------------------------------------
// Oracle
// ---------------------------------------------------------------------------

/// Which branch of the oracle a frame went through (used to check that the
/// generator reaches all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Verdict {
    Reply,
    NonReplyArp,
    NonEthIpv4Arp,
    BadLengths,
    NotArp,
    TruncatedEthernet,
    TruncatedVlan,
    TruncatedArp,
    TruncatedNonEthIpv4Arp,
    NotArpError,
}

fn offset_in(frame: &[u8], sub: &[u8]) -> usize {
    let start = frame.as_ptr() as usize;
    let at = sub.as_ptr() as usize;
    assert!(at >= start && at + sub.len() <= start + frame.len());
    at - start
}

fn check_arp_against_etherparse(
    frame: &[u8],
    ours: Parsed,
    eth_dst: [u8; 6],
    vlan_ids: &[u16],
    a: &ArpPacketSlice<'_>,
) -> Result<Verdict, TestCaseError> {
    let eth_ipv4 =
        a.hw_addr_type() == ArpHardwareId::ETHERNET && a.proto_addr_type() == EtherType::IPV4;
    if !eth_ipv4 {
        prop_assert_eq!(ours, Parsed::Other);
        return Ok(Verdict::NonEthIpv4Arp);
    }
    if a.hw_addr_size() != 6 || a.proto_addr_size() != 4 {
        // DIFFERENCE: etherparse slices an Ethernet/IPv4 ARP with any address
        // lengths; our rules call it malformed.
        prop_assert_eq!(
            ours,
            Parsed::Malformed(MalformedReason::BadArpAddressLength)
        );
        return Ok(Verdict::BadLengths);
    }
    if a.operation() != ArpOperation::REPLY {
        prop_assert_eq!(ours, Parsed::Other);
        return Ok(Verdict::NonReplyArp);
    }
    let Parsed::ArpReply(r) = ours else {
        return Err(TestCaseError::fail(format!(
            "etherparse sees an ARP reply, ours says {ours:?}"
        )));
    };
    prop_assert!(vlan_ids.len() <= 2);
    prop_assert_eq!(r.dst_mac, eth_dst);
    prop_assert_eq!(r.vlan_count as usize, vlan_ids.len());
    prop_assert_eq!(r.outer_vlan, vlan_ids.first().copied().unwrap_or(0));
    prop_assert_eq!(r.inner_vlan, vlan_ids.get(1).copied().unwrap_or(0));
    let arp_offset = offset_in(frame, a.slice());
    prop_assert_eq!(r.arp_offset as usize, arp_offset);
    prop_assert_eq!(arp_offset, 14 + 4 * vlan_ids.len());
    let Some(addrs) = arp::addresses(frame, r.arp_offset as usize) else {
        return Err(TestCaseError::fail(
            "addresses() is None for a parsed reply",
        ));
    };
    prop_assert_eq!(addrs.opcode, a.operation().0);
    prop_assert_eq!(&addrs.sender_mac[..], a.sender_hw_addr());
    prop_assert_eq!(&addrs.sender_ip[..], a.sender_protocol_addr());
    prop_assert_eq!(&addrs.target_mac[..], a.target_hw_addr());
    prop_assert_eq!(&addrs.target_ip[..], a.target_protocol_addr());
    Ok(Verdict::Reply)
}

/// Checks our verdict on `frame` against etherparse's. `spec` is only
/// consulted where etherparse's error does not carry the ARP header fields
/// (a truncated ARP packet).
fn check(spec: &FrameSpec, frame: &[u8]) -> Result<Verdict, TestCaseError> {
    let ours = arp::parse(frame);
    match SlicedPacket::from_ethernet(frame) {
        Ok(p) => {
            let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
                return Err(TestCaseError::fail(format!(
                    "etherparse link is {:?}",
                    p.link
                )));
            };
            let vlan_ids: Vec<u16> = p.vlan_ids().iter().map(|v| v.value()).collect();
            // The generator never produces more than two tags.
            prop_assert!(
                vlan_ids.len() <= 2,
                "etherparse saw {} tags",
                vlan_ids.len()
            );
            match &p.net {
                Some(NetSlice::Arp(a)) => {
                    check_arp_against_etherparse(frame, ours, eth.destination(), &vlan_ids, a)
                }
                _ => {
                    prop_assert_eq!(ours, Parsed::Other);
                    Ok(Verdict::NotArp)
                }
            }
        }
        Err(SliceError::Len(e)) if e.layer == Layer::Ethernet2Header => {
            prop_assert_eq!(ours, Parsed::Malformed(MalformedReason::TruncatedEthernet));
            Ok(Verdict::TruncatedEthernet)
        }
        Err(SliceError::Len(e)) if e.layer == Layer::VlanHeader => {
            prop_assert_eq!(ours, Parsed::Malformed(MalformedReason::TruncatedVlanTag));
            Ok(Verdict::TruncatedVlan)
        }
        Err(SliceError::Len(e)) if e.layer == Layer::Arp => {
            // etherparse: ARP shorter than its 8-byte fixed header, or than
            // 8 + 2*hlen + 2*plen.
            let arp_bytes = frame.len() - e.layer_start_offset;
            prop_assert_eq!(e.layer_start_offset, 14 + 4 * spec.tags.len());
            let Payload::Arp(a) = &spec.payload else {
                return Err(TestCaseError::fail(
                    "etherparse ARP error on a non-ARP frame",
                ));
            };
            if arp_bytes < 8 {
                prop_assert_eq!(ours, Parsed::Malformed(MalformedReason::TruncatedArp));
                Ok(Verdict::TruncatedArp)
            } else if !a.is_eth_ipv4() {
                // DIFFERENCE: etherparse errors, ours never looks past
                // htype/ptype of a non-Ethernet/IPv4 ARP.
                prop_assert_eq!(ours, Parsed::Other);
                Ok(Verdict::TruncatedNonEthIpv4Arp)
            } else if !a.has_eth_ipv4_lengths() {
                // DIFFERENCE: wrong lengths are reported before truncation.
                prop_assert_eq!(
                    ours,
                    Parsed::Malformed(MalformedReason::BadArpAddressLength)
                );
                Ok(Verdict::BadLengths)
            } else {
                prop_assert_eq!(ours, Parsed::Malformed(MalformedReason::TruncatedArp));
                Ok(Verdict::TruncatedArp)
            }
        }
        Err(e) => {
            // Errors further in (IPv4/IPv6/TCP/UDP/...): not ARP, we pass it.
            prop_assert!(
                !matches!(spec.payload, Payload::Arp(_)),
                "etherparse error {e:?} on an ARP frame"
            );
            prop_assert_eq!(ours, Parsed::Other);
            Ok(Verdict::NotArpError)
        }
    }
}

/// Independent of etherparse: a whole (uncut) Ethernet/IPv4 reply built by the
/// generator is a reply with exactly the generated tags and addresses.
fn check_against_spec(spec: &FrameSpec, frame: &[u8]) -> Result<(), TestCaseError> {
    let Payload::Arp(a) = &spec.payload else {
        return Ok(());
    };
    let whole = frame.len()
        == build(&FrameSpec {
            cut: None,
            ..spec.clone()
        })
        .len();
    if !(whole && a.is_eth_ipv4() && a.has_eth_ipv4_lengths() && a.opcode == 2) {
        return Ok(());
    }
    let Parsed::ArpReply(r) = arp::parse(frame) else {
        return Err(TestCaseError::fail("generated reply not parsed as a reply"));
    };
    prop_assert_eq!(r.dst_mac, spec.dst);
    prop_assert_eq!(r.vlan_count as usize, spec.tags.len());
    prop_assert_eq!(r.outer_vlan, spec.tags.first().map_or(0, |t| t.vid));
    prop_assert_eq!(r.inner_vlan, spec.tags.get(1).map_or(0, |t| t.vid));
    let addrs = arp::addresses(frame, r.arp_offset as usize).unwrap();
    prop_assert_eq!(&addrs.sender_mac[..], &a.sha[..]);
    prop_assert_eq!(&addrs.sender_ip[..], &a.spa[..]);
    prop_assert_eq!(&addrs.target_mac[..], &a.tha[..]);
    prop_assert_eq!(&addrs.target_ip[..], &a.tpa[..]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]

    #[test]
    fn parse_agrees_with_etherparse(spec in frame_strategy()) {
        let frame = build(&spec);
        check(&spec, &frame)?;
        check_against_spec(&spec, &frame)?;
    }

    #[test]
    fn truncated_eth_ipv4_arp_is_malformed(
        tags in prop::collection::vec(tag_strategy(), 0..=2),
        arp in eth_ipv4_arp_strategy(),
        dst in any::<[u8; 6]>(),
        cut in 0usize..28,
    ) {
        let spec = FrameSpec { dst, src: [2, 0, 0, 0, 0, 1], tags, payload: Payload::Arp(arp), padding: vec![], cut: None };
        let mut frame = build(&spec);
        let arp_offset = 14 + 4 * spec.tags.len();
        frame.truncate(arp_offset + cut);
        prop_assert_eq!(arp::parse(frame.as_slice()), Parsed::Malformed(MalformedReason::TruncatedArp));
        // And etherparse agrees that the ARP layer is too short.
        match SlicedPacket::from_ethernet(&frame) {
            Err(SliceError::Len(e)) => prop_assert_eq!(e.layer, Layer::Arp),
            other => prop_assert!(false, "etherparse: {:?}", other),
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_invariants(&bytes)?;
    }

    /// Arbitrary bytes behind a plausible prefix, so the deeper branches are
    /// reached too.
    #[test]
    fn parse_never_panics_behind_a_plausible_prefix(
        tpids in prop::collection::vec(prop_oneof![Just(0x8100u16), Just(0x88a8u16), any::<u16>()], 0..=3),
        last in prop_oneof![Just(0x0806u16), any::<u16>()],
        rest in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = vec![0u8; 12];
        for tpid in &tpids {
            bytes.extend_from_slice(&tpid.to_be_bytes());
            bytes.extend_from_slice(&[0x0f, 0xff]);
        }
        bytes.extend_from_slice(&last.to_be_bytes());
        bytes.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 0x06, 0x04]);
        bytes.extend_from_slice(&rest);
        for len in 0..=bytes.len() {
            check_invariants(&bytes[..len])?;
        }
    }
}

/// What must hold for any input: no panic, a reply really has a full
/// Ethernet/IPv4 reply at `arp_offset`, and the classifier's early exit
/// (`link_if_may_hold_reply`) passes over only frames that neither the ARP
/// nor the ND rules would have followed or called malformed.
fn check_invariants(bytes: &[u8]) -> Result<(), TestCaseError> {
    let full = arp::link(bytes);
    match arp::link_if_may_hold_reply(bytes) {
        Ok(Some(link)) => prop_assert_eq!(Ok(link), full),
        Err(reason) => prop_assert_eq!(Err(reason), full),
        Ok(None) => {
            let Ok(link) = full else {
                return Err(TestCaseError::fail(format!(
                    "passed over, yet link() says {full:?}"
                )));
            };
            prop_assert!(matches!(arp::parse_after(bytes, &link), Parsed::Other));
            prop_assert!(matches!(
                sync_common::nd::parse_after(bytes, &link),
                sync_common::nd::Parsed::Other
            ));
        }
    }
    if let Parsed::ArpReply(r) = arp::parse(bytes) {
        prop_assert!(r.vlan_count <= 2);
        prop_assert_eq!(r.arp_offset as usize, 14 + 4 * r.vlan_count as usize);
        prop_assert!(bytes.len() >= r.arp_offset as usize + 28);
        prop_assert_eq!(&r.dst_mac[..], &bytes[..6]);
        prop_assert!(r.outer_vlan < 4096 && r.inner_vlan < 4096);
        let addrs = arp::addresses(bytes, r.arp_offset as usize);
        prop_assert_eq!(addrs.map(|a| a.opcode), Some(2));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generator coverage and the documented differences
// ---------------------------------------------------------------------------

/// The generator reaches every branch of the oracle (otherwise the property
/// above could pass by never testing, say, truncated VLAN tags).
#[test]
fn generator_reaches_every_oracle_branch() {
    use proptest::strategy::ValueTree;
    use std::collections::BTreeMap;

    let mut runner = TestRunner::deterministic();
    let strategy = frame_strategy();
    let mut seen: BTreeMap<Verdict, usize> = BTreeMap::new();
    for _ in 0..2000 {
        let spec = strategy.new_tree(&mut runner).unwrap().current();
        let frame = build(&spec);
        let verdict =
            check(&spec, &frame).unwrap_or_else(|e| panic!("{e}\n{spec:?}\n{frame:02x?}"));
        *seen.entry(verdict).or_default() += 1;
    }
    for verdict in [
        Verdict::Reply,
        Verdict::NonReplyArp,
        Verdict::NonEthIpv4Arp,
        Verdict::BadLengths,
        Verdict::NotArp,
        Verdict::TruncatedEthernet,
        Verdict::TruncatedVlan,
        Verdict::TruncatedArp,
        Verdict::TruncatedNonEthIpv4Arp,
        Verdict::NotArpError,
    ] {
        assert!(
            seen.get(&verdict).copied().unwrap_or(0) > 0,
            "{verdict:?} never reached: {seen:?}"
        );
    }
}

fn reply_with_tpids(tpids: &[u16]) -> Vec<u8> {
    let arp = etherparse::ArpEthIpv4Packet {
        operation: ArpOperation::REPLY,
        sender_mac: [2, 0, 0, 0, 0, 1],
        sender_ipv4: [192, 0, 2, 1],
        target_mac: [2, 0, 0, 0, 0, 2],
        target_ipv4: [192, 0, 2, 2],
    };
    let mut next: Vec<u16> = tpids.to_vec();
    next.push(0x0806);
    let mut out = Ethernet2Header {
        source: [2, 0, 0, 0, 0, 1],
        destination: [2, 0, 0, 0, 0, 2],
        ether_type: EtherType(next[0]),
    }
    .to_bytes()
    .to_vec();
    for (i, _) in tpids.iter().enumerate() {
        let vlan = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(10 + i as u16).unwrap(),
            ether_type: EtherType(next[i + 1]),
        };
        out.extend_from_slice(&vlan.to_bytes());
    }
    out.extend_from_slice(&arp.to_bytes());
    out
}

fn etherparse_sees_reply(frame: &[u8]) -> bool {
    matches!(
        SlicedPacket::from_ethernet(frame),
        Ok(SlicedPacket { net: Some(NetSlice::Arp(ref a)), .. }) if a.operation() == ArpOperation::REPLY
    )
}

/// DIFFERENCE: three tags. etherparse looks through up to three link
/// extensions; our rules stop at two and pass the frame.
#[test]
fn difference_three_tags_etherparse_sees_reply_ours_other() {
    let f = reply_with_tpids(&[0x88a8, 0x8100, 0x8100]);
    assert!(etherparse_sees_reply(&f));
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

/// DIFFERENCE: 0x9100 TPID. etherparse treats it as a VLAN tag; our rules only
/// know 0x8100 and 0x88a8.
#[test]
fn difference_9100_tag_etherparse_sees_reply_ours_other() {
    let f = reply_with_tpids(&[0x9100]);
    assert!(etherparse_sees_reply(&f));
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

/// DIFFERENCE: an Ethernet/IPv4 ARP reply with hlen 8 is a valid ARP packet to
/// etherparse and malformed to us.
#[test]
fn difference_eth_ipv4_arp_with_hlen_8_etherparse_ok_ours_malformed() {
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REPLY,
        &[1; 8],
        &[2; 4],
        &[3; 8],
        &[4; 4],
    )
    .unwrap();
    let mut f = Ethernet2Header {
        source: [2; 6],
        destination: [4; 6],
        ether_type: EtherType::ARP,
    }
    .to_bytes()
    .to_vec();
    f.extend_from_slice(&arp.to_bytes());
    assert!(etherparse_sees_reply(&f));
    assert_eq!(
        arp::parse(f.as_slice()),
        Parsed::Malformed(MalformedReason::BadArpAddressLength)
    );
}

/// The ArpEthIpv4Packet and ArpPacket builders write the same bytes, and a
/// reply built with either is parsed by both parsers.
#[test]
fn eth_ipv4_reply_built_by_etherparse_is_parsed_by_both() {
    let f = reply_with_tpids(&[]);
    assert!(etherparse_sees_reply(&f));
    let Parsed::ArpReply(r) = arp::parse(f.as_slice()) else {
        panic!("not a reply")
    };
    assert_eq!(r.arp_offset, 14);
    let generic = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REPLY,
        &[2, 0, 0, 0, 0, 1],
        &[192, 0, 2, 1],
        &[2, 0, 0, 0, 0, 2],
        &[192, 0, 2, 2],
    )
    .unwrap();
    assert_eq!(&f[14..], &generic.to_bytes()[..]);
}
