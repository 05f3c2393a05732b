//! Draining the capture ring buffer: records the XDP program wrote become
//! batches of [`Captured`] replies on bounded channels. No busy polling:
//! the reader sleeps on the ring buffer's fd (tokio `AsyncFd`) until the
//! classifier wakes it, then takes whatever waits, up to [`MAX_BATCH`]
//! records a batch, publishing its ring position once per batch. It is
//! woken only when it has announced a sleep ([`RingReader::announce_sleep`]),
//! so however fast replies come, one wakeup starts a drain that lasts as
//! long as they do. Nothing is allocated per record: a frame travels inline
//! in its [`Captured`] (`CapturedFrame`), and a batch is one allocation
//! that peer sync and the dataplane task share ([`CaptureBatch`]).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use sync_common::{
    arp::{self, Parsed},
    capture::{CAPTURE_RING_BYTES, CaptureRecord, Class},
    nd,
};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::ring::{CaptureRing, RingReader};
pub use crate::bus::{CaptureBatch, Captured, CapturedFrame};
use crate::{log_limit::LogLimiter, mac::MacAddr};

/// Most records in one batch: one queue slot, one wakeup of the receiving
/// task. Small enough that a batch is handed on within microseconds.
pub const MAX_BATCH: usize = 64;

/// How long the reader sleeps at most without a wakeup. Nothing relies on
/// it: it only bounds the wait of records whose wakeup could not be
/// carried (a full ring has no room for the classifier's wakeup record).
pub const SLEEP_BACKSTOP: std::time::Duration = std::time::Duration::from_millis(100);

/// Queue slots (batches) for a queue of about `records` records
/// (`dataplane.capture_queue` counts records).
pub fn queue_batches(records: usize) -> usize {
    records.div_ceil(MAX_BATCH).max(1)
}

/// Why a ring buffer record was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRecord {
    /// Wrong size for a `CaptureRecord`.
    #[error("record of {0} bytes, expected {expected}", expected = core::mem::size_of::<CaptureRecord>())]
    Size(usize),
    /// Unknown class byte.
    #[error("unknown class {0}")]
    Class(u8),
    /// The captured bytes are not an ARP reply by the shared parsing rules.
    #[error("captured frame is not an ARP reply ({0:?})")]
    NotArpReply(Parsed),
    /// The captured bytes are IPv6 but not a whole Neighbour Advertisement
    /// (an NA longer than the capture is cut short: `CAPTURE_BYTES`).
    #[error("captured IPv6 frame is not a whole neighbour advertisement ({0:?})")]
    NotAdvert(nd::Parsed),
}

/// Decodes one ring buffer record, re-checking the frame with the same
/// parser the kernel used.
pub fn decode(bytes: &[u8]) -> Result<Captured, InvalidRecord> {
    if bytes.len() != core::mem::size_of::<CaptureRecord>() {
        return Err(InvalidRecord::Size(bytes.len()));
    }
    // SAFETY: length checked; CaptureRecord is plain old data and
    // read_unaligned makes no alignment assumption.
    let record: CaptureRecord = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let class = Class::from_u8(record.class).ok_or(InvalidRecord::Class(record.class))?;
    let frame = record.frame_bytes();
    if let Ok(link) = arp::link(frame)
        && link.ethertype == nd::ETHERTYPE_IPV6
    {
        return decode_advert(&record, class, frame);
    }
    let reply = match arp::parse(frame) {
        Parsed::ArpReply(reply) => reply,
        other => return Err(InvalidRecord::NotArpReply(other)),
    };
    let addresses = arp::addresses(frame, reply.arp_offset as usize)
        .ok_or(InvalidRecord::NotArpReply(Parsed::Other))?;
    Ok(Captured {
        timestamp_ns: record.timestamp_ns,
        ifindex: record.ifindex,
        class,
        outer_vlan: reply.outer_vlan,
        inner_vlan: reply.inner_vlan,
        vlan_count: reply.vlan_count,
        frame_len: record.frame_len,
        dst_mac: MacAddr(reply.dst_mac),
        arp: addresses,
        nd: None,
        frame: CapturedFrame::from_slice(frame),
    })
}

/// [`decode`] for a Neighbour Advertisement.
fn decode_advert(
    record: &CaptureRecord,
    class: Class,
    frame: &[u8],
) -> Result<Captured, InvalidRecord> {
    let advert = match nd::parse(frame) {
        nd::Parsed::Advert(advert) => advert,
        other => return Err(InvalidRecord::NotAdvert(other)),
    };
    let addresses =
        nd::addresses(frame, &advert).ok_or(InvalidRecord::NotAdvert(nd::Parsed::Other))?;
    Ok(Captured {
        timestamp_ns: record.timestamp_ns,
        ifindex: record.ifindex,
        class,
        outer_vlan: advert.outer_vlan,
        inner_vlan: advert.inner_vlan,
        vlan_count: advert.vlan_count,
        frame_len: record.frame_len,
        dst_mac: MacAddr(advert.dst_mac),
        arp: arp::ArpAddresses::default(),
        nd: Some(addresses),
        frame: CapturedFrame::from_slice(frame),
    })
}

/// Counters of the ring buffer reader.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Records read from the ring buffer.
    pub records: AtomicU64,
    /// Records that failed [`decode`].
    pub invalid: AtomicU64,
    /// Batches sent (records / batches = records per batch).
    pub batches: AtomicU64,
    /// Times the kernel woke the reader (records / wakeups = records per
    /// wakeup).
    pub wakeups: AtomicU64,
}

