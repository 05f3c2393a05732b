//! SPEC 1.2, "this switch learns it too": a `peer`-class reply answers a
//! request the peer sent, so it is synced; but the downstream device chose
//! this switch's link, and this switch must hold the entry as well (its
//! traffic to that host leaves by the same bond). The kernel dropped the
//! frame as "other host" (its destination is the peer's MAC), so the reply
//! is handed to this switch's own ARP path on the port it arrived on, with
//! the destination rewritten to that port's MAC — the same kernel path as a
//! synced reply (`learn.rs`), the same `arp_accept` rule for an entry this
//! switch did not ask for. A reply already addressed to the port's own MAC
//! (the MC-LAG shared MAC) was learnt by the kernel itself and is skipped.
//!
//! For the same reason the peer's MACs learnt from its hello are published
//! to the dataplane, so replies to them are captured as `peer` whatever
//! `dataplane.peer_macs` lists.

use std::{collections::BTreeSet, net::Ipv4Addr};

use super::{learn::LearntBy, task::Task};
use crate::{bus::Captured, mac::MacAddr};

impl Task {
    /// The peer's MACs from its hello (system id, member ports) go to the
    /// dataplane's peer table: replies to them are class `peer` whatever
    /// `dataplane.peer_macs` lists. Kept when the session drops: the peer's
    /// MACs do not change with it, and replies misdelivered meanwhile must
    /// still be captured and queued.
    pub(super) fn publish_peer_macs(&self, system_id: Option<MacAddr>, ports: &[(u32, MacAddr)]) {
        let Some(to) = &self.peer_macs else {
            return;
        };
        let macs: BTreeSet<MacAddr> = system_id
            .into_iter()
            .chain(ports.iter().map(|(_, mac)| *mac))
            .filter(|mac| !mac.is_zero() && !mac.is_multicast())
            .collect();
        to.send_if_modified(|current| {
            let changed = *current != macs;
            *current = macs;
            changed
        });
    }

    /// Hands a captured `peer`-class reply to this switch's kernel.
    pub(super) async fn learn_here(&mut self, captured: &Captured, port_mac: MacAddr) {
        if captured.dst_mac == port_mac {
            return;
        }
        let mut frame = captured.frame.clone();
        let Some(dst) = frame.get_mut(..6) else {
            return;
        };
        dst.copy_from_slice(&port_mac.0);
        let ip = Ipv4Addr::from(captured.arp.sender_ip);
        let mac = MacAddr(captured.arp.sender_mac);
        let by = match self.kernel.inject(&frame, captured.ifindex) {
            Ok(()) => LearntBy::KernelArp,
            Err(err) => {
                self.local_failure(
                    "inject_failed",
                    &format!(
                        "BPF_PROG_RUN live frame on ifindex {}: {err}; writing {ip} over netlink instead",
                        captured.ifindex
                    ),
                );
                if let Err(err) = self.kernel.set_reachable(captured.ifindex, ip, mac).await {
                    tracing::error!(error = %err, "netlink fallback failed too");
                    return;
                }
                LearntBy::NetlinkFallback
            }
        };
        self.stats.learnt_here += 1;
        // Bounded like the send table; past it the record starts again (the
        // kernel keeps what it learnt either way: this only feeds `show arp`).
        if self.learnt_here.len() >= self.config.max_entries {
            self.learnt_here.clear();
        }
        self.learnt_here.insert((captured.ifindex, ip), by);
    }
}
