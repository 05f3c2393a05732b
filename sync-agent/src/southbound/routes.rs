//! IPv4 routes over rtnetlink (what the state model needs: gateways).

use std::net::Ipv4Addr;

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute},
};

/// Every IPv4 gateway in the main table with its output interface index.
pub async fn gateways(handle: &Handle) -> Result<Vec<(Ipv4Addr, u32)>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut replies = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(route) = replies.try_next().await? {
        let mut gateway = None;
        let mut oif = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                RouteAttribute::Oif(index) => oif = Some(*index),
                _ => {}
            }
        }
        if let (Some(gateway), Some(oif)) = (gateway, oif)
            && !out.contains(&(gateway, oif))
        {
            out.push((gateway, oif));
        }
    }
    Ok(out)
}

/// Subscribes to IPv4 route changes (the RTNLGRP_IPV4_ROUTE multicast
/// group): one `()` per route added or removed, until the receiver is
/// dropped. Bursts are not coalesced here; the receiver re-reads what it
/// needs ([`gateways`]).
pub fn watch() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    use futures::StreamExt as _;
    use rtnetlink::{
        MulticastGroup, packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage,
    };

    let (connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Route])?;
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if matches!(
                message.payload,
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_)
                )
            ) {
                // A full channel already holds a re-read to come.
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                    break;
                }
            }
        }
    });
    Ok(rx)
}
