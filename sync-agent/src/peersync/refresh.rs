//! SPEC 2.5: when the peer comes back after it lost its table (a new boot
//! id), this switch re-probes every resolved neighbour it learnt on the
//! interfaces above its member ports (ARP aging refresh: each entry sends a
//! fresh request). The replies are captured by the classifier like any
//! other and synced in bulk batches, so the rebooted peer converges without
//! traffic loss. IPv6 neighbours are re-probed the same way (a unicast
//! Neighbour Solicitation each; the advertisements are synced by ND sync),
//! in the same paced run and the same counters.
//!
//! Which interfaces: a real switch rarely holds its ARP entries on the
//! member port itself. They sit on the configured VLAN interfaces
//! (`[peer].vlan_interfaces`), or on the bridge or bond the member port is
//! enslaved to (the `controller` of its link, and that one's controller in
//! turn). All of them are probed (see `aging.rs`, which finds them).
//!
//! Pacing: probes go at most `[peer].refresh_probes_per_s` per second,
//! evenly spaced (a control-plane policer drops a burst of thousands of ARP
//! requests, and with them the replies the peer needs). One long-lived
//! worker runs every refresh in turn with one [`Pacer`], so two refreshes
//! never add up to twice the rate. It reports each finished refresh with
//! [`Event::RefreshDone`].

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, time::Instant};

use super::{events::Event, learn::Kernel, task::Task};

/// NUD states worth re-probing: the entry is (or was recently) resolved.
const PROBED_STATES: [&str; 4] = ["REACHABLE", "STALE", "DELAY", "PROBE"];

/// Refreshes queued for the worker beyond the one it runs; more are
/// dropped and counted (`refresh_dropped`): the queued ones cover them.
const JOBS_DEPTH: usize = 8;

/// One refresh: the interfaces whose neighbours are probed.
#[derive(Debug)]
pub(super) struct RefreshJob {
    pub(super) interfaces: Vec<u32>,
}

/// Evenly spaced slots at a fixed rate, with no burst after a pause: the
/// next probe goes one interval after the previous one, or now if that is
/// already past.
#[derive(Debug)]
pub(super) struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer for `per_s` probes per second (at least 1).
    pub(super) fn new(per_s: u32) -> Self {
        Self {
            interval: Duration::from_nanos(1_000_000_000 / u64::from(per_s.max(1))),
            next: None,
        }
    }

    /// The time the next probe may go, given the time now; reserves it.
    pub(super) fn next_slot(&mut self, now: Instant) -> Instant {
        let at = match self.next {
            Some(next) if next > now => next,
            _ => now,
        };
        self.next = Some(at + self.interval);
        at
    }
}

impl Task {
    /// Starts a refresh of the neighbours above the member ports (all of
    /// them, or those of one MLAG id).
    pub(super) async fn refresh(&mut self, mlag_id: Option<u32>) {
        self.stats.refreshes += 1;
        // Bridges and bonds may have been built since the last look.
        self.learn_ifs_at = None;
        let interfaces: Vec<u32> = self
            .learning_interfaces()
            .await
            .iter()
            .filter(|(_, ids)| mlag_id.is_none_or(|id| ids.contains(&id)))
            .map(|(ifindex, _)| *ifindex)
            .collect();
        self.stats.refresh_interfaces = interfaces.len() as u64;
        let per_s = self.config.refresh_probes_per_s;
        let (kernel, internal) = (self.kernel.clone(), self.internal.clone());
        let jobs = self.refresh_jobs.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(JOBS_DEPTH);
            tokio::spawn(worker(kernel, per_s, rx, internal));
            tx
        });
        if jobs.try_send(RefreshJob { interfaces }).is_err() {
            self.stats.refresh_dropped += 1;
        }
    }
}

/// Runs the refreshes one after the other, each probe in its paced slot.
async fn worker(
    kernel: Arc<dyn Kernel>,
    per_s: u32,
    mut jobs: mpsc::Receiver<RefreshJob>,
    internal: mpsc::Sender<Event>,
) {
    let mut pacer = Pacer::new(per_s);
    while let Some(job) = jobs.recv().await {
        let (mut probed, mut failed) = (0, 0);
        match kernel.neighbours(&job.interfaces).await {
            Ok(list) => {
                for n in list
                    .iter()
                    .filter(|n| n.mac.is_some() && PROBED_STATES.contains(&n.state))
                {
                    tokio::time::sleep_until(pacer.next_slot(Instant::now())).await;
                    match kernel.probe(n).await {
                        Ok(()) => probed += 1,
                        Err(err) => {
                            failed += 1;
                            tracing::debug!(error = %err, "probe");
                        }
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "neighbour refresh: cannot read the ARP table")
            }
        }
        // ND sync: the IPv6 neighbours of the same interfaces, same pace
        // (each probe is a unicast solicitation; the advertisement it
        // draws is captured and synced like any other).
        match kernel.neighbours6(&job.interfaces).await {
            Ok(list) => {
                for n in list
                    .iter()
                    .filter(|n| n.mac.is_some() && PROBED_STATES.contains(&n.state))
                    .filter(|n| !n.ip.is_multicast())
                {
                    tokio::time::sleep_until(pacer.next_slot(Instant::now())).await;
                    match kernel.probe6(n).await {
                        Ok(()) => probed += 1,
                        Err(err) => {
                            failed += 1;
                            tracing::debug!(error = %err, "IPv6 probe");
                        }
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "neighbour refresh: cannot read the IPv6 neighbour table")
            }
        }
        if internal
            .send(Event::RefreshDone { probed, failed })
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_spaced_one_interval_apart_at_the_configured_rate() {
        let mut pacer = Pacer::new(200);
        let t0 = Instant::now();
        let slots: Vec<Duration> = (0..5).map(|_| pacer.next_slot(t0) - t0).collect();
        assert_eq!(
            slots,
            [0, 5, 10, 15, 20].map(Duration::from_millis).to_vec(),
            "200/s is one probe every 5 ms"
        );
        // 10,000 probes at 200/s span 49.995 s: never a burst.
        let mut pacer = Pacer::new(200);
        let last = (0..10_000).map(|_| pacer.next_slot(t0)).last().unwrap();
        assert_eq!(last - t0, Duration::from_millis(49_995));
    }

    #[test]
    fn a_pause_gives_no_burst_and_a_late_caller_goes_at_once() {
        let mut pacer = Pacer::new(100);
        let t0 = Instant::now();
        assert_eq!(pacer.next_slot(t0), t0);
        // Asked again 1 s later: the slot is now, and the next one is a
        // full interval after it (the idle second is not saved up).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(pacer.next_slot(t1), t1);
        assert_eq!(pacer.next_slot(t1), t1 + Duration::from_millis(10));
        // A rate of 0 is refused by validation; here it means 1/s, never a
        // division by zero.
        let mut slow = Pacer::new(0);
        slow.next_slot(t0);
        assert_eq!(slow.next_slot(t0), t0 + Duration::from_secs(1));
    }
}
