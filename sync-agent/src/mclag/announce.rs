//! SPEC 3.4: announcing this switch after a takeover, so neighbours move
//! their caches at once: a gratuitous ARP per IPv4 address and an unsolicited
//! neighbour advertisement per IPv6 address, sent on each member port.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{Icmpv6Type, PacketBuilder, icmpv6::NeighborAdvertisementHeader};

use crate::mac::MacAddr;

/// A gratuitous ARP (a request for our own address, broadcast).
pub fn gratuitous_arp(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement (override set) for `ip` to all
/// nodes, with the target link-layer address option.
pub fn unsolicited_na(mac: MacAddr, ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let builder = PacketBuilder::ethernet2(mac.0, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(ip.octets(), all_nodes.octets(), 255)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(
            NeighborAdvertisementHeader {
                router: false,
                solicited: false,
                r#override: true,
            },
        ));
    let mut payload = Vec::with_capacity(24);
    payload.extend_from_slice(&ip.octets());
    // Option 2: target link-layer address, length 1 (8 bytes).
    payload.extend_from_slice(&[2, 1]);
    payload.extend_from_slice(&mac.0);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    // Writing into a Vec cannot fail.
    let _ = builder.write(&mut out, &payload);
    out
}

/// A packet socket that sends raw frames out of any interface (of the
/// agent's namespace). Opened once and kept: closing a packet socket waits
/// for an RCU grace period (`synchronize_net`), which measured 7-12 ms
/// here, per port, in the middle of a takeover when a socket was opened
/// and closed for each port's announcement. Protocol 0: it receives
/// nothing, so it holds no buffers while idle.
#[derive(Debug)]
pub struct FrameSender {
    fd: std::os::fd::OwnedFd,
}

impl FrameSender {
    /// Opens the socket (needs CAP_NET_RAW).
    pub fn open() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket call with valid arguments.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor this struct now owns.
        Ok(Self {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends `frames` as they are out of interface `ifindex`.
    pub fn send(&self, ifindex: u32, frames: &[Vec<u8>]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { core::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        for frame in frames {
            // SAFETY: frame and addr are valid for the call.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    core::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_asks_for_its_own_address() {
        let mac: MacAddr = "02:00:00:00:0a:01".parse().unwrap();
        let f = gratuitous_arp(mac, Ipv4Addr::new(10, 0, 0, 1));
        let Ok(sync_common::arp::Parsed::Other) =
            Ok::<_, ()>(sync_common::arp::parse(f.as_slice()))
        else {
            panic!()
        };
        let a = sync_common::arp::addresses(f.as_slice(), 14).unwrap();
        assert_eq!(
            (a.opcode, a.sender_ip, a.target_ip),
            (1, [10, 0, 0, 1], [10, 0, 0, 1])
        );
        assert_eq!(&f[0..6], &[0xff; 6]);
    }

    #[test]
    fn unsolicited_na_parses_as_an_override_advertisement_with_a_valid_checksum() {
        let mac: MacAddr = "02:00:00:00:0a:01".parse().unwrap();
        let ip: Ipv6Addr = "fe80::ff:fe00:a01".parse().unwrap();
        let f = unsolicited_na(mac, ip);
        let packet = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = packet.transport else {
            panic!("not ICMPv6")
        };
        let Icmpv6Type::NeighborAdvertisement(header) = icmp.icmp_type() else {
            panic!("not an NA")
        };
        assert!(header.r#override && !header.solicited);
        let Some(etherparse::NetSlice::Ipv6(ipv6)) = packet.net else {
            panic!()
        };
        assert!(icmp.is_checksum_valid(ipv6.header().source(), ipv6.header().destination()));
        assert_eq!(&icmp.payload()[..16], &ip.octets());
    }
}
