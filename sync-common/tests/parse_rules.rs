//! Known-answer tests for the frame parsing rules in `sync_common::arp` and
//! the classification rule in `sync_common::capture`.
//!
//! Every frame is written out byte by byte (through the small helpers below)
//! so each test shows exactly what is on the wire.

use sync_common::arp::{self, ArpAddresses, ArpReply, MalformedReason, Parsed};
use sync_common::capture::{Class, classify};

// ---------------------------------------------------------------------------
// Frame-building helpers (plain byte vectors, no external crate).
// ---------------------------------------------------------------------------

const DST: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
const SRC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
const SENDER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const SENDER_IP: [u8; 4] = [192, 0, 2, 1];
const TARGET_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const TARGET_IP: [u8; 4] = [192, 0, 2, 2];

/// Ethernet header start: destination and source MAC (12 bytes).
fn macs(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out
}

/// A VLAN tag as it appears in place of the ethertype: TPID then TCI.
fn tag(tpid: u16, tci: u16) -> [u8; 4] {
    let [a, b] = tpid.to_be_bytes();
    let [c, d] = tci.to_be_bytes();
    [a, b, c, d]
}

/// A 28-byte Ethernet/IPv4 ARP payload with the given opcode.
fn arp_eth_ipv4(opcode: u16) -> Vec<u8> {
    arp_raw(0x0001, 0x0800, 6, 4, opcode)
}

/// An ARP payload with arbitrary htype/ptype/hlen/plen; the address part is
/// always laid out as 6/4/6/4 bytes (28 bytes in total).
fn arp_raw(htype: u16, ptype: u16, hlen: u8, plen: u8, opcode: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&htype.to_be_bytes());
    out.extend_from_slice(&ptype.to_be_bytes());
    out.push(hlen);
    out.push(plen);
    out.extend_from_slice(&opcode.to_be_bytes());
    out.extend_from_slice(&SENDER_MAC);
    out.extend_from_slice(&SENDER_IP);
    out.extend_from_slice(&TARGET_MAC);
    out.extend_from_slice(&TARGET_IP);
    assert_eq!(out.len(), 28);
    out
}

