//! Rate-limited logging: input from the network (a flood of bad frames, a
//! stream of forged messages) must not turn into a flood of log lines. Every
//! module that logs per input uses this one limiter.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Logs a kind of problem at most once per interval, with the count suppressed.
pub struct LogLimiter {
    every: Duration,
    last: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    /// At most one line per kind per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// Some(suppressed since last line) when a line may be logged now.
    pub fn admit(&mut self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        match self.last.get_mut(kind) {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}
