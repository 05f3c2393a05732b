//! SPEC 2.5: when the peer comes back after it lost its table (a new boot
//! id), this switch re-probes every resolved neighbour on its member ports
//! (ARP aging refresh: each entry sends a fresh request). The replies are
//! captured by the classifier like any other and synced in bulk batches,
//! so the rebooted peer converges without traffic loss.
//!
//! The probes run in a child task so a large table never holds up the
//! event loop; it reports back with [`Event::RefreshDone`].

use super::{events::Event, task::Task};

/// NUD states worth re-probing: the entry is (or was recently) resolved.
const PROBED_STATES: [&str; 4] = ["REACHABLE", "STALE", "DELAY", "PROBE"];

impl Task {
    /// Starts a refresh of the neighbours on the member ports.
    pub(super) fn refresh(&mut self) {
        self.stats.refreshes += 1;
        let ifindexes: Vec<u32> = self.ports.iter().filter_map(|p| p.ifindex).collect();
        let kernel = self.kernel.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let (mut probed, mut failed) = (0, 0);
            match kernel.neighbours(&ifindexes).await {
                Ok(list) => {
                    for n in list
                        .iter()
                        .filter(|n| n.mac.is_some() && PROBED_STATES.contains(&n.state))
                    {
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
            let _ = internal.send(Event::RefreshDone { probed, failed }).await;
        });
    }
}