/// dst ++ src ++ tags ++ ethertype ++ payload.
fn frame(tags: &[[u8; 4]], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = macs(DST, SRC);
    for t in tags {
        out.extend_from_slice(t);
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn untagged_reply() -> Vec<u8> {
    frame(&[], 0x0806, &arp_eth_ipv4(2))
}

fn reply(
    dst_mac: [u8; 6],
    outer_vlan: u16,
    inner_vlan: u16,
    vlan_count: u8,
    arp_offset: u16,
) -> Parsed {
    Parsed::ArpReply(ArpReply {
        dst_mac,
        outer_vlan,
        inner_vlan,
        vlan_count,
        arp_offset,
    })
}

// ---------------------------------------------------------------------------
// parse: replies and their tags
// ---------------------------------------------------------------------------

#[test]
fn untagged_reply_is_parsed_with_dst_mac_and_arp_offset_14() {
    let f = untagged_reply();
    assert_eq!(f.len(), 42);
    assert_eq!(arp::parse(f.as_slice()), reply(DST, 0, 0, 0, 14));
}

#[test]
fn untagged_reply_ending_exactly_at_frame_end_is_parsed() {
    // 14 + 28 bytes, no padding: the last ARP byte is the last frame byte.
    let f = untagged_reply();
    assert!(matches!(arp::parse(f.as_slice()), Parsed::ArpReply(_)));
}

#[test]
fn trailing_padding_after_reply_is_ignored() {
    // Minimum-size Ethernet frames pad a 42-byte ARP to 60 bytes.
    let mut f = untagged_reply();
    f.extend_from_slice(&[0u8; 18]);
    assert_eq!(f.len(), 60);
    assert_eq!(arp::parse(f.as_slice()), reply(DST, 0, 0, 0, 14));
}

#[test]
fn dst_mac_is_the_ethernet_destination_not_the_arp_target() {
    let dst = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07];
    let mut f = macs(dst, SRC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&arp_eth_ipv4(2));
    let Parsed::ArpReply(r) = arp::parse(f.as_slice()) else {
        panic!("expected a reply")
    };
    assert_eq!(r.dst_mac, dst);
    assert_ne!(r.dst_mac, TARGET_MAC);
}

#[test]
fn single_8021q_tag_vid_10_gives_outer_vlan_10_vlan_count_1_arp_offset_18() {
    let f = frame(&[tag(0x8100, 10)], 0x0806, &arp_eth_ipv4(2));
    assert_eq!(arp::parse(f.as_slice()), reply(DST, 10, 0, 1, 18));
}

#[test]
fn single_8021ad_tag_is_looked_through_like_8021q() {
    let f = frame(&[tag(0x88a8, 300)], 0x0806, &arp_eth_ipv4(2));
    assert_eq!(arp::parse(f.as_slice()), reply(DST, 300, 0, 1, 18));
}

#[test]
fn qinq_8021ad_outer_100_and_8021q_inner_200_give_arp_offset_22() {
    let f = frame(
        &[tag(0x88a8, 100), tag(0x8100, 200)],
        0x0806,
        &arp_eth_ipv4(2),
    );
    assert_eq!(arp::parse(f.as_slice()), reply(DST, 100, 200, 2, 22));
}

#[test]
fn three_tags_are_other() {
    let f = frame(
        &[tag(0x88a8, 100), tag(0x8100, 200), tag(0x8100, 300)],
        0x0806,
        &arp_eth_ipv4(2),
    );
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn vid_masks_out_pcp_and_dei_bits() {
    // TCI = PCP 7 (0xe000) | DEI (0x1000) | VID 0x123 on both tags.
    let f = frame(
        &[tag(0x88a8, 0xf123), tag(0x8100, 0xb456)],
        0x0806,
        &arp_eth_ipv4(2),
    );
    assert_eq!(arp::parse(f.as_slice()), reply(DST, 0x123, 0x456, 2, 22));
}

#[test]
fn vid_4095_with_all_tci_bits_set_is_4095() {
    let f = frame(&[tag(0x8100, 0xffff)], 0x0806, &arp_eth_ipv4(2));
    assert_eq!(arp::parse(f.as_slice()), reply(DST, 0x0fff, 0, 1, 18));
}

// ---------------------------------------------------------------------------
// parse: frames that are passed as Other
// ---------------------------------------------------------------------------

#[test]
fn arp_request_is_other() {
    let f = frame(&[], 0x0806, &arp_eth_ipv4(1));
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn tagged_arp_request_is_other() {
    let f = frame(&[tag(0x8100, 10)], 0x0806, &arp_eth_ipv4(1));
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn arp_with_unknown_opcode_is_other() {
    for opcode in [0u16, 3, 4, 0x0102, 0xffff] {
        let f = frame(&[], 0x0806, &arp_eth_ipv4(opcode));
        assert_eq!(arp::parse(f.as_slice()), Parsed::Other, "opcode {opcode}");
    }
}

#[test]
fn ipv4_frame_is_other() {
    // A minimal IPv4/UDP header behind the Ethernet header.
    let ipv4 = [
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 192, 0, 2, 1, 192,
        0, 2, 2, 0x04, 0xd2, 0x16, 0x2e, 0x00, 0x08, 0x00, 0x00,
    ];
    let f = frame(&[], 0x0800, &ipv4);
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn ipv4_frame_carrying_reply_like_bytes_is_other() {
    // The ethertype decides, not what the payload looks like.
    let f = frame(&[tag(0x8100, 10)], 0x0800, &arp_eth_ipv4(2));
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn ipv6_frame_is_other() {
    let f = frame(&[], 0x86dd, &[0x60; 40]);
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn untagged_frame_with_only_ethernet_header_is_other() {
    let f = frame(&[], 0x0800, &[]);
    assert_eq!(f.len(), 14);
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn non_ethernet_htype_is_other() {
    // htype 6 (IEEE 802) otherwise shaped like an Ethernet/IPv4 reply.
    let f = frame(&[], 0x0806, &arp_raw(0x0006, 0x0800, 6, 4, 2));
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn non_ipv4_ptype_is_other() {
    let f = frame(&[], 0x0806, &arp_raw(0x0001, 0x86dd, 6, 4, 2));
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn non_ethernet_htype_is_other_even_with_bad_lengths_and_truncated() {
    // Once htype rules the frame out nothing else is looked at.
    let mut f = frame(&[], 0x0806, &arp_raw(0x0006, 0x0800, 8, 4, 2));
    f.truncate(14 + 10);
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

#[test]
fn nine_one_hundred_ethertype_is_not_a_vlan_tag() {
    // Only 0x8100 and 0x88a8 are tags; the legacy 0x9100 QinQ TPID is not.
    let f = frame(&[tag(0x9100, 10)], 0x0806, &arp_eth_ipv4(2));
    assert_eq!(arp::parse(f.as_slice()), Parsed::Other);
}

// ---------------------------------------------------------------------------
// parse: malformed frames
// ---------------------------------------------------------------------------

#[test]
fn frame_shorter_than_14_bytes_is_truncated_ethernet() {
    let full = untagged_reply();
    for len in 0..14 {
        assert_eq!(
            arp::parse(&full[..len]),
            Parsed::Malformed(MalformedReason::TruncatedEthernet),
            "length {len}"
        );
    }
}

#[test]
fn vlan_ethertype_with_only_2_bytes_after_is_truncated_vlan_tag() {
    let mut f = macs(DST, SRC);
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&[0x00, 0x0a]); // TCI only, no inner ethertype
    assert_eq!(f.len(), 16);
    assert_eq!(
        arp::parse(f.as_slice()),
        Parsed::Malformed(MalformedReason::TruncatedVlanTag)
    );
}

#[test]
fn vlan_ethertype_with_nothing_after_is_truncated_vlan_tag() {
    let f = frame(&[], 0x88a8, &[]);
    assert_eq!(
        arp::parse(f.as_slice()),
        Parsed::Malformed(MalformedReason::TruncatedVlanTag)
    );
}

#[test]
fn inner_vlan_tag_cut_short_is_truncated_vlan_tag() {
    let full = frame(
        &[tag(0x88a8, 100), tag(0x8100, 200)],
        0x0806,
        &arp_eth_ipv4(2),
    );
    for len in 18..22 {
        assert_eq!(
            arp::parse(&full[..len]),
            Parsed::Malformed(MalformedReason::TruncatedVlanTag),
            "length {len}"
        );
    }
}

#[test]
fn arp_cut_at_27_bytes_is_truncated_arp() {
    let full = untagged_reply();
    let f = &full[..14 + 27];
    assert_eq!(
        arp::parse(f),
        Parsed::Malformed(MalformedReason::TruncatedArp)
    );
}

#[test]
fn arp_cut_inside_its_fixed_header_is_truncated_arp() {
    let full = frame(&[tag(0x8100, 10)], 0x0806, &arp_eth_ipv4(2));
    for arp_len in 0..8 {
        assert_eq!(
            arp::parse(&full[..18 + arp_len]),
            Parsed::Malformed(MalformedReason::TruncatedArp),
            "arp bytes {arp_len}"
        );
    }
}

#[test]
fn truncated_arp_request_is_malformed_not_other() {
    // Length is checked before the opcode.
    let full = frame(&[], 0x0806, &arp_eth_ipv4(1));
    assert_eq!(
        arp::parse(&full[..14 + 20]),
        Parsed::Malformed(MalformedReason::TruncatedArp)
    );
}

#[test]
fn hlen_8_is_bad_arp_address_length() {
    let f = frame(&[], 0x0806, &arp_raw(0x0001, 0x0800, 8, 4, 2));
    assert_eq!(
        arp::parse(f.as_slice()),
        Parsed::Malformed(MalformedReason::BadArpAddressLength)
    );
}

#[test]
fn plen_16_is_bad_arp_address_length() {
    let f = frame(
        &[tag(0x8100, 10)],
        0x0806,
        &arp_raw(0x0001, 0x0800, 6, 16, 2),
    );
    assert_eq!(
        arp::parse(f.as_slice()),
        Parsed::Malformed(MalformedReason::BadArpAddressLength)
    );
}

#[test]
fn bad_address_length_is_reported_before_truncation() {
    // 8-byte header present, addresses missing: the lengths are wrong first.
    let mut f = frame(&[], 0x0806, &arp_raw(0x0001, 0x0800, 8, 4, 2));
    f.truncate(14 + 8);
    assert_eq!(
        arp::parse(f.as_slice()),
        Parsed::Malformed(MalformedReason::BadArpAddressLength)
    );
}

// ---------------------------------------------------------------------------
// addresses
// ---------------------------------------------------------------------------

#[test]
fn addresses_returns_sender_and_target_mac_and_ip() {
    let f = frame(&[tag(0x8100, 10)], 0x0806, &arp_eth_ipv4(2));
    let Parsed::ArpReply(r) = arp::parse(f.as_slice()) else {
        panic!("expected a reply")
    };
    assert_eq!(
        arp::addresses(f.as_slice(), r.arp_offset as usize),
        Some(ArpAddresses {
            opcode: 2,
            sender_mac: SENDER_MAC,
            sender_ip: SENDER_IP,
            target_mac: TARGET_MAC,
            target_ip: TARGET_IP,
        })
    );
}

#[test]
fn addresses_reads_the_opcode_of_a_request_too() {
    let f = frame(&[], 0x0806, &arp_eth_ipv4(1));
    assert_eq!(arp::addresses(f.as_slice(), 14).map(|a| a.opcode), Some(1));
}

#[test]
fn addresses_of_a_cut_payload_is_none() {
    let full = untagged_reply();
    assert!(arp::addresses(&full[..41], 14).is_none());
    assert!(arp::addresses(full.as_slice(), 15).is_none());
    assert!(arp::addresses(full.as_slice(), 100).is_none());
}

/// An offset near `usize::MAX` must not wrap around to the start of the frame.
#[test]
fn addresses_at_an_offset_near_usize_max_is_none() {
    let full = untagged_reply();
    assert!(arp::addresses(full.as_slice(), usize::MAX - 3).is_none());
}

// ---------------------------------------------------------------------------
// VRRP MACs
// ---------------------------------------------------------------------------

#[test]
fn vrrp_predicate_is_true_for_ipv4_vrrp_macs() {
    for vrid in [0u8, 1, 7, 0xff] {
        assert!(
            arp::is_vrrp_mac(&[0x00, 0x00, 0x5e, 0x00, 0x01, vrid]),
            "vrid {vrid}"
        );
    }
}

#[test]
fn vrrp_predicate_is_true_for_ipv6_vrrp_macs() {
    for vrid in [0u8, 1, 7, 0xff] {
        assert!(
            arp::is_vrrp_mac(&[0x00, 0x00, 0x5e, 0x00, 0x02, vrid]),
            "vrid {vrid}"
        );
    }
}

#[test]
fn vrrp_predicate_is_false_for_00_00_5e_00_03_01() {
    assert!(!arp::is_vrrp_mac(&[0x00, 0x00, 0x5e, 0x00, 0x03, 0x01]));
}

#[test]
fn vrrp_predicate_is_false_for_00_00_5e_01_01_01() {
    assert!(!arp::is_vrrp_mac(&[0x00, 0x00, 0x5e, 0x01, 0x01, 0x01]));
}

#[test]
fn vrrp_predicate_is_false_for_ordinary_and_broadcast_macs() {
    assert!(!arp::is_vrrp_mac(&DST));
    assert!(!arp::is_vrrp_mac(&[0xff; 6]));
    assert!(!arp::is_vrrp_mac(&[0x01, 0x00, 0x5e, 0x00, 0x01, 0x01])); // IPv4 multicast
    assert!(!arp::is_vrrp_mac(&[0x00, 0x00, 0x5f, 0x00, 0x01, 0x01]));
}

#[test]
fn vrrp_v4_and_v6_macs_are_the_rfc_5798_addresses() {
    assert_eq!(arp::vrrp_v4_mac(7), [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07]);
    assert_eq!(arp::vrrp_v6_mac(7), [0x00, 0x00, 0x5e, 0x00, 0x02, 0x07]);
    for vrid in 0..=u8::MAX {
        assert!(arp::is_vrrp_mac(&arp::vrrp_v4_mac(vrid)));
        assert!(arp::is_vrrp_mac(&arp::vrrp_v6_mac(vrid)));
    }
}

#[test]
fn vrrp_predicate_is_false_for_the_fifth_byte_0_and_every_other_near_miss() {
    // The word form tests the fifth byte with one subtraction: 0 wraps.
    assert!(!arp::is_vrrp_mac(&[0x00, 0x00, 0x5e, 0x00, 0x00, 0x01]));
    for byte in 0..4 {
        let mut mac = arp::vrrp_v4_mac(1);
        mac[byte] ^= 0x80;
        assert!(!arp::is_vrrp_mac(&mac), "{mac:02x?}");
    }
}

// ---------------------------------------------------------------------------
// MACs as one integer (what the classifier reads)
// ---------------------------------------------------------------------------

#[test]
fn a_mac_word_is_the_six_bytes_little_endian() {
    assert_eq!(arp::mac_word(&DST), 0x0000_5544_3322_1102);
    assert_eq!(arp::mac_word(&[0xff; 6]), 0x0000_ffff_ffff_ffff);
}

#[test]
fn a_table_key_from_a_word_is_the_key_from_the_bytes() {
    use sync_common::capture::MacKey;
    for mac in [DST, SRC, [0xff; 6], [0; 6], arp::vrrp_v6_mac(9)] {
        let w = arp::mac_word(&mac);
        assert_eq!(MacKey::from_word(w), MacKey::new(mac));
        // The bits above the MAC never reach the key's padding.
        assert_eq!(MacKey::from_word(w | 0xffff << 48), MacKey::new(mac));
    }
}

#[test]
fn the_prefilter_bit_folds_the_three_thirds_of_the_mac() {
    use sync_common::capture::{mac_filter_bit, mac_word_filter_bit};
    // 02:11 ^ 22:33 ^ 44:55, little-endian thirds: 0x1102 ^ 0x3322 ^ 0x5544.
    assert_eq!(mac_filter_bit(&DST), 0x1102 ^ 0x3322 ^ 0x5544);
    assert_eq!(
        mac_word_filter_bit(arp::mac_word(&DST)),
        mac_filter_bit(&DST)
    );
}

// ---------------------------------------------------------------------------
// classify: shared > peer > own > unmatched
// ---------------------------------------------------------------------------

#[test]
fn classify_nothing_matched_is_unmatched() {
    assert_eq!(classify(false, false, false), Class::Unmatched);
}

#[test]
fn classify_own_only_is_own() {
    assert_eq!(classify(false, false, true), Class::Own);
}

#[test]
fn classify_peer_only_is_peer() {
    assert_eq!(classify(false, true, false), Class::Peer);
}

#[test]
fn classify_peer_beats_own() {
    assert_eq!(classify(false, true, true), Class::Peer);
}

#[test]
fn classify_shared_only_is_shared() {
    assert_eq!(classify(true, false, false), Class::Shared);
}

#[test]
fn classify_shared_beats_own() {
    assert_eq!(classify(true, false, true), Class::Shared);
}

#[test]
fn classify_shared_beats_peer() {
    assert_eq!(classify(true, true, false), Class::Shared);
}

#[test]
fn classify_shared_beats_peer_and_own() {
    assert_eq!(classify(true, true, true), Class::Shared);
}
