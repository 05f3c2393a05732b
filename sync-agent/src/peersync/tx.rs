//! Sending (SPEC 2.1, 2.2): captured replies wait in the send table; they
//! go out in sync frames of at most `batch_max_entries` entries and the
//! negotiated frame size, either when a batch is full, when nothing else is
//! waiting (`flush_delay_us = 0`) or when the flush timer fires. The peer
//! acknowledges frames cumulatively; what it has not acknowledged is resent
//! on the next session (see the RESUME handling of the hello).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sync_common::wire::{self, ArpDelete, Encoder, MessageType, SubType};

use super::{
    nd::NdKey,
    table::{EntryKey, seq_after, seq_max},
    task::Task,
};

/// Writer queue slots kept free of sync frames, for acks and hellos (at
/// most an eighth of the queue).
const WRITER_RESERVE: usize = 16;
/// How soon a flush held back by a full writer queue tries again.
const WRITER_RETRY: Duration = Duration::from_millis(2);
/// The least time a full writer queue must go undrained before the session
/// counts as stuck, whatever the dead interval. Whether the peer is alive
/// is the keepalives' call; a queue that does not drain only says the peer
/// reads slowly, and with a dead interval of tens of milliseconds a peer
/// busy injecting a flood of sync traffic on a saturated CPU was declared
/// stuck (measured: `mlag-bench mclag-load` at 10/20 ms), the session
/// closed and a resync started, which only adds to its load.
const STALL_FLOOR: Duration = Duration::from_secs(1);

/// Bytes of hand-over memory taken at a time (see [`FrameBuffers`]).
const OUT_BYTES: usize = 64 * 1024;

/// Where frames are encoded and handed to the session writer from, kept by
/// the task and used frame after frame: once they have grown, a frame costs
/// no heap allocation.
#[derive(Default)]
pub(super) struct FrameBuffers {
    /// A frame is encoded here (grown to the largest frame once; what lies
    /// beyond a frame's length is never sent).
    scratch: Vec<u8>,
    /// Encoded frames are copied here and split off as [`Bytes`] sharing
    /// this memory; once the writer has dropped them, `reserve` takes the
    /// memory back instead of allocating.
    out: BytesMut,
}

impl FrameBuffers {
    /// A buffer of `size` bytes to encode one frame in.
    pub(super) fn buf(&mut self, size: usize) -> &mut [u8] {
        if self.scratch.len() < size {
            self.scratch.resize(size, 0);
        }
        &mut self.scratch[..size]
    }

    /// The frame encoded in the first `len` bytes of [`Self::buf`], for
    /// the writer.
    pub(super) fn frame(&mut self, len: usize) -> Bytes {
        if self.out.capacity() < len {
            self.out.reserve(len.max(OUT_BYTES));
        }
        self.out.extend_from_slice(&self.scratch[..len]);
        self.out.split().freeze()
    }
}

/// The flush's working memory (see [`FrameBuffers`]), and the keys of the
/// frame being built, cleared per frame instead of allocated.
#[derive(Default)]
pub(super) struct TxBuffers {
    pub(super) encode: FrameBuffers,
    sent: Vec<EntryKey>,
    queued_at: Vec<Instant>,
    deleted: Vec<EntryKey>,
    pub(super) nd_sent: Vec<NdKey>,
    pub(super) nd_deleted: Vec<NdKey>,
}

impl Task {
    /// After a capture was queued: send at once when a batch is full,
    /// otherwise make sure a flush is scheduled.
    pub(super) async fn schedule_flush(&mut self) {
        if self.table.pending() + self.nd.table.pending() >= self.config.batch_max_entries {
            self.flush().await;
        } else if self.flush_at.is_none() {
            self.flush_at = Some(
                tokio::time::Instant::now() + Duration::from_micros(self.config.flush_delay_us),
            );
        }
    }

