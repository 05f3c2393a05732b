//! Interfaces: look-ups by name and a stream of changes (rtnetlink).

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, LinkUnspec, MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkFlags, LinkMessage},
    },
};
use tokio::sync::mpsc;

use crate::mac::MacAddr;

/// What the agent needs to know of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Current MAC address (None for interfaces without one).
    pub mac: Option<MacAddr>,
    /// Administratively up.
    pub up: bool,
    /// Carrier present (IFF_LOWER_UP).
    pub carrier: bool,
    /// Index of the bridge or bond it is enslaved to.
    pub controller: Option<u32>,
    /// MTU, when the kernel said.
    pub mtu: Option<u32>,
}

/// A change to an interface, as the kernel announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created or changed (MAC, flags, name).
    Changed(Link),
    /// Removed.
    Removed {
        /// Its index.
        index: u32,
        /// Its name, when the kernel said.
        name: Option<String>,
    },
}

/// Errors talking to the kernel about interfaces.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Opening the netlink socket failed.
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused or failed a request.
    #[error("netlink request for interface {name} failed: {source}")]
    Request {
        /// The interface asked about.
        name: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
}

fn from_message(message: &LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        index: message.header.index,
        mac: None,
        up: message.header.flags.contains(LinkFlags::Up),
        carrier: message.header.flags.contains(LinkFlags::LowerUp),
        controller: None,
        mtu: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Controller(index) => link.controller = Some(*index),
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(bytes);
                link.mac = Some(MacAddr(mac));
            }
            _ => {}
        }
    }
    link
}

/// A netlink handle for requests; the connection runs on the current tokio
/// runtime.
pub fn connect() -> Result<Handle, LinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The interface called `name`, or `None` if there is none.
pub async fn by_name(handle: &Handle, name: &str) -> Result<Option<Link>, LinkError> {
    let mut replies = handle.link().get().match_name(name.to_string()).execute();
    match replies.try_next().await {
        Ok(Some(message)) => Ok(Some(from_message(&message))),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(source) => Err(LinkError::Request {
            name: name.to_string(),
            source,
        }),
    }
}

/// The interface with index `index`, or `None` if there is none.
pub async fn by_index(handle: &Handle, index: u32) -> Result<Option<Link>, LinkError> {
    let mut replies = handle.link().get().match_index(index).execute();
    match replies.try_next().await {
        Ok(Some(message)) => Ok(Some(from_message(&message))),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(source) => Err(LinkError::Request {
            name: format!("ifindex {index}"),
            source,
        }),
    }
}

/// Every interface of this namespace.
pub async fn all(handle: &Handle) -> Result<Vec<Link>, LinkError> {
    let mut out = Vec::new();
    let mut replies = handle.link().get().execute();
    loop {
        match replies.try_next().await {
            Ok(Some(message)) => out.push(from_message(&message)),
            Ok(None) => return Ok(out),
            Err(source) => {
                return Err(LinkError::Request {
                    name: "(all)".into(),
                    source,
                });
            }
        }
    }
}

/// Subscribes to link changes; events arrive on the returned channel until
/// the receiver is dropped.
pub fn watch() -> Result<mpsc::Receiver<LinkEvent>, LinkError> {
    let (connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(LinkError::Socket)?;
    tokio::spawn(connection);
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    LinkEvent::Changed(from_message(&link))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    let link = from_message(&link);
                    LinkEvent::Removed {
                        index: link.index,
                        name: (!link.name.is_empty()).then_some(link.name),
                    }
                }
                _ => continue,
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Sets the MAC address of interface `index` (live: the link stays up).
pub async fn set_mac(
    handle: &Handle,
    index: u32,
    name: &str,
    mac: MacAddr,
) -> Result<(), LinkError> {
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .address(mac.0.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(|source| LinkError::Request {
            name: name.to_string(),
            source,
        })
}

/// Sets interface `index` administratively up or down.
pub async fn set_up(handle: &Handle, index: u32, name: &str, up: bool) -> Result<(), LinkError> {
    let link = LinkUnspec::new_with_index(index);
    let message = if up { link.up() } else { link.down() }.build();
    handle
        .link()
        .set(message)
        .execute()
        .await
        .map_err(|source| LinkError::Request {
            name: name.to_string(),
            source,
        })
}

/// Takes interface `index` down and up again.
pub async fn bounce(handle: &Handle, index: u32, name: &str) -> Result<(), LinkError> {
    let err = |source| LinkError::Request {
        name: name.to_string(),
        source,
    };
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).down().build())
        .execute()
        .await
        .map_err(err)?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(err)
}
