//! Draining the capture ring buffer: records the XDP program wrote become
//! batches of [`Captured`] replies on bounded channels. No busy polling
//! between bursts: the reader sleeps on the ring buffer's fd (tokio
//! `AsyncFd`) until the classifier wakes it, then takes whatever waits, up
//! to [`MAX_BATCH`] records a batch, publishing its ring position once per
//! batch. It is woken only when it has announced a sleep
//! ([`RingReader::announce_sleep`]), and it announces one only after the
//! ring stayed empty for [`SPIN_BEFORE_SLEEP`], so however fast replies come,
//! one wakeup starts a drain that lasts as long as they do.
//!
//! Nothing is allocated per record or per batch: a frame travels inline in
//! its [`Captured`] (`CapturedFrame`), and a batch ([`CaptureBatch`], shared
//! by peer sync and the dataplane task) is filled into storage the reader
//! recycles once both have dropped it ([`BatchPool`]).

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

/// How long the reader keeps looking at an empty ring before it announces
/// a sleep. A sleep costs a wakeup when the next record comes: an irq_work
/// and a self-IPI on the producing CPU, paid inside the XDP program's time,
/// then an epoll return and a reschedule of the reader, microseconds each.
/// Records arriving closer together than this (over ~30,000 a second, when
/// a wakeup per record would start to matter) keep the reader awake; a lone
/// record costs this much of the reader's time once, and its latency gains.
pub const SPIN_BEFORE_SLEEP: std::time::Duration = std::time::Duration::from_micros(30);

/// A sleep at least this long says replies come alone: a round that reads
/// one record after it goes back to sleep at once instead of spinning
/// ([`spin_budget`]). Ten spins' worth: below ~3,000 lone records a second,
/// where the spin is 30 us of the reader's CPU per record bought for
/// nothing (the next record comes long after it ends), and the reader's
/// thread, which peer sync shares, should not hold its CPU from the threads
/// the reply wakes next (on the receiving switch: the session's reader).
pub const QUIET_GAP: std::time::Duration = std::time::Duration::from_micros(300);