    /// Sends every pending entry, in frames of at most `batch_max_entries`
    /// entries and the negotiated frame size.
    pub(super) async fn flush(&mut self) {
        self.flush_at = None;
        let Some(max_frame) = self
            .session
            .as_ref()
            .and_then(|s| s.peer.as_ref())
            .map(|p| p.max_frame)
        else {
            return;
        };
        // The buffers are the task's; lent to the flush for its length.
        let mut tx = std::mem::take(&mut self.tx);
        if self.flush_arp(&mut tx, max_frame) && self.flush_nd(&mut tx, max_frame) {
            self.send_sync_done(&mut tx, max_frame);
        }
        self.tx = tx;
    }

    /// The ARP part of [`Self::flush`]. False when something is left
    /// (writer full or session gone).
    fn flush_arp(&mut self, tx: &mut TxBuffers, max_frame: usize) -> bool {
        while self.table.pending() > 0 || self.table.pending_deletes() > 0 {
            if !self.writer_has_room() {
                return false;
            }
            let seq = self.next_seq;
            tx.sent.clear();
            tx.queued_at.clear();
            tx.deleted.clear();
            let Ok(mut encoder) = Encoder::new(
                tx.encode.buf(max_frame),
                MessageType::Sync,
                SubType::Arp,
                seq,
            ) else {
                return false;
            };
            while tx.sent.len() < self.config.batch_max_entries {
                let Some((key, entry)) = self.table.next_dirty() else {
                    break;
                };
                match encoder.arp_entry(&entry.driver, &entry.frame) {
                    Ok(()) => {
                        tx.sent.push(key);
                        tx.queued_at.push(entry.updated);
                        // Take it off the dirty list now so next_dirty moves on.
                        self.table.discard_dirty(key);
                    }
                    Err(_) if !tx.sent.is_empty() => break,
                    Err(_) => {
                        self.table.discard_dirty(key);
                        self.local_failure(
                            "entry_too_large",
                            "captured frame does not fit a sync frame",
                        );
                    }
                }
            }
            // Withdrawn entries ride in the same frames, after the entries.
            let room = self.config.batch_max_entries - tx.sent.len();
            for key in self.table.deletes_waiting().take(room) {
                let delete = ArpDelete {
                    mlag_id: key.mlag_id,
                    vrf: key.vrf,
                    ip: key.ip.octets(),
                };
                if encoder.arp_delete(&delete).is_err() {
                    break;
                }
                tx.deleted.push(key);
            }
            if tx.sent.is_empty() && tx.deleted.is_empty() {
                if self.table.pending() == 0 {
                    // Only deletes left and none fit: cannot happen with a
                    // valid max_frame_bytes; never spin on it.
                    return true;
                }
                continue;
            }
            let len = encoder.finish();
            let frame = tx.encode.frame(len);
            if !self.send(frame) {
                // Session lost: put them back; they go out on the next session.
                for &key in &tx.sent {
                    self.table.mark_sent(key, 0);
                    self.table.mark_all_one(key);
                }
                return false;
            }
            for at in &tx.queued_at {
                self.latency.queue_to_send.record(at.elapsed());
            }
            self.next_seq = self.next_seq.wrapping_add(1).max(1);
            self.stats.frames_sent += 1;
            self.stats.entries_sent += tx.sent.len() as u64;
            self.stats.deletes_sent += tx.deleted.len() as u64;
            for &key in &tx.sent {
                self.table.mark_sent(key, seq);
            }
            for &key in &tx.deleted {
                self.table.mark_delete_sent(key, seq);
            }
        }
        true
    }

    /// Once per session, when everything pending at its start has gone
    /// out: a sync frame with SYNC_DONE, so the peer knows it has
    /// converged once it applied the frames before it. It carries the
    /// sequence number of the last frame sent (0: none yet) and takes no
    /// number of its own, so the peer's acks and the resend bookkeeping
    /// stay as they were.
    fn send_sync_done(&mut self, tx: &mut TxBuffers, max_frame: usize) {
        if self
            .session
            .as_ref()
            .is_none_or(|s| s.sync_done_sent || s.peer.is_none())
        {
            return;
        }
        let last_sent = match self.next_seq.wrapping_sub(1) {
            0 if self.stats.frames_sent > 0 => u32::MAX,
            seq => seq,
        };
        let Ok(mut encoder) = Encoder::new(
            tx.encode.buf(max_frame.min(64)),
            MessageType::Sync,
            SubType::Arp,
            last_sent,
        ) else {
            return;
        };
        if encoder.sync_done().is_err() {
            return;
        }
        let len = encoder.finish();
        let frame = tx.encode.frame(len);
        if self.send(frame)
            && let Some(session) = &mut self.session
        {
            session.sync_done_sent = true;
        }
    }

