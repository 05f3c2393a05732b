//! Interface addresses over rtnetlink.

use std::net::{IpAddr, Ipv6Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::address::{AddressAttribute, AddressMessage},
};

/// One address of an interface.
#[derive(Clone, Debug)]
pub struct Address {
    /// The address.
    pub ip: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    message: AddressMessage,
}

/// Errors of address requests.
#[derive(Debug, thiserror::Error)]
#[error("netlink address request ({what}) on ifindex {ifindex}: {source}")]
pub struct AddressError {
    what: String,
    ifindex: u32,
    source: rtnetlink::Error,
}

/// Every address of interface `ifindex`.
pub async fn list(handle: &Handle, ifindex: u32) -> Result<Vec<Address>, AddressError> {
    let err = |source| AddressError {
        what: "dump".into(),
        ifindex,
        source,
    };
    let mut out = Vec::new();
    let mut replies = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    while let Some(message) = replies.try_next().await.map_err(err)? {
        if message.header.index != ifindex {
            continue;
        }
        let ip = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = ip {
            out.push(Address {
                ip,
                prefix_len: message.header.prefix_len,
                message,
            });
        }
    }
    Ok(out)
}

/// Every address of every interface, by ifindex, in one dump (one
/// request answers a burst of address changes on many interfaces).
pub async fn all(
    handle: &Handle,
) -> Result<std::collections::BTreeMap<u32, Vec<Address>>, AddressError> {
    let err = |source| AddressError {
        what: "dump of all interfaces".into(),
        ifindex: 0,
        source,
    };
    let mut out: std::collections::BTreeMap<u32, Vec<Address>> = Default::default();
    let mut replies = handle.address().get().execute();
    while let Some(message) = replies.try_next().await.map_err(err)? {
        let ip = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = ip {
            out.entry(message.header.index).or_default().push(Address {
                ip,
                prefix_len: message.header.prefix_len,
                message,
            });
        }
    }
    Ok(out)
}

/// Adds `ip/prefix_len` to interface `ifindex`.
pub async fn add(
    handle: &Handle,
    ifindex: u32,
    ip: IpAddr,
    prefix_len: u8,
) -> Result<(), AddressError> {
    handle
        .address()
        .add(ifindex, ip, prefix_len)
        .execute()
        .await
        .map_err(|source| AddressError {
            what: format!("add {ip}/{prefix_len}"),
            ifindex,
            source,
        })
}

/// Removes an address found by [`list`].
pub async fn remove(handle: &Handle, ifindex: u32, address: &Address) -> Result<(), AddressError> {
    handle
        .address()
        .del(address.message.clone())
        .execute()
        .await
        .map_err(|source| AddressError {
            what: format!("delete {}", address.ip),
            ifindex,
            source,
        })
}

/// True for fe80::/10.
pub fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Alias kept for readability at call sites.
pub type V6 = Ipv6Addr;

/// Subscribes to address changes on every interface (the RTNLGRP_IPV4_IFADDR
/// and RTNLGRP_IPV6_IFADDR multicast groups): one `()` per address added or
/// removed, until the receiver is dropped. Bursts are not coalesced here;
/// the receiver re-reads what it needs.
pub fn watch() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    use futures::StreamExt as _;
    use rtnetlink::{
        MulticastGroup, packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage,
    };

    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])?;
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if matches!(
                message.payload,
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_)
                )
            ) && tx.send(()).await.is_err()
            {
                break;
            }
        }
    });
    Ok(rx)
}