/// How long the reader keeps looking at an empty ring before announcing a
/// sleep, in a round (wakeup to sleep) that read `read` records after a
/// sleep of `slept` (None: no sleep before it, e.g. the first round).
pub fn spin_budget(slept: Option<std::time::Duration>, read: u64) -> std::time::Duration {
    match slept {
        Some(slept) if slept >= QUIET_GAP && read <= 1 => std::time::Duration::ZERO,
        _ => SPIN_BEFORE_SLEEP,
    }
}

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
    let copy: CaptureRecord;
    let at = bytes.as_ptr().cast::<CaptureRecord>();
    let record: &CaptureRecord = if at.is_aligned() {
        // SAFETY: length and alignment checked; CaptureRecord is plain old
        // data (any bytes are a value). Read in place, not copied: a ring
        // record is 8-aligned, and nothing writes it until it is consumed.
        unsafe { &*at }
    } else {
        // SAFETY: length checked; read_unaligned makes no alignment
        // assumption.
        copy = unsafe { core::ptr::read_unaligned(at) };
        &copy
    };
    let class = Class::from_u8(record.class).ok_or(InvalidRecord::Class(record.class))?;
    let frame = record.frame_bytes();
    // The link layer is parsed once, for both families.
    let link = match arp::link(frame) {
        Ok(link) => link,
        Err(reason) => return Err(InvalidRecord::NotArpReply(Parsed::Malformed(reason))),
    };
    if link.ethertype == nd::ETHERTYPE_IPV6 {
        return decode_advert(record, class, frame, &link);
    }
    let reply = match arp::parse_after(frame, &link) {
        Parsed::ArpReply(reply) => reply,
        other => return Err(InvalidRecord::NotArpReply(other)),
    };
    let addresses = arp::addresses(frame, reply.arp_offset as usize)
        .ok_or(InvalidRecord::NotArpReply(Parsed::Other))?;
    Ok(Captured {
        timestamp_ns: record.timestamp_ns,
        read_ns: 0,
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
    link: &arp::Link,
) -> Result<Captured, InvalidRecord> {
    let advert = match nd::parse_after(frame, link) {
        nd::Parsed::Advert(advert) => advert,
        other => return Err(InvalidRecord::NotAdvert(other)),
    };
    let addresses =
        nd::addresses(frame, &advert).ok_or(InvalidRecord::NotAdvert(nd::Parsed::Other))?;
    Ok(Captured {
        timestamp_ns: record.timestamp_ns,
        read_ns: 0,
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
        pool: BatchPool::default(),
        log: LogLimiter::new(std::time::Duration::from_secs(5)),
        stats,
        slept_at: None,
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

/// Storage for batches, recycled: a batch's vector is filled again once
/// every [`CaptureBatch`] made from it has been dropped (its `Arc` is
/// unique again), so after the first few batches nothing is allocated.
///
/// The pool grows only while every vector is still held: at most the
/// batches the two queues hold plus the one each receiver is working on
/// (the reader takes a queue slot on both before it reads), a few
/// hundred kilobytes with the default queues.
#[derive(Default)]
struct BatchPool {
    slots: Vec<Arc<Vec<Captured>>>,
    /// Where to look first: batches come back in the order they went out,
    /// so the one after the last filled is the likeliest free.
    next: usize,
}

impl BatchPool {
    /// An empty vector no batch refers to any more, with room for
    /// [`MAX_BATCH`] records.
    fn free(&mut self) -> &mut Arc<Vec<Captured>> {
        let n = self.slots.len();
        let found = (0..n)
            .map(|i| (self.next + i) % n)
            .find(|&at| Arc::get_mut(&mut self.slots[at]).is_some());
        let at = found.unwrap_or_else(|| {
            self.slots.push(Arc::new(Vec::with_capacity(MAX_BATCH)));
            n
        });
        self.next = at + 1;
        let slot = &mut self.slots[at];
        if let Some(storage) = Arc::get_mut(slot) {
            // The previous batch's replies (plain data, inline frames).
            storage.clear();
        }
        slot
    }

    /// Vectors allocated so far.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// The reader's working state between wakeups.
struct Drain {
    pool: BatchPool,
    log: LogLimiter,
    stats: Arc<CaptureStats>,
    /// When the reader last announced a sleep (the start of the quiet gap
    /// a wakeup ends).
    slept_at: Option<std::time::Instant>,
}

impl Drain {
    /// Reads batches until the ring has stayed empty for the round's
    /// [`spin_budget`] and the sleep is announced. False when the
    /// dataplane task is gone (the agent is stopping).
    async fn until_asleep(
        &mut self,
        reader: &mut RingReader,
        peer: Option<&mpsc::Sender<CaptureBatch>>,
        tx: &mpsc::Sender<CaptureBatch>,
    ) -> bool {
        let slept = self.slept_at.map(|at| at.elapsed());
        let mut read_this_round = 0u64;
        let mut empty_since: Option<std::time::Instant> = None;
        loop {
            if reader.is_empty() {
                // Keep looking for a moment (letting the receivers run)
                // before paying for a sleep and the wakeup that ends it.
                let now = std::time::Instant::now();
                let since = *empty_since.get_or_insert(now);
                if now.duration_since(since) < spin_budget(slept, read_this_round) {
                    tokio::task::yield_now().await;
                    continue;
                }
                if reader.announce_sleep() {
                    self.slept_at = Some(now);
                    return true;
                }
                // Records came after all: the announcement is withdrawn.
            }
            empty_since = None;
            let Ok(permit) = tx.reserve().await else {
                return false;
            };
            let peer_permit = match peer {
                // Peer sync gone means the agent is stopping; the dataplane
                // task still gets its batches until it goes too.
                Some(peer) => peer.reserve().await.ok(),
                None => None,
            };
            let slot = self.pool.free();
            let (stats, log) = (&self.stats, &mut self.log);
            let read_ns = crate::clock::monotonic_ns();
            let read = match Arc::get_mut(slot) {
                Some(storage) => reader.read_batch(MAX_BATCH, |bytes| match decode(bytes) {
                    Ok(captured) => storage.push(Captured {
                        read_ns,
                        ..captured
                    }),
                    Err(err) => {
                        stats.invalid.fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = log.admit("invalid_record") {
                            tracing::warn!(error = %err, suppressed, "invalid capture record dropped");
                        }
                    }
                }),
                // `free` hands out only unshared storage.
                None => 0,
            };
            self.stats.records.fetch_add(read as u64, Ordering::Relaxed);
            read_this_round += read as u64;
            if !slot.is_empty() {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                let batch = CaptureBatch::shared(slot.clone());
                if let Some(peer_permit) = peer_permit {
                    peer_permit.send(batch.clone());
                    // Peer sync (on this thread: `crate::sync_thread`)
                    // sends the batch on before the dataplane task, on the
                    // main runtime, is woken for its copy: that wakeup is a
                    // syscall, and often an IPI, paid on this thread.
                    tokio::task::yield_now().await;
                }
                permit.send(batch);
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
    fn batch_storage_is_filled_again_only_once_every_holder_dropped_it() {
        let mut pool = BatchPool::default();
        let slot = pool.free();
        Arc::get_mut(slot)
            .unwrap()
            .push(decode(&record(&reply_frame(), 1)).unwrap());
        let first = CaptureBatch::shared(slot.clone());
        let first_storage = Arc::as_ptr(slot);
        // Peer sync and the dataplane task each hold the first batch.
        let held_by_peer = first.clone();
        let second = CaptureBatch::shared(pool.free().clone());
        assert_eq!(pool.len(), 2, "the first batch is held: new storage");
        drop(first);
        drop(second);
        let third = pool.free();
        assert_ne!(
            Arc::as_ptr(third),
            first_storage,
            "still held by peer sync: not refilled"
        );
        let third = CaptureBatch::shared(third.clone());
        assert_eq!(pool.len(), 2, "the second batch's storage came back");
        drop(held_by_peer);
        let fourth = pool.free();
        assert_eq!(Arc::as_ptr(fourth), first_storage);
        assert!(fourth.is_empty(), "refilled from empty");
        assert!(fourth.capacity() >= MAX_BATCH);
        assert_eq!(pool.len(), 2, "nothing allocated once batches come back");
        drop(third);
    }

    #[test]
    fn a_lone_record_after_a_quiet_gap_sleeps_at_once_and_busy_rounds_spin() {
        let quiet = Some(QUIET_GAP);
        assert_eq!(spin_budget(quiet, 1), std::time::Duration::ZERO);
        assert_eq!(spin_budget(quiet, 0), std::time::Duration::ZERO);
        // A burst after the gap, records close together, or no sleep yet:
        // the next record may be microseconds away.
        assert_eq!(spin_budget(quiet, 2), SPIN_BEFORE_SLEEP);
        assert_eq!(
            spin_budget(Some(QUIET_GAP / 2), 1),
            SPIN_BEFORE_SLEEP,
            "lone records closer together than the quiet gap"
        );
        assert_eq!(spin_budget(None, 1), SPIN_BEFORE_SLEEP);
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