    /// Acknowledges sync frame `seq` (cumulative: everything up to it was
    /// applied).
    pub(super) async fn send_ack(&mut self, seq: u32) {
        let Ok(mut e) = Encoder::new(self.tx.encode.buf(64), MessageType::Ack, SubType::None, 0)
        else {
            return;
        };
        if e.tlv(wire::tlv::ACK_SEQ, &[&seq.to_be_bytes()]).is_err() {
            return;
        }
        let len = e.finish();
        let frame = self.tx.encode.frame(len);
        self.send(frame);
    }

    /// The peer acknowledged every frame up to `seq`.
    pub(super) fn note_ack(&mut self, seq: u32) {
        self.stats.acks_received += 1;
        self.acked = seq_max(self.acked, seq);
        self.table.deletes_acked(self.acked);
        self.nd.table.deletes_acked(self.acked);
    }

    /// Whether frame `seq` was acknowledged (wrap-safe).
    pub(super) fn is_acked(&self, seq: u32) -> bool {
        seq != 0 && !seq_after(seq, self.acked)
    }

    /// Flow control for sync frames: true while the writer's queue has room
    /// beyond what acks and hellos need. Otherwise the rest of the batch
    /// waits (retried every [`WRITER_RETRY`]) for the peer to read; a queue
    /// that has not drained for the dead interval (at least
    /// [`STALL_FLOOR`]) means the peer stopped reading, and the session is
    /// closed as stalled (entries are kept and resent on the next session).
    pub(super) fn writer_has_room(&mut self) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        let reserve = WRITER_RESERVE.min(session.writer.max_capacity() / 8);
        if session.writer.capacity() > reserve {
            self.writer_blocked_since = None;
            return true;
        }
        let now = tokio::time::Instant::now();
        let since = *self.writer_blocked_since.get_or_insert(now);
        let stuck_after = Duration::from_millis(self.config.dead_interval_ms).max(STALL_FLOOR);
        if now.duration_since(since) >= stuck_after {
            self.writer_blocked_since = None;
            self.stats.sessions_stalled += 1;
            tracing::warn!(
                peer = %self.config.peer_address,
                total = self.stats.sessions_stalled,
                "peer stopped reading (session writer queue full for the dead interval, at least 1 s); closing the session"
            );
            self.close_session("peer stopped reading: writer queue full");
        } else {
            self.flush_at = Some(now + WRITER_RETRY);
        }
        false
    }

    /// Queues one frame (sync, ack or hello) on the session's writer, never
    /// waiting: false (and the session closed) when there is no session, its
    /// writer has stopped, or its queue is full. A full queue means the peer
    /// has stopped reading (TCP's window closed, the writer blocked, its
    /// queue filled): waiting for it would stall this task, its queries and
    /// liveness handling, so the session is declared stuck and closed
    /// (`sessions_stalled`). Nothing is lost: entries in frames the peer
    /// never acknowledged are resent on the next session (RESUME), and the
    /// frame refused here is put back by the caller.
    pub(super) fn send(&mut self, frame: Bytes) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        match session.writer.try_send(frame) {
            Ok(()) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.stats.sessions_stalled += 1;
                tracing::warn!(
                    peer = %self.config.peer_address,
                    total = self.stats.sessions_stalled,
                    "peer stopped reading (session writer queue full); closing the session"
                );
                self.close_session("peer stopped reading: writer queue full");
                false
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                self.close_session("writer stopped");
                false
            }
        }
    }
}
