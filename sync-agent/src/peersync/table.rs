//! The sender's table of synced entries: one per (VRF, MLAG port, IP), with
//! the sequence number of the sync frame that last carried it, so that a
//! reconnect resends only what the peer has not acknowledged.
//!
//! Entries live in an LRU list (the `lru` crate: a hash map threaded on a
//! linked list), so the bound forgets the least recently captured entry in
//! O(1) instead of scanning the table. An entry whose neighbour this
//! switch's kernel dropped or marked FAILED is withdrawn: it leaves the table
//! and a delete waits to be sent, tracked like entries (sequence number,
//! resent if the peer did not acknowledge it).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet},
    net::Ipv4Addr,
    time::Instant,
};

use lru::LruCache;
use sync_common::wire::DriverHeader;

use crate::mac::MacAddr;

/// Whether sequence number `a` comes after `b`, in serial-number arithmetic
/// (RFC 1982 with 32 bits): `a` is newer when it is less than 2^31 ahead of
/// `b`, so the comparison survives the wrap from `u32::MAX` to 1. Exactly
/// 2^31 apart is undefined in RFC 1982; here it is "not after".
pub fn seq_after(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 1 << 31
}

/// The newer of two sequence numbers (serial-number arithmetic).
pub fn seq_max(a: u32, b: u32) -> u32 {
    if seq_after(b, a) { b } else { a }
}

/// Identity of a synced entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryKey {
    /// VRF id.
    pub vrf: u32,
    /// MLAG port id.
    pub mlag_id: u32,
    /// The ARP sender's IP.
    pub ip: Ipv4Addr,
}

/// The newest reply seen for a key.
#[derive(Clone, Debug)]
pub struct SentEntry {
    /// Where it came in.
    pub driver: DriverHeader,
    /// The original frame.
    pub frame: Vec<u8>,
    /// The ARP sender's MAC.
    pub mac: MacAddr,
    /// Sequence number of the frame that last carried it; 0 = not sent yet.
    pub seq: u32,
    /// When it was last captured.
    pub updated: Instant,
}

/// Entries plus the set of keys waiting to be sent, and the deletes.
///
/// Generic over the key: ARP entries are keyed by [`EntryKey`] (IPv4), ND
/// entries by `NdKey` (IPv6); both share the session's sequence numbers.
#[derive(Debug)]
pub struct SendTable<K: TableKey = EntryKey> {
    /// Most recently captured first; the bound pops the other end.
    entries: LruCache<K, SentEntry>,
    dirty: Dirty<K>,
    /// Withdrawn entries whose delete waits to be sent.
    deletes_unsent: BTreeSet<K>,
    /// Deletes sent and not acknowledged: the frame that carried each...
    deletes_sent: BTreeMap<K, u32>,
    /// ...and the same by frame, so an ack retires them without a scan
    /// (a key here whose `deletes_sent` seq differs is stale: skipped).
    deletes_by_seq: BTreeMap<u32, Vec<K>>,
    max_entries: usize,
    /// Entries forgotten because the table was full.
    pub evicted: u64,
    /// Deletes not kept because `max_entries` deletes were already waiting
    /// (the peer's kernel ages those entries out on its own).
    pub deletes_dropped: u64,
}

/// The keys waiting to be sent, smallest first. A `BTreeSet` allocated
/// and freed its nodes as a burst filled and emptied it (a few per sync
/// frame); these keep their memory: a hash set says which keys wait, a
/// min-heap gives their order. A key taken off the set stays in the heap
/// until it comes up, and is dropped then (or when the heap is rebuilt).
#[derive(Debug)]
struct Dirty<K> {
    waiting: HashSet<K>,
    order: BinaryHeap<Reverse<K>>,
}

impl<K> Default for Dirty<K> {
    fn default() -> Self {
        Self {
            waiting: HashSet::new(),
            order: BinaryHeap::new(),
        }
    }
}

impl<K: TableKey> Dirty<K> {
    fn insert(&mut self, key: K) {
        if self.waiting.insert(key) {
            // Keys taken off and put back before they came up leave copies
            // behind: past twice the waiting keys, the heap is rebuilt
            // (in the memory it has).
            if self.order.len() >= 2 * self.waiting.len() + 1024 {
                self.order.clear();
                self.order.extend(self.waiting.iter().copied().map(Reverse));
            } else {
                self.order.push(Reverse(key));
            }
        }
    }

    fn remove(&mut self, key: &K) -> bool {
        self.waiting.remove(key)
    }

    fn extend(&mut self, keys: impl Iterator<Item = K>) {
        for key in keys {
            self.insert(key);
        }
    }

    /// The smallest waiting key (copies of keys no longer waiting are
    /// dropped on the way).
    fn first(&mut self) -> Option<K> {
        while let Some(&Reverse(key)) = self.order.peek() {
            if self.waiting.contains(&key) {
                return Some(key);
            }
            self.order.pop();
        }
        None
    }

    fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// What a [`SendTable`] key must be.
pub trait TableKey: Copy + Ord + std::hash::Hash + std::fmt::Debug {}
impl<K: Copy + Ord + std::hash::Hash + std::fmt::Debug> TableKey for K {}

impl<K: TableKey> Default for SendTable<K> {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl<K: TableKey> SendTable<K> {
    /// An empty table holding at most `max_entries`.
    pub fn new(max_entries: usize) -> Self {
        Self {
            // Unbounded for the crate; the bound is applied here so that an
            // eviction is counted and leaves the dirty set consistent.
            entries: LruCache::unbounded(),
            dirty: Dirty::default(),
            deletes_unsent: BTreeSet::new(),
            deletes_sent: BTreeMap::new(),
            deletes_by_seq: BTreeMap::new(),
            max_entries,
            evicted: 0,
            deletes_dropped: 0,
        }
    }

    /// Records a captured reply and marks it for sending (a delete of the
    /// same key still waiting is cancelled: the entry is back). A key
    /// already held keeps its memory: the frame is copied into it, so a
    /// reply captured again (the steady state) allocates nothing.
    pub fn upsert(&mut self, key: K, driver: DriverHeader, frame: &[u8], mac: MacAddr) {
        self.deletes_unsent.remove(&key);
        self.deletes_sent.remove(&key);
        self.dirty.insert(key);
        // `get_mut` makes it the most recently captured, as `push` would.
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.driver = driver;
            entry.frame.clear();
            entry.frame.extend_from_slice(frame);
            entry.mac = mac;
            entry.seq = 0;
            entry.updated = Instant::now();
            return;
        }
        if self.entries.len() >= self.max_entries
            && let Some((oldest, _)) = self.entries.pop_lru()
        {
            // O(1): the least recently captured entry is the list's tail.
            self.dirty.remove(&oldest);
            self.evicted += 1;
        }
        self.entries.push(
            key,
            SentEntry {
                driver,
                frame: frame.to_vec(),
                mac,
                seq: 0,
                updated: Instant::now(),
            },
        );
    }

    /// The kernel no longer holds `key`'s neighbour: the entry leaves the
    /// table and a delete waits to be sent. False when there was no entry.
    pub fn withdraw(&mut self, key: K) -> bool {
        if self.entries.pop(&key).is_none() {
            return false;
        }
        self.dirty.remove(&key);
        if self.deletes_unsent.len() + self.deletes_sent.len() < self.max_entries {
            self.deletes_sent.remove(&key);
            self.deletes_unsent.insert(key);
        } else {
            self.deletes_dropped += 1;
        }
        true
    }

    /// Drops `key` without telling the peer (it already knows).
    pub fn forget(&mut self, key: K) -> bool {
        self.dirty.remove(&key);
        self.entries.pop(&key).is_some()
    }

    /// Whether `key` has an entry.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains(key)
    }

    /// Marks for resending every entry and delete the peer has not
    /// acknowledged (carried by a frame after `acked`).
    pub fn mark_unacked(&mut self, acked: u32) {
        for (key, entry) in self.entries.iter() {
            if entry.seq != 0 && seq_after(entry.seq, acked) {
                self.dirty.insert(*key);
            }
        }
        for (_, keys) in self.deletes_by_seq.split_off(&acked.saturating_add(1)) {
            for key in keys {
                if self.deletes_sent.get(&key).is_some_and(|seq| *seq > acked) {
                    self.deletes_sent.remove(&key);
                    self.deletes_unsent.insert(key);
                }
            }
        }
    }

    /// Marks every entry for sending (the peer has none of them, so it has
    /// nothing to delete either).
    pub fn mark_all(&mut self) {
        self.dirty.extend(self.entries.iter().map(|(k, _)| *k));
        self.deletes_unsent.clear();
        self.deletes_sent.clear();
        self.deletes_by_seq.clear();
    }

    /// The peer acknowledged every frame up to `acked`: those deletes are
    /// done. Compared wrap-safe (the frames in flight are few, so a pass
    /// over them costs little).
    pub fn deletes_acked(&mut self, acked: u32) {
        let done: Vec<u32> = self
            .deletes_by_seq
            .keys()
            .copied()
            .filter(|&seq| !seq_after(seq, acked))
            .collect();
        for seq in done {
            let Some(keys) = self.deletes_by_seq.remove(&seq) else {
                continue;
            };
            for key in keys {
                if self.deletes_sent.get(&key) == Some(&seq) {
                    self.deletes_sent.remove(&key);
                }
            }
        }
    }

    /// Number of deletes waiting to be sent.
    pub fn pending_deletes(&self) -> usize {
        self.deletes_unsent.len()
    }

