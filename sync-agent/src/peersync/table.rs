//! The sender's table of synced entries: one per (VRF, MLAG port, IP), with
//! the sequence number of the sync frame that last carried it, so that a
//! reconnect resends only what the peer has not acknowledged.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Instant,
};

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

/// Entries plus the set of keys waiting to be sent.
#[derive(Debug, Default)]
pub struct SendTable {
    entries: BTreeMap<EntryKey, SentEntry>,
    dirty: BTreeSet<EntryKey>,
    max_entries: usize,
    /// Entries forgotten because the table was full.
    pub evicted: u64,
}

impl SendTable {
    /// An empty table holding at most `max_entries`.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries,
            ..Default::default()
        }
    }

    /// Records a captured reply and marks it for sending.
    pub fn upsert(&mut self, key: EntryKey, driver: DriverHeader, frame: Vec<u8>, mac: MacAddr) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            // Forget the least recently refreshed entry (rare: only at the bound).
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.updated)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
                self.dirty.remove(&oldest);
                self.evicted += 1;
            }
        }
        self.entries.insert(
            key,
            SentEntry {
                driver,
                frame,
                mac,
                seq: 0,
                updated: Instant::now(),
            },
        );
        self.dirty.insert(key);
    }

    /// Marks for resending every entry the peer has not acknowledged
    /// (carried by a frame after `acked`).
    pub fn mark_unacked(&mut self, acked: u32) {
        for (key, entry) in &self.entries {
            if entry.seq != 0 && seq_after(entry.seq, acked) {
                self.dirty.insert(*key);
            }
        }
    }

    /// Marks every entry for sending (the peer has none of them).
    pub fn mark_all(&mut self) {
        self.dirty.extend(self.entries.keys().copied());
    }

    /// Number of entries waiting to be sent.
    pub fn pending(&self) -> usize {
        self.dirty.len()
    }

    /// Number of entries sent but not acknowledged.
    pub fn unacked(&self, acked: u32) -> usize {
        self.entries
            .values()
            .filter(|e| e.seq != 0 && seq_after(e.seq, acked))
            .count()
    }

    /// The next key to send, without removing it.
    pub fn next_dirty(&self) -> Option<(EntryKey, &SentEntry)> {
        let key = *self.dirty.first()?;
        self.entries.get(&key).map(|e| (key, e))
    }

    /// Records that `key` went out in frame `seq`.
    pub fn mark_sent(&mut self, key: EntryKey, seq: u32) {
        self.dirty.remove(&key);
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.seq = seq;
        }
    }

    /// Marks one entry for sending again.
    pub fn mark_all_one(&mut self, key: EntryKey) {
        if self.entries.contains_key(&key) {
            self.dirty.insert(key);
        }
    }

    /// Takes a key off the list to send (its entry stays).
    pub fn discard_dirty(&mut self, key: EntryKey) {
        self.dirty.remove(&key);
    }

    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = (&EntryKey, &SentEntry)> {
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
        table.upsert(key(1), driver(), vec![1], MacAddr([2, 0, 0, 0, 0, 1]));
        table.upsert(key(1), driver(), vec![2], MacAddr([2, 0, 0, 0, 0, 2]));
        assert_eq!(table.len(), 1);
        assert_eq!(table.next_dirty().unwrap().1.frame, vec![2]);
    }

    #[test]
    fn only_entries_after_the_acknowledged_frame_are_resent() {
        let mut table = SendTable::new(10);
        for (i, seq) in [(1, 5), (2, 6), (3, 7)] {
            table.upsert(key(i), driver(), vec![i], MacAddr([2, 0, 0, 0, 0, i]));
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
            table.upsert(key(i), driver(), vec![i], MacAddr([2, 0, 0, 0, 0, i]));
            table.mark_sent(key(i), seq);
        }
        table.upsert(key(5), driver(), vec![5], MacAddr([2, 0, 0, 0, 0, 5]));
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
            table.upsert(key(i), driver(), vec![i], MacAddr([2, 0, 0, 0, 0, i]));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(table.len(), 2);
        assert_eq!(table.evicted, 1);
        assert!(table.iter().all(|(k, _)| *k != key(1)));
    }
}