/// Reads the ring buffer until `tx` is closed: each batch to `peer` (peer
/// sync, when it runs) first, then to `tx` (the dataplane task), the same
/// allocation to both.
///
/// Records are taken from the ring only once both queues have room for
/// their batch, so when the agent falls behind the records wait in the
/// ring, and what cannot wait is lost in one place only: the kernel's
/// `ringbuf_full` counter.
pub async fn run(
    ring: CaptureRing,
    peer: Option<mpsc::Sender<CaptureBatch>>,
    tx: mpsc::Sender<CaptureBatch>,
    stats: Arc<CaptureStats>,
) -> std::io::Result<()> {
    let reader = RingReader::new(ring, CAPTURE_RING_BYTES as usize)?;
    // SAFETY: the reader owns the ring buffer's map fd and keeps it open
    // (and the same) for as long as it lives, which is as long as the
    // AsyncFd.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
    let mut drain = Drain {
        scratch: Vec::with_capacity(MAX_BATCH),
        log: LogLimiter::new(std::time::Duration::from_secs(5)),
        stats,
    };
    loop {
        // Until the reader has announced its sleep on an empty ring (the
        // first round included: the classifier wakes no reader that has
        // not announced one).
        if !drain.until_asleep(ring.get_mut(), peer.as_ref(), &tx).await {
            return Ok(());
        }
        tokio::select! {
            guard = ring.readable() => {
                // Cleared before reading, so a wakeup that comes while this
                // round reads is kept for the next round, never lost.
                guard?.clear_ready();
                drain.stats.wakeups.fetch_add(1, Ordering::Relaxed);
            }
            () = tx.closed() => return Ok(()),
            () = tokio::time::sleep(SLEEP_BACKSTOP) => {}
        }
        ring.get_ref().awake();
    }
}

/// The reader's working state between wakeups.
struct Drain {
    /// Reused: a batch is collected here, then copied into one shared
    /// allocation of its exact size.
    scratch: Vec<Captured>,
    log: LogLimiter,
    stats: Arc<CaptureStats>,
}

impl Drain {
    /// Reads batches until the ring is empty and the sleep is announced.
    /// False when the dataplane task is gone (the agent is stopping).
    async fn until_asleep(
        &mut self,
        reader: &mut RingReader,
        peer: Option<&mpsc::Sender<CaptureBatch>>,
        tx: &mpsc::Sender<CaptureBatch>,
    ) -> bool {
        loop {
            let Ok(permit) = tx.reserve().await else {
                return false;
            };
            let peer_permit = match peer {
                // Peer sync gone means the agent is stopping; the dataplane
                // task still gets its batches until it goes too.
                Some(peer) => peer.reserve().await.ok(),
                None => None,
            };
            let (scratch, stats, log) = (&mut self.scratch, &self.stats, &mut self.log);
            let read = reader.read_batch(MAX_BATCH, |bytes| match decode(bytes) {
                Ok(captured) => scratch.push(captured),
                Err(err) => {
                    stats.invalid.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = log.admit("invalid_record") {
                        tracing::warn!(error = %err, suppressed, "invalid capture record dropped");
                    }
                }
            });
            self.stats.records.fetch_add(read as u64, Ordering::Relaxed);
            if !self.scratch.is_empty() {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                // Moved out, not cloned; the scratch keeps its capacity.
                let batch: CaptureBatch = self.scratch.drain(..).collect();
                if let Some(peer_permit) = peer_permit {
                    peer_permit.send(batch.clone());
                }
                permit.send(batch);
            }
            if read < MAX_BATCH && reader.is_empty() && reader.announce_sleep() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_common::capture::CAPTURE_BYTES;

    fn record(frame: &[u8], class: u8) -> Vec<u8> {
        let mut record = CaptureRecord {
            timestamp_ns: 42,
            ifindex: 7,
            frame_len: frame.len() as u16,
            captured_len: frame.len() as u16,
            outer_vlan: 0,
            inner_vlan: 0,
            vlan_count: 0,
            class,
            arp_offset: 14,
            frame: [0; CAPTURE_BYTES],
        };
        record.frame[..frame.len()].copy_from_slice(frame);
        let bytes: [u8; core::mem::size_of::<CaptureRecord>()] =
            unsafe { core::mem::transmute(record) };
        bytes.to_vec()
    }

    fn reply_frame() -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0xa, 0x02, 0, 0, 0, 0, 0xc, 0x08, 0x06];
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xc, 10, 0, 0, 3]);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xa, 10, 0, 0, 1]);
        f
    }

    #[test]
    fn decodes_a_reply_record_with_its_addresses() {
        let captured = decode(&record(&reply_frame(), 1)).unwrap();
        assert_eq!(captured.class, Class::Peer);
        assert_eq!(captured.ifindex, 7);
        assert_eq!(captured.arp.sender_ip, [10, 0, 0, 3]);
        assert_eq!(captured.arp.target_ip, [10, 0, 0, 1]);
        assert_eq!(captured.dst_mac.to_string(), "02:00:00:00:00:0a");
    }

    #[test]
    fn refuses_wrong_size_unknown_class_and_non_replies() {
        assert_eq!(decode(&[0; 10]).unwrap_err(), InvalidRecord::Size(10));
        assert_eq!(
            decode(&record(&reply_frame(), 9)).unwrap_err(),
            InvalidRecord::Class(9)
        );
        let mut request = reply_frame();
        request[21] = 1;
        assert!(matches!(
            decode(&record(&request, 1)).unwrap_err(),
            InvalidRecord::NotArpReply(Parsed::Other)
        ));
    }
}
