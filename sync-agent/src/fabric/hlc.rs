//! A hybrid logical clock for fabric config (last writer wins): a change's
//! time is the wall clock in milliseconds, but never at or below any change
//! time this switch has made or heard. So a change made after seeing
//! another always sorts after it, even from a switch whose clock is behind;
//! the logical part is folded into the millisecond (one tick per event), so
//! the value stays a readable time close to the wall clock.
//!
//! A heard time further ahead of our wall clock than the tolerated skew is
//! not adopted (a switch with a clock far ahead must not drag everyone's
//! clock along); the change itself is still judged by its time.

/// The clock.
#[derive(Debug, Clone)]
pub struct Hlc {
    last_ms: u64,
    max_ahead_ms: u64,
}

impl Hlc {
    /// A clock adopting heard times up to `max_ahead_ms` ahead of ours.
    pub fn new(max_ahead_ms: u64) -> Self {
        Self {
            last_ms: 0,
            max_ahead_ms,
        }
    }

    /// The time of a new local event.
    pub fn now(&mut self) -> u64 {
        self.now_at(crate::clock::now_ms())
    }

    /// [`Hlc::now`] with the wall clock given.
    pub fn now_at(&mut self, wall_ms: u64) -> u64 {
        self.last_ms = wall_ms.max(self.last_ms + 1);
        self.last_ms
    }

    /// A time heard from another switch; false when it was too far ahead
    /// to adopt.
    pub fn observe(&mut self, remote_ms: u64) -> bool {
        self.observe_at(remote_ms, crate::clock::now_ms())
    }

    /// [`Hlc::observe`] with the wall clock given.
    pub fn observe_at(&mut self, remote_ms: u64, wall_ms: u64) -> bool {
        if remote_ms > wall_ms.saturating_add(self.max_ahead_ms) {
            return false;
        }
        self.last_ms = self.last_ms.max(remote_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_slow_clock_still_orders_after_what_it_heard() {
        let mut slow = Hlc::new(5_000);
        // Its wall clock says 1000; it heard a change stamped 4000.
        assert!(slow.observe_at(4_000, 1_000));
        assert_eq!(slow.now_at(1_000), 4_001);
        assert_eq!(slow.now_at(1_001), 4_002);
        assert_eq!(slow.now_at(9_000), 9_000, "back to the wall clock");
        // Too far ahead: not adopted.
        assert!(!slow.observe_at(100_000, 9_000));
        assert_eq!(slow.now_at(9_000), 9_001);
    }

    proptest! {
        /// Local events strictly increase and sort after every adopted
        /// heard time; the clock never runs ahead of the wall clock by more
        /// than the skew plus one tick per event.
        #[test]
        fn events_are_ordered(steps in proptest::collection::vec((any::<bool>(), 0u64..10_000, 0u64..20_000), 1..200)) {
            let mut hlc = Hlc::new(5_000);
            let mut wall = 1_000_000u64;
            let mut last_local = 0u64;
            let mut adopted = 0u64;
            let mut events = 0u64;
            for (local, advance, remote_offset) in steps {
                wall += advance % 50;
                if local {
                    let t = hlc.now_at(wall);
                    events += 1;
                    prop_assert!(t > last_local);
                    prop_assert!(t > adopted);
                    prop_assert!(t >= wall);
                    prop_assert!(t <= wall + 5_000 + events);
                    last_local = t;
                } else {
                    let remote = wall - 10_000 + remote_offset;
                    if hlc.observe_at(remote, wall) {
                        adopted = adopted.max(remote);
                    } else {
                        prop_assert!(remote > wall + 5_000);
                    }
                }
            }
        }
    }
}