    /// The deletes waiting to be sent, in the order they go out.
    pub fn deletes_waiting(&self) -> impl Iterator<Item = K> + '_ {
        self.deletes_unsent.iter().copied()
    }

    /// Records that the delete of `key` went out in frame `seq`.
    pub fn mark_delete_sent(&mut self, key: K, seq: u32) {
        if self.deletes_unsent.remove(&key) {
            self.deletes_sent.insert(key, seq);
            self.deletes_by_seq.entry(seq).or_default().push(key);
        }
    }

    /// Number of entries waiting to be sent.
    pub fn pending(&self) -> usize {
        self.dirty.len()
    }

    /// Number of entries sent but not acknowledged.
    pub fn unacked(&self, acked: u32) -> usize {
        self.entries
            .iter()
            .filter(|(_, e)| e.seq != 0 && seq_after(e.seq, acked))
            .count()
    }

    /// The next key to send, without removing it.
    pub fn next_dirty(&mut self) -> Option<(K, &SentEntry)> {
        let key = self.dirty.first()?;
        self.entries.peek(&key).map(|e| (key, e))
    }

    /// Records that `key` went out in frame `seq`.
    pub fn mark_sent(&mut self, key: K, seq: u32) {
        self.dirty.remove(&key);
        if let Some(entry) = self.entries.peek_mut(&key) {
            entry.seq = seq;
        }
    }

    /// Marks one entry for sending again.
    pub fn mark_all_one(&mut self, key: K) {
        if self.entries.contains(&key) {
            self.dirty.insert(key);
        }
    }

    /// Takes a key off the list to send (its entry stays).
    pub fn discard_dirty(&mut self, key: K) {
        self.dirty.remove(&key);
    }

    /// Every entry, most recently captured first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &SentEntry)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> EntryKey {
        EntryKey {
            vrf: 0,
            mlag_id: 1,
            ip: Ipv4Addr::new(10, 0, 0, last),
        }
    }

    fn driver() -> DriverHeader {
        DriverHeader {
            mlag_id: 1,
            outer_vlan: 0,
            inner_vlan: 0,
            vrf: 0,
            class: 1,
            vlan_count: 0,
        }
    }

    #[test]
    fn a_newer_reply_for_the_same_key_replaces_the_old_one() {
        let mut table = SendTable::new(10);
        table.upsert(key(1), driver(), &[1], MacAddr([2, 0, 0, 0, 0, 1]));
        table.upsert(key(1), driver(), &[2], MacAddr([2, 0, 0, 0, 0, 2]));
        assert_eq!(table.len(), 1);
        assert_eq!(table.next_dirty().unwrap().1.frame, vec![2]);
    }

    #[test]
    fn only_entries_after_the_acknowledged_frame_are_resent() {
        let mut table = SendTable::new(10);
        for (i, seq) in [(1, 5), (2, 6), (3, 7)] {
            table.upsert(key(i), driver(), &[i], MacAddr([2, 0, 0, 0, 0, i]));
            table.mark_sent(key(i), seq);
        }
        assert_eq!(table.pending(), 0);
        table.mark_unacked(5);
        assert_eq!(table.pending(), 2);
        assert_eq!(table.next_dirty().unwrap().0, key(2));
        assert_eq!(table.unacked(5), 2);
    }

    #[test]
    fn sequence_numbers_compare_across_the_wrap() {
        assert!(seq_after(1, u32::MAX), "1 follows u32::MAX (0 is skipped)");
        assert!(seq_after(5, u32::MAX - 5));
        assert!(!seq_after(u32::MAX, 1));
        assert!(seq_after(2, 1) && !seq_after(1, 2) && !seq_after(7, 7));
        // Half the space away is not "after" either way.
        assert!(!seq_after(1 << 31, 0) && !seq_after(0, 1 << 31));
        assert_eq!(seq_max(u32::MAX, 2), 2);
        assert_eq!(seq_max(2, u32::MAX), 2);
        assert_eq!(seq_max(0, 5), 5);
    }

    #[test]
    fn only_entries_after_the_acknowledged_frame_are_resent_across_the_wrap() {
        let mut table = SendTable::new(10);
        for (i, seq) in [(1, u32::MAX - 1), (2, u32::MAX), (3, 1), (4, 2)] {
            table.upsert(key(i), driver(), &[i], MacAddr([2, 0, 0, 0, 0, i]));
            table.mark_sent(key(i), seq);
        }
        table.upsert(key(5), driver(), &[5], MacAddr([2, 0, 0, 0, 0, 5]));
        table.discard_dirty(key(5)); // seq 0: never sent, never "unacked"
        assert_eq!(table.unacked(u32::MAX), 2, "frames 1 and 2 follow u32::MAX");
        table.mark_unacked(u32::MAX);
        let mut resent = Vec::new();
        while let Some((k, _)) = table.next_dirty() {
            resent.push(k);
            table.discard_dirty(k);
        }
        assert_eq!(resent, vec![key(3), key(4)]);
        assert_eq!(table.unacked(2), 0);
    }

    #[test]
    fn the_table_forgets_the_oldest_entry_at_its_bound() {
        let mut table = SendTable::new(2);
        for i in 1..=3 {
            table.upsert(key(i), driver(), &[i], MacAddr([2, 0, 0, 0, 0, i]));
        }
        assert_eq!(table.len(), 2);
        assert_eq!(table.evicted, 1);
        assert!(table.iter().all(|(k, _)| *k != key(1)));
        assert_eq!(table.pending(), 2, "the forgotten entry is not sent either");
    }

    /// The bound follows capture recency, not insertion: an entry captured
    /// again survives. With 100,000 entries at the bound, 100,000 more
    /// upserts each evict in O(1) (a scan per upsert would take ~10^10 steps
    /// here and never finish in a unit test's time).
    #[test]
    fn eviction_at_the_bound_takes_the_least_recently_captured_in_constant_time() {
        let mut table = SendTable::new(3);
        for i in 1..=3 {
            table.upsert(key(i), driver(), &[i], MacAddr([2, 0, 0, 0, 0, i]));
        }
        table.upsert(key(1), driver(), &[1], MacAddr([2, 0, 0, 0, 0, 1]));
        table.upsert(key(4), driver(), &[4], MacAddr([2, 0, 0, 0, 0, 4]));
        let kept: BTreeSet<EntryKey> = table.iter().map(|(k, _)| *k).collect();
        assert_eq!(kept, [key(1), key(3), key(4)].into_iter().collect());

        const N: u32 = 100_000;
        let wide = |i: u32| EntryKey {
            vrf: 0,
            mlag_id: 1 + i / 60_000,
            ip: Ipv4Addr::from(0x0a00_0000 + i),
        };
        let mut table = SendTable::new(N as usize);
        let started = Instant::now();
        for i in 0..2 * N {
            table.upsert(wide(i), driver(), &[0; 42], MacAddr([2, 0, 0, 0, 0, 1]));
        }
        assert_eq!(table.len(), N as usize);
        assert_eq!(table.evicted, u64::from(N));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "200,000 upserts took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn deletes_are_acknowledged_across_the_sequence_wrap() {
        let mut table = SendTable::new(10);
        for (n, seq) in [(1, u32::MAX), (2, 2)] {
            table.upsert(key(n), driver(), &[1], MacAddr([2, 0, 0, 0, 0, 1]));
            table.mark_sent(key(n), seq);
            table.withdraw(key(n));
            table.mark_delete_sent(key(n), seq);
        }
        // Frame 1 came after u32::MAX: that delete is done, frame 2's not.
        table.deletes_acked(1);
        table.mark_unacked(1);
        assert_eq!(
            table.deletes_waiting().take(10).collect::<Vec<_>>(),
            vec![key(2)]
        );
    }

    #[test]
    fn a_withdrawn_entry_leaves_the_table_and_its_delete_is_tracked_until_acked() {
        let mut table = SendTable::new(10);
        table.upsert(key(1), driver(), &[1], MacAddr([2, 0, 0, 0, 0, 1]));
        table.mark_sent(key(1), 3);
        assert!(table.withdraw(key(1)));
        assert!(!table.withdraw(key(1)), "only once");
        assert!(
            !table.withdraw(key(2)),
            "never captured: nothing to withdraw"
        );
        assert_eq!((table.len(), table.pending_deletes()), (0, 1));
        assert_eq!(
            table.deletes_waiting().take(10).collect::<Vec<_>>(),
            vec![key(1)]
        );
        table.mark_delete_sent(key(1), 4);
        assert_eq!(table.pending_deletes(), 0);
        // The session broke before the ack: resent on the next one.
        table.mark_unacked(3);
        assert_eq!(table.pending_deletes(), 1);
        table.mark_delete_sent(key(1), 5);
        table.deletes_acked(5);
        table.mark_unacked(5);
        assert_eq!(table.pending_deletes(), 0, "acknowledged: done");
        // Captured again before the delete went out: the delete is cancelled.
        table.upsert(key(2), driver(), &[2], MacAddr([2, 0, 0, 0, 0, 2]));
        table.withdraw(key(2));
        table.upsert(key(2), driver(), &[2], MacAddr([2, 0, 0, 0, 0, 2]));
        assert_eq!(table.pending_deletes(), 0);
        // A restarted peer has nothing to delete.
        table.withdraw(key(2));
        table.mark_all();
        assert_eq!(table.pending_deletes(), 0);
    }
}
