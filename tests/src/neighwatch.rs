//! Watching a namespace's neighbour tables change (ARP or IPv6 ND), with
//! timestamps: a netlink socket subscribed to neighbour events, opened
//! inside the namespace.

use std::{
    collections::HashMap,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
    sync::mpsc,
    time::Instant,
};

use futures::StreamExt as _;
use rtnetlink::{
    MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    },
};

use crate::netns::Netns;

/// An address family whose neighbour entries a watch reports.
pub trait Family: Copy + Eq + Hash + Send + 'static {
    /// The entry's address, when it is of this family.
    fn of(address: &NeighbourAddress) -> Option<Self>;
}

impl Family for Ipv4Addr {
    fn of(address: &NeighbourAddress) -> Option<Self> {
        match address {
            NeighbourAddress::Inet(ip) => Some(*ip),
            _ => None,
        }
    }
}

impl Family for Ipv6Addr {
    fn of(address: &NeighbourAddress) -> Option<Self> {
        match address {
            NeighbourAddress::Inet6(ip) => Some(*ip),
            _ => None,
        }
    }
}

/// Receives `(ip, when)` each time a neighbour of family `A` (IPv4 by
/// default) becomes REACHABLE.
pub struct NeighbourWatch<A: Family = Ipv4Addr> {
    rx: mpsc::Receiver<(A, Instant)>,
}

/// The IPv6 (ND) watch.
pub type NeighbourWatch6 = NeighbourWatch<Ipv6Addr>;

impl<A: Family> NeighbourWatch<A> {
    /// Starts watching `ns` (a thread that lives as long as the namespace).
    pub fn start(ns: &Netns) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        ns.spawn_async(move || async move {
            let Ok((mut connection, _, mut messages)) =
                rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh])
            else {
                return;
            };
            // Bursts of thousands of events must not overflow the socket.
            let _ = {
                use netlink_sys::AsyncSocket as _;
                connection.socket_mut().socket_mut().set_rx_buf_sz(32 << 20)
            };
            tokio::spawn(connection);
            let _ = ready_tx.send(());
            while let Some((message, _)) = messages.next().await {
                let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) =
                    message.payload
                else {
                    continue;
                };
                if n.header.state != NeighbourState::Reachable {
                    continue;
                }
                let ip = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(address) => A::of(address),
                    _ => None,
                });
                if let Some(ip) = ip
                    && tx.send((ip, Instant::now())).is_err()
                {
                    return;
                }
            }
        })?;
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .map_err(|_| anyhow::anyhow!("neighbour watch did not start"))?;
        Ok(Self { rx })
    }

    /// Waits until every address in `wanted` has been seen REACHABLE (or the
    /// deadline passes, or nothing wanted was seen for 10 s: an entry lost on
    /// the way would otherwise hold the wait to the deadline); returns when
    /// each was first seen.
    pub fn collect(&self, wanted: &[A], deadline: Instant) -> HashMap<A, Instant> {
        const QUIET: std::time::Duration = std::time::Duration::from_secs(10);
        let wanted: std::collections::HashSet<A> = wanted.iter().copied().collect();
        let mut seen = HashMap::new();
        let mut last_new = Instant::now();
        while seen.len() < wanted.len() {
            let until = deadline.min(last_new + QUIET);
            match self
                .rx
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok((ip, at)) => {
                    if wanted.contains(&ip) && !seen.contains_key(&ip) {
                        seen.insert(ip, at);
                        last_new = Instant::now();
                    }
                }
                Err(_) => break,
            }
        }
        seen
    }

    /// The next address seen REACHABLE before `deadline`.
    pub fn next(&self, deadline: Instant) -> Option<(A, Instant)> {
        self.rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    }
}
