//! Decodes arbitrary bytes as one sync protocol frame. Whatever the input,
//! decoding must not panic; a frame that decodes must have iterable TLVs and
//! ARP and ND entries, and its entries and deletes re-encoded (same header type, sub-type
//! and seq) must decode to equal entries.
//!
//! The header checks give the fuzzer no coverage gradient (from an empty
//! corpus it never gets a frame past them), so run it with value profiling
//! or with a few valid frames as seeds:
//!
//! ```text
//! cargo +nightly fuzz run decode_frame -- -use_value_profile=1
//! ```
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync_common::wire::{
    self, ArpDelete, ArpEntry, Encoder, Frame, MessageType, NdDelete, NdEntry, tlv,
};

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode_header(data, wire::MAX_FRAME_LEN);
    let Ok(frame) = Frame::decode(data, wire::MAX_FRAME_LEN) else {
        return;
    };
    assert_eq!(frame.header.length as usize, data.len());

    let mut arp_tlvs = 0usize;
    let mut delete_tlvs = 0usize;
    let mut nd_tlvs = 0usize;
    let mut nd_delete_tlvs = 0usize;
    let mut body = 0usize;
    for t in frame.tlvs() {
        body += wire::TLV_HEADER_LEN + t.value.len();
        if t.tlv_type == tlv::ARP_ENTRY {
            arp_tlvs += 1;
        }
        if t.tlv_type == tlv::ARP_DELETE {
            delete_tlvs += 1;
        }
        if t.tlv_type == tlv::ND_ENTRY {
            nd_tlvs += 1;
        }
        if t.tlv_type == tlv::ND_DELETE {
            nd_delete_tlvs += 1;
        }
        assert!(frame.find(t.tlv_type).is_some());
    }
    // The TLVs cover the whole body.
    assert_eq!(wire::HEADER_LEN + body, data.len());

    let entries: Vec<ArpEntry> = frame.arp_entries().collect();
    // Every ARP entry TLV was validated by decode, so none is dropped.
    assert_eq!(entries.len(), arp_tlvs);
    // Deletes are validated in sync frames (elsewhere they are unknown
    // optional TLVs, skipped unchecked).
    let deletes: Vec<ArpDelete> = frame.arp_deletes().collect();
    let nd_entries: Vec<NdEntry> = frame.nd_entries().collect();
    let nd_deletes: Vec<NdDelete> = frame.nd_deletes().collect();
    if frame.header.msg_type == MessageType::Sync {
        assert_eq!(deletes.len(), delete_tlvs);
        assert_eq!(nd_entries.len(), nd_tlvs);
        assert_eq!(nd_deletes.len(), nd_delete_tlvs);
    }

    // The entries are a subset of the input's TLVs, so they fit in a buffer
    // the size of the input.
    let mut buf = vec![0u8; data.len()];
    let mut enc = Encoder::new(
        &mut buf,
        frame.header.msg_type,
        frame.header.sub_type,
        frame.header.seq,
    )
    .expect("buffer holds a header");
    for e in &entries {
        enc.arp_entry(&e.driver, e.frame)
            .expect("re-encoded entries fit");
    }
    for d in &deletes {
        enc.arp_delete(d).expect("re-encoded deletes fit");
    }
    for e in &nd_entries {
        enc.nd_entry(&e.driver, e.frame)
            .expect("re-encoded ND entries fit");
    }
    for d in &nd_deletes {
        enc.nd_delete(d).expect("re-encoded ND deletes fit");
    }
    let len = enc.finish();
    let again = Frame::decode(&buf[..len], wire::MAX_FRAME_LEN).expect("re-encoded frame decodes");
    assert_eq!(again.header.msg_type, frame.header.msg_type);
    assert_eq!(again.header.sub_type, frame.header.sub_type);
    assert_eq!(again.header.seq, frame.header.seq);
    let entries_again: Vec<ArpEntry> = again.arp_entries().collect();
    assert_eq!(entries_again, entries);
    if frame.header.msg_type == MessageType::Sync {
        let deletes_again: Vec<ArpDelete> = again.arp_deletes().collect();
        assert_eq!(deletes_again, deletes);
        let nd_again: Vec<NdEntry> = again.nd_entries().collect();
        assert_eq!(nd_again, nd_entries);
        let nd_deletes_again: Vec<NdDelete> = again.nd_deletes().collect();
        assert_eq!(nd_deletes_again, nd_deletes);
    }
});
