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
