//! Frame builders. Written by hand from the RFCs (not with the product's
//! parser) so the tests check the product against an independent encoder.

/// 802.1Q customer tag.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad service tag.
pub const TPID_8021AD: u16 = 0x88a8;

/// An Ethernet/IPv4 ARP packet.
#[derive(Clone, Debug)]
pub struct Arp {
    /// Ethernet destination.
    pub dst: [u8; 6],
    /// Ethernet source.
    pub src: [u8; 6],
    /// 1 request, 2 reply.
    pub opcode: u16,
    /// Sender MAC.
    pub sender_mac: [u8; 6],
    /// Sender IP.
    pub sender_ip: [u8; 4],
    /// Target MAC.
    pub target_mac: [u8; 6],
    /// Target IP.
    pub target_ip: [u8; 4],
    /// VLAN tags, outermost first: (TPID, VLAN id).
    pub tags: Vec<(u16, u16)>,
}

impl Arp {
    /// A reply from `sender` (MAC, IP) to `target` (MAC, IP), sent by the
    /// sender to the target's MAC.
    pub fn reply(sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) -> Self {
        Self {
            dst: target.0,
            src: sender.0,
            opcode: 2,
            sender_mac: sender.0,
            sender_ip: sender.1,
            target_mac: target.0,
            target_ip: target.1,
            tags: Vec::new(),
        }
    }

    /// The same packet with these VLAN tags.
    pub fn tagged(mut self, tags: &[(u16, u16)]) -> Self {
        self.tags = tags.to_vec();
        self
    }

    /// The Ethernet frame (no FCS, no padding).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.src);
        for (tpid, vid) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&0x0806u16.to_be_bytes());
        f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4]);
        f.extend_from_slice(&self.opcode.to_be_bytes());
        f.extend_from_slice(&self.sender_mac);
        f.extend_from_slice(&self.sender_ip);
        f.extend_from_slice(&self.target_mac);
        f.extend_from_slice(&self.target_ip);
        f
    }
}

/// A frame that claims ARP but ends inside the ARP header (`keep` bytes of it).
pub fn truncated_arp(dst: [u8; 6], src: [u8; 6], keep: usize) -> Vec<u8> {
    let full = Arp::reply((src, [10, 0, 0, 9]), (dst, [10, 0, 0, 1])).to_bytes();
    full[..14 + keep.min(27)].to_vec()
}

/// A frame that claims an 802.1Q tag but ends two bytes into it.
pub fn truncated_vlan(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
    f
}

/// An Ethernet/IPv4 ARP whose address lengths are garbage, followed by
/// `noise` bytes of pseudo-random garbage.
pub fn garbage_arp(dst: [u8; 6], src: [u8; 6], seed: u32, noise: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0xee, 0x99, 0x00, 0x02]);
    let mut x = seed | 1;
    for _ in 0..noise {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

/// An ICMPv6 Neighbour Advertisement (RFC 4861 §4.4) in an Ethernet frame,
/// with a Target Link-Layer Address option.
#[derive(Clone, Debug)]
pub struct Na {
    /// Ethernet destination.
    pub dst: [u8; 6],
    /// Ethernet source (and the target link-layer address).
    pub src: [u8; 6],
    /// IPv6 source.
    pub src_ip: [u8; 16],
    /// IPv6 destination.
    pub dst_ip: [u8; 16],
    /// Target address.
    pub target: [u8; 16],
    /// R/S/O flag byte.
    pub flags: u8,
    /// Hop limit (255 for valid ND).
    pub hop_limit: u8,
    /// Extension headers before ICMPv6: (next-header value of this header,
    /// length in 8-byte units minus one); Hop-by-Hop is 0, Destination
    /// Options 60.
    pub ext: Vec<(u8, u8)>,
    /// VLAN tags, outermost first: (TPID, VLAN id).
    pub tags: Vec<(u16, u16)>,
}

/// Solicited + Override, as an answer to a solicitation.
pub const NA_SOLICITED: u8 = 0x60;

impl Na {
    /// A solicited NA from `sender` (MAC, IPv6) about its own address, to
    /// `to` (MAC, IPv6: the soliciting node).
    pub fn solicited(sender: ([u8; 6], [u8; 16]), to: ([u8; 6], [u8; 16])) -> Self {
        Self {
            dst: to.0,
            src: sender.0,
            src_ip: sender.1,
            dst_ip: to.1,
            target: sender.1,
            flags: NA_SOLICITED,
            hop_limit: 255,
            ext: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// The same packet with these VLAN tags.
    pub fn tagged(mut self, tags: &[(u16, u16)]) -> Self {
        self.tags = tags.to_vec();
        self
    }

    /// The ICMPv6 message (checksum filled in).
    fn icmp(&self) -> Vec<u8> {
        let mut m = vec![136, 0, 0, 0, self.flags, 0, 0, 0];
        m.extend_from_slice(&self.target);
        m.extend_from_slice(&[2, 1]);
        m.extend_from_slice(&self.src);
        // RFC 8200 §8.1 pseudo-header: src, dst, upper-layer length, 58.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&self.src_ip);
        pseudo.extend_from_slice(&self.dst_ip);
        pseudo.extend_from_slice(&(m.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(&m);
        let mut sum: u32 = pseudo
            .chunks(2)
            .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        m[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        m
    }

    /// The Ethernet frame (no FCS, no padding).
    pub fn to_bytes(&self) -> Vec<u8> {
        let icmp = self.icmp();
        let mut payload = Vec::new();
        for (i, (_, len)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(58, |(kind, _)| *kind);
            let mut header = vec![0u8; (*len as usize + 1) * 8];
            header[0] = next;
            header[1] = *len;
            // PadN filling the rest (type 1, length).
            header[2] = 1;
            header[3] = header.len() as u8 - 4;
            payload.extend_from_slice(&header);
        }
        payload.extend_from_slice(&icmp);
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.src);
        for (tpid, vid) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.push(self.ext.first().map_or(58, |(kind, _)| *kind));
        f.push(self.hop_limit);
        f.extend_from_slice(&self.src_ip);
        f.extend_from_slice(&self.dst_ip);
        f.extend_from_slice(&payload);
        f
    }
}

/// An IPv6 address from eight groups.
pub fn ipv6(groups: [u16; 8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, g) in groups.iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&g.to_be_bytes());
    }
    out
}
