//! Member-port state between the two switches (issue 12, SPEC 2.5 for one
//! port): when a member port comes back up, its twin on the peer re-probes
//! the neighbours of that MLAG id, so the entries this switch lost while
//! the port was down (the kernel flushes an interface's neighbours when it
//! loses carrier) come back as synced replies.
//!
//! This side follows its own member ports' carrier (`southbound::links`)
//! and tells the peer each change in a port-state message (protocol 1.1;
//! never sent to a 1.0 peer, which would count it as unknown input). The
//! other side refreshes that MLAG id's interfaces when told a port is up.

use std::collections::BTreeMap;

use sync_common::wire::{Encoder, Frame, MessageType, SubType};

use super::task::Task;
use crate::bus::LinkEvent;

/// The first protocol minor version that has the port-state message.
const PORT_STATE_MINOR: u8 = 1;

impl Task {
    /// A link changed: if it is a member port whose state (admin up and
    /// carrier) changed, the peer is told.
    pub(super) async fn process_link(&mut self, event: LinkEvent) {
        let (index, up) = match event {
            LinkEvent::Changed(link) => (link.index, link.up && link.carrier),
            LinkEvent::Removed { index, .. } => (index, false),
        };
        let Some(mlag_id) = self
            .ports
            .iter()
            .find(|p| p.ifindex == Some(index))
            .map(|p| p.mlag_id)
        else {
            return;
        };
        // A port not seen yet is taken as up (the usual state while the
        // agent runs): a first "down" is told, a first "up" is no news.
        let before = self.port_up.insert(index, up).unwrap_or(true);
        if before == up {
            return;
        }
        tracing::info!(mlag_id, up, "member port state changed; telling the peer");
        self.send_port_states(&BTreeMap::from([(mlag_id, up)]))
            .await;
    }

    /// Sends a port-state message, if the peer speaks it.
    async fn send_port_states(&mut self, states: &BTreeMap<u32, bool>) {
        let peer_minor = self
            .session
            .as_ref()
            .and_then(|s| s.peer.as_ref())
            .map(|p| p.peer_minor);
        if peer_minor.is_none_or(|minor| minor < PORT_STATE_MINOR) {
            return;
        }
        let mut buf = vec![0u8; 64 + 9 * states.len()];
        let Ok(mut e) = Encoder::new(&mut buf, MessageType::PortState, SubType::None, 0) else {
            return;
        };
        for (mlag_id, up) in states {
            if e.port_state(*mlag_id, *up).is_err() {
                return;
            }
        }
        let len = e.finish();
        buf.truncate(len);
        if self.send(buf.into()) {
            self.stats.port_states_sent += states.len() as u64;
        }
    }

    /// The peer's member ports changed state: a twin port that is up again
    /// gets its MLAG id's neighbours re-probed.
    pub(super) async fn process_port_state(&mut self, frame: &Frame<'_>) {
        for (mlag_id, up) in frame.port_states() {
            if !self.ports.iter().any(|p| p.mlag_id == mlag_id) {
                self.reject(
                    "unknown_mlag_id",
                    &format!("port state for MLAG id {mlag_id} which no member port has"),
                );
                continue;
            }
            tracing::info!(mlag_id, up, "the peer's twin port changed state");
            self.tell_twin(mlag_id, if up { "twin-up" } else { "twin-down" });
            if up {
                self.stats.port_up_refreshes += 1;
                self.refresh(Some(mlag_id)).await;
            }
        }
    }
}
