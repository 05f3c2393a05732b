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
