//! Where a synced reply's time goes inside the agents, from timestamps they
//! already have: on the sending switch, the kernel's capture time (the
//! record's `bpf_ktime_get_ns`, CLOCK_MONOTONIC) to the reply entering the
//! send table, and the send table to its sync frame going to the writer;
//! on the receiving switch, the frame read off the peer link to the reply
//! handed to the kernel. What is left of an end-to-end figure is the peer
//! link and the kernel's own learning, which no agent sees.
//!
//! Each stage is an HDR histogram of microseconds (two significant
//! digits, up to a minute; a longer value counts as a minute): a fixed few
//! KiB per stage whatever the traffic, and a record is a few adds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest duration a stage records, microseconds (longer saturates).
const HIGHEST_US: u64 = 60_000_000;

/// One stage's histogram.
pub(super) struct Stage(Histogram<u64>);

impl Default for Stage {
    fn default() -> Self {
        Self(
            Histogram::new_with_bounds(1, HIGHEST_US, 2)
                .expect("constant bounds are valid for hdrhistogram"),
        )
    }
}

impl Stage {
    pub(super) fn record(&mut self, elapsed: Duration) {
        let us = (elapsed.as_micros() as u64).clamp(1, HIGHEST_US);
        // Cannot fail: the value is clamped into the histogram's bounds.
        let _ = self.0.record(us);
    }

    fn summary(&self) -> StageSummary {
        StageSummary {
            count: self.0.len(),
            p50_us: self.0.value_at_quantile(0.50),
            p99_us: self.0.value_at_quantile(0.99),
            max_us: self.0.max(),
        }
    }
}

/// The stages peer sync times.
#[derive(Default)]
pub(super) struct Latency {
    /// Kernel capture -> entry in the send table (ring buffer, reader,
    /// hand-over to peer sync).
    pub(super) capture_to_queue: Stage,
    /// Its first part: kernel capture -> the reader took it off the ring
    /// (the wakeup).
    pub(super) capture_to_read: Stage,
    /// Its second part: off the ring -> entry in the send table (decoding
    /// and the hand-over to peer sync).
    pub(super) read_to_queue: Stage,
    /// Send table -> sync frame handed to the peer link's writer (the
    /// flush delay and batching).
    pub(super) queue_to_send: Stage,
    /// Sync frame read off the peer link -> its entry handed to the
    /// kernel's receive path.
    pub(super) receive_to_inject: Stage,
    /// Its first part: frame read -> peer sync's handler runs (the
    /// hand-over from the session reader).
    pub(super) read_to_task: Stage,
    /// The kernel call that hands one entry over (for an injection, the
    /// kernel's own receive path runs inside it).
    pub(super) inject: Stage,
}

impl Latency {
    /// Times a capture reaching the send table, from the kernel's
    /// timestamp and the reader's (either 0: not timed).
    pub(super) fn captured(&mut self, captured: &crate::bus::Captured) {
        if captured.timestamp_ns == 0 {
            return;
        }
        let now = crate::clock::monotonic_ns();
        let ns = |later: u64, earlier: u64| Duration::from_nanos(later.saturating_sub(earlier));
        self.capture_to_queue.record(ns(now, captured.timestamp_ns));
        if captured.read_ns != 0 {
            self.capture_to_read
                .record(ns(captured.read_ns, captured.timestamp_ns));
            self.read_to_queue.record(ns(now, captured.read_ns));
        }
    }

    pub(super) fn report(&self) -> LatencyReport {
        LatencyReport {
            capture_to_queue: self.capture_to_queue.summary(),
            capture_to_read: self.capture_to_read.summary(),
            read_to_queue: self.read_to_queue.summary(),
            queue_to_send: self.queue_to_send.summary(),
            receive_to_inject: self.receive_to_inject.summary(),
            read_to_task: self.read_to_task.summary(),
            inject: self.inject.summary(),
        }
    }
}

/// `show peer`'s `latency`: each stage since the agent started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// Kernel capture -> send table (this switch's captures).
    pub capture_to_queue: StageSummary,
    /// Part of it: kernel capture -> off the ring (the reader's wakeup).
    #[serde(default)]
    pub capture_to_read: StageSummary,
    /// Part of it: off the ring -> send table (the hand-over).
    #[serde(default)]
    pub read_to_queue: StageSummary,
    /// Send table -> sync frame to the writer.
    pub queue_to_send: StageSummary,
    /// Sync frame read -> handed to the kernel (the peer's entries).
    pub receive_to_inject: StageSummary,
    /// Part of it: sync frame read -> peer sync's handler.
    #[serde(default)]
    pub read_to_task: StageSummary,
    /// Part of it: the kernel call handing one entry over.
    #[serde(default)]
    pub inject: StageSummary,
}

/// Percentiles of one stage, microseconds (two significant digits).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSummary {
    /// Entries timed.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_values() {
        let mut stage = Stage::default();
        for us in 1..=100 {
            stage.record(Duration::from_micros(us));
        }
        let summary = stage.summary();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50_us, 50);
        assert_eq!(summary.p99_us, 99);
        assert_eq!(summary.max_us, 100);
    }

    #[test]
    fn out_of_range_durations_saturate_instead_of_being_lost() {
        let mut stage = Stage::default();
        stage.record(Duration::ZERO);
        stage.record(Duration::from_secs(3600));
        let summary = stage.summary();
        assert_eq!(summary.count, 2);
        assert!(summary.max_us >= HIGHEST_US, "{summary:?}");
    }
}
