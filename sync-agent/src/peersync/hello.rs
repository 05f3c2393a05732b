//! The hello message (SPEC 2.4): what each side tells the other when a
//! session opens, as a typed [`Hello`] with one `encode`/`decode` pair over
//! `sync_common::wire`'s frame codec.
//!
//! ```text
//! header: 'M' 'S' major minor | type=1 (hello) sub=0 flags=0 | seq=0 | length
//! TLVs, in this order when encoded (a decoder accepts any order):
//!   0x0001 SYSTEM_NAME    UTF-8, at most 64 bytes
//!   0x0002 SYSTEM_ID      6-byte MAC
//!   0x0003 CAPABILITIES   u32 bit set (capability::ARP_SYNC)
//!   0x0004 BOOT_ID        u64, required: a new one means the peer restarted
//!   0x0005 MAX_FRAME      u32, largest frame the sender accepts
//!   0x0006 PORT           u32 MLAG id + 6-byte MAC, one per member port
//!   0x0009 PORT_MTU       u32 MLAG id + u32 MTU, one per member port whose
//!                         MTU is known (optional; for MC-LAG's consistency
//!                         check)
//!   0x000A PORT_VLANS     u32 MLAG id + (u16 outer, u16 inner VLAN) pairs,
//!                         one per member port, from `vlan_interfaces`
//!                         (optional; for the consistency check)
//!   0x0008 MCLAG_ADDRESS  4 or 16 bytes (IPv4 / IPv6), when MC-LAG runs
//!   0x0007 RESUME         u64 boot id of the peer + u32 last applied seq
//! ```
//!
//! The version is not a field of the hello: it is the frame header's
//! major/minor, checked by the frame decoder (a major mismatch never reaches
//! [`Hello::decode`]); the minor in use is the lower of the two.
//!
//! [`Frame::decode`] has already checked every known TLV's length; decoding
//! here still reads through checked accessors so a codec change can never
//! turn into a panic.

use std::net::IpAddr;

use sync_common::wire::{
    self, Encoder, Frame, HEADER_LEN, MessageType, SubType, TLV_HEADER_LEN, tlv,
};

use crate::mac::MacAddr;

/// Longest system name sent, in bytes (the decoder refuses longer ones).
pub const MAX_NAME_LEN: usize = 64;

/// One hello, either side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Instance name of the sender (truncated to [`MAX_NAME_LEN`] bytes on
    /// a character boundary).
    pub name: String,
    /// The sender's system id; None when a hello omits it.
    pub system_id: Option<MacAddr>,
    /// Capability bits (`wire::capability`); 0 when omitted.
    pub capabilities: u32,
    /// Random id of the sender's run.
    pub boot_id: u64,
    /// Largest frame the sender accepts; None when omitted (the receiver
    /// then assumes its own limit).
    pub max_frame: Option<u32>,
    /// The sender's member ports: MLAG id and MAC (zero MAC when unknown).
    pub ports: Vec<(u32, MacAddr)>,
    /// The sender's member port MTUs: MLAG id and MTU (ports whose MTU is
    /// unknown are left out).
    pub port_mtus: Vec<(u32, u32)>,
    /// The sender's VLAN interface map: per member port's MLAG id, the
    /// (outer, inner) VLANs it hands to a VLAN interface (empty list: none).
    /// A port missing here is one the sender does not report.
    pub port_vlans: Vec<(u32, Vec<(u16, u16)>)>,
    /// The sender's MC-LAG election address, when it runs MC-LAG.
    pub mclag_address: Option<IpAddr>,
    /// `(boot id, seq)`: the sender already applied every sync frame up to
    /// `seq` from the run `boot id` of the receiver, so only later ones need
    /// resending.
    pub resume: Option<(u64, u32)>,
}

/// Why a frame is not a usable hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The frame is another message type.
    #[error("not a hello but a {0:?} frame")]
    NotHello(MessageType),
    /// The required boot id is missing.
    #[error("hello without a boot id")]
    MissingBootId,
}

impl Hello {
    /// The whole frame (header included), sequence number 0.
    pub fn encode(&self) -> Vec<u8> {
        let name = truncate_on_char(&self.name, MAX_NAME_LEN);
        let mclag: Option<Vec<u8>> = self.mclag_address.map(|a| match a {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        });
        // Exactly the bytes needed, so encoding cannot run out of room.
        let tlv = |value_len: usize| TLV_HEADER_LEN + value_len;
        let len = HEADER_LEN
            + tlv(name.len())
            + self.system_id.map_or(0, |_| tlv(6))
            + tlv(4)
            + tlv(8)
            + self.max_frame.map_or(0, |_| tlv(4))
            + self.ports.len() * tlv(10)
            + self.port_mtus.len() * tlv(8)
            + self
                .port_vlans
                .iter()
                .map(|(_, vlans)| tlv(4 + vlans.len() * 4))
                .sum::<usize>()
            + mclag.as_ref().map_or(0, |m| tlv(m.len()))
            + self.resume.map_or(0, |_| tlv(12));
        let mut buf = vec![0u8; len.min(wire::MAX_FRAME_LEN)];
        let Ok(mut e) = Encoder::new(&mut buf, MessageType::Hello, SubType::None, 0) else {
            return Vec::new();
        };
        // Errors only past MAX_FRAME_LEN (thousands of ports): the TLVs
        // that fit are sent, as before the typed codec.
        let _ = e.tlv(tlv::SYSTEM_NAME, &[name.as_bytes()]);
        if let Some(id) = self.system_id {
            let _ = e.tlv(tlv::SYSTEM_ID, &[&id.0]);
        }
        let _ = e.tlv(tlv::CAPABILITIES, &[&self.capabilities.to_be_bytes()]);
        let _ = e.tlv(tlv::BOOT_ID, &[&self.boot_id.to_be_bytes()]);
        if let Some(max) = self.max_frame {
            let _ = e.tlv(tlv::MAX_FRAME, &[&max.to_be_bytes()]);
        }
        for (mlag_id, mac) in &self.ports {
            let _ = e.tlv(tlv::PORT, &[&mlag_id.to_be_bytes(), &mac.0]);
        }
        for (mlag_id, mtu) in &self.port_mtus {
            let _ = e.tlv(tlv::PORT_MTU, &[&mlag_id.to_be_bytes(), &mtu.to_be_bytes()]);
        }
        for (mlag_id, vlans) in &self.port_vlans {
            let pairs: Vec<u8> = vlans
                .iter()
                .flat_map(|(outer, inner)| [outer.to_be_bytes(), inner.to_be_bytes()])
                .flatten()
                .collect();
            let _ = e.tlv(tlv::PORT_VLANS, &[&mlag_id.to_be_bytes(), &pairs]);
        }
        if let Some(address) = &mclag {
            let _ = e.tlv(tlv::MCLAG_ADDRESS, &[address]);
        }
        if let Some((boot, seq)) = self.resume {
            let _ = e.tlv(tlv::RESUME, &[&boot.to_be_bytes(), &seq.to_be_bytes()]);
        }
        let len = e.finish();
        buf.truncate(len);
        buf
    }

    /// Reads a hello from a decoded frame. Unknown TLVs are skipped (that is
    /// how minor versions add fields); a TLV of a known type with a value of
    /// the wrong size counts as absent; PORT TLVs of the wrong size are
    /// skipped one by one.
    pub fn decode(frame: &Frame<'_>) -> Result<Self, HelloError> {
        if frame.header.msg_type != MessageType::Hello {
            return Err(HelloError::NotHello(frame.header.msg_type));
        }
        let boot_id = frame
            .find(tlv::BOOT_ID)
            .and_then(be_u64)
            .ok_or(HelloError::MissingBootId)?;
        let name = frame
            .find(tlv::SYSTEM_NAME)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let system_id = frame
            .find(tlv::SYSTEM_ID)
            .and_then(|v| <[u8; 6]>::try_from(v).ok())
            .map(MacAddr);
        let capabilities = frame.find(tlv::CAPABILITIES).and_then(be_u32).unwrap_or(0);
        let max_frame = frame.find(tlv::MAX_FRAME).and_then(be_u32);
        let ports = frame
            .tlvs()
            .filter(|t| t.tlv_type == tlv::PORT)
            .filter_map(|t| {
                let (id, mac) = t.value.split_first_chunk::<4>()?;
                let mac = <[u8; 6]>::try_from(mac).ok()?;
                Some((u32::from_be_bytes(*id), MacAddr(mac)))
            })
            .collect();
        let port_mtus = frame
            .tlvs()
            .filter(|t| t.tlv_type == tlv::PORT_MTU)
            .filter_map(|t| {
                let (id, mtu) = t.value.split_first_chunk::<4>()?;
                Some((u32::from_be_bytes(*id), be_u32(mtu)?))
            })
            .collect();
        let port_vlans = frame
            .tlvs()
            .filter(|t| t.tlv_type == tlv::PORT_VLANS)
            .filter_map(|t| {
                let (id, pairs) = t.value.split_first_chunk::<4>()?;
                let vlans = pairs
                    .chunks_exact(4)
                    .map(|p| {
                        (
                            u16::from_be_bytes([p[0], p[1]]),
                            u16::from_be_bytes([p[2], p[3]]),
                        )
                    })
                    .collect();
                Some((u32::from_be_bytes(*id), vlans))
            })
            .collect();
        let mclag_address = frame.find(tlv::MCLAG_ADDRESS).and_then(|v| match v.len() {
            4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
            _ => None,
        });
        let resume = frame.find(tlv::RESUME).and_then(|v| {
            let (boot, seq) = v.split_first_chunk::<8>()?;
            let seq = <[u8; 4]>::try_from(seq).ok()?;
            Some((u64::from_be_bytes(*boot), u32::from_be_bytes(seq)))
        });
        Ok(Self {
            name,
            system_id,
            capabilities,
            boot_id,
            max_frame,
            ports,
            port_mtus,
            port_vlans,
            mclag_address,
            resume,
        })
    }
}

fn be_u32(v: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(v).ok().map(u32::from_be_bytes)
}

fn be_u64(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary (a cut inside a character would make the peer refuse
/// the whole hello as bad UTF-8).
fn truncate_on_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;
    use sync_common::wire::capability;

    use super::*;

    fn full() -> Hello {
        Hello {
            name: "a".into(),
            system_id: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            capabilities: capability::ARP_SYNC,
            boot_id: 0x0102_0304_0506_0708,
            max_frame: Some(0x4000),
            ports: vec![(1, MacAddr([2, 0, 0, 0, 0, 0x0a]))],
            port_mtus: vec![],
            port_vlans: vec![],
            mclag_address: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            resume: Some((0x1112_1314_1516_1718, 5)),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Hello, HelloError> {
        Hello::decode(&Frame::decode(bytes, wire::MAX_FRAME_LEN).expect("frame decodes"))
    }

    #[test]
    fn full_hello_known_answer() {
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // header: magic, 1.1, hello, no sub-type, flags, seq 0, length 97
            0x4d, 0x53, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x61,
            // SYSTEM_NAME "a"
            0x00, 0x01, 0x00, 0x01, b'a',
            // SYSTEM_ID
            0x00, 0x02, 0x00, 0x06, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01,
            // CAPABILITIES = ARP_SYNC
            0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
            // BOOT_ID
            0x00, 0x04, 0x00, 0x08, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
            // MAX_FRAME 16384
            0x00, 0x05, 0x00, 0x04, 0x00, 0x00, 0x40, 0x00,
            // PORT mlag 1, 02:00:00:00:00:0a
            0x00, 0x06, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x01,
            0x02, 0x00, 0x00, 0x00, 0x00, 0x0a,
            // MCLAG_ADDRESS 10.0.0.1
            0x00, 0x08, 0x00, 0x04, 0x0a, 0x00, 0x00, 0x01,
            // RESUME boot 0x1112..18, seq 5
            0x00, 0x07, 0x00, 0x0c, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
            0x00, 0x00, 0x00, 0x05,
        ];
        assert_eq!(full().encode(), expected);
        assert_eq!(decode(expected), Ok(full()));
    }

    #[test]
    fn minimal_hello_known_answer() {
        // A peer that sends only a boot id: every other field takes its default.
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x4d, 0x53, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1c,
            0x00, 0x04, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 9,
        ];
        let hello = decode(bytes).unwrap();
        assert_eq!(
            hello,
            Hello {
                name: String::new(),
                system_id: None,
                capabilities: 0,
                boot_id: 9,
                max_frame: None,
                ports: vec![],
                port_mtus: vec![],
                port_vlans: vec![],
                mclag_address: None,
                resume: None,
            }
        );
    }

    #[test]
    fn hello_without_boot_id_is_refused() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x4d, 0x53, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x15,
            0x00, 0x01, 0x00, 0x01, b'x',
        ];
        assert_eq!(decode(bytes), Err(HelloError::MissingBootId));
    }

    #[test]
    fn other_message_types_are_not_hellos() {
        let mut buf = [0u8; 32];
        let len = Encoder::new(&mut buf, MessageType::Ack, SubType::None, 1)
            .unwrap()
            .finish();
        assert_eq!(
            decode(&buf[..len]),
            Err(HelloError::NotHello(MessageType::Ack))
        );
    }

    #[test]
    fn unknown_optional_tlvs_are_skipped() {
        let mut buf = [0u8; 64];
        let mut e = Encoder::new(&mut buf, MessageType::Hello, SubType::None, 0).unwrap();
        e.tlv(0x0042, &[b"future"]).unwrap();
        e.tlv(tlv::BOOT_ID, &[&7u64.to_be_bytes()]).unwrap();
        let len = e.finish();
        assert_eq!(decode(&buf[..len]).unwrap().boot_id, 7);
    }

    #[test]
    fn port_mtu_known_answer() {
        let mut hello = full();
        hello.resume = None;
        hello.port_mtus = vec![(1, 9000)];
        let bytes = hello.encode();
        #[rustfmt::skip]
        let tlv: &[u8] = &[
            // PORT_MTU mlag 1, MTU 9000
            0x00, 0x09, 0x00, 0x08, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x23, 0x28,
        ];
        assert!(bytes.windows(tlv.len()).any(|w| w == tlv), "{bytes:02x?}");
        assert_eq!(decode(&bytes), Ok(hello));
    }

    #[test]
    fn port_vlans_known_answer() {
        let mut hello = full();
        hello.resume = None;
        hello.port_vlans = vec![(1, vec![(10, 0), (20, 5)]), (2, vec![])];
        let bytes = hello.encode();
        #[rustfmt::skip]
        let tlvs: &[u8] = &[
            // PORT_VLANS mlag 1: 10, 20.5
            0x00, 0x0a, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x0a, 0x00, 0x00, 0x00, 0x14, 0x00, 0x05,
            // PORT_VLANS mlag 2: none
            0x00, 0x0a, 0x00, 0x04, 0x00, 0x00, 0x00, 0x02,
        ];
        assert!(bytes.windows(tlvs.len()).any(|w| w == tlvs), "{bytes:02x?}");
        assert_eq!(decode(&bytes), Ok(hello));
    }

    #[test]
    fn a_port_vlans_tlv_of_a_ragged_length_is_refused() {
        let mut buf = [0u8; 64];
        let mut e = Encoder::new(&mut buf, MessageType::Hello, SubType::None, 0).unwrap();
        e.tlv(tlv::BOOT_ID, &[&7u64.to_be_bytes()]).unwrap();
        e.tlv(tlv::PORT_VLANS, &[&[0, 0, 0, 1, 0, 10]]).unwrap();
        let len = e.finish();
        assert!(Frame::decode(&buf[..len], wire::MAX_FRAME_LEN).is_err());
    }

    #[test]
    fn round_trips() {
        let mut hello = full();
        assert_eq!(decode(&hello.encode()), Ok(hello.clone()));
        hello.mclag_address = Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)));
        hello.resume = None;
        hello.ports = (1..=40)
            .map(|i| (i, MacAddr([2, 0, 0, 0, 1, i as u8])))
            .collect();
        hello.port_mtus = (1..=40).map(|i| (i, 1500 + i)).collect();
        hello.port_vlans = (1..=40)
            .map(|i| (i, (1..=(i as u16 % 5)).map(|v| (v * 10, v)).collect()))
            .collect();
        assert_eq!(decode(&hello.encode()), Ok(hello.clone()));
        hello.system_id = None;
        hello.max_frame = None;
        hello.mclag_address = None;
        hello.ports.clear();
        hello.port_mtus.clear();
        hello.port_vlans.clear();
        assert_eq!(decode(&hello.encode()), Ok(hello));
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let mut hello = full();
        hello.name = "é".repeat(40); // 80 bytes
        let decoded = decode(&hello.encode()).unwrap();
        assert_eq!(decoded.name, "é".repeat(32));
    }

    proptest! {
        /// Whatever TLVs a hello-typed frame carries, decoding never panics.
        #[test]
        fn decode_never_panics(
            tlvs in proptest::collection::vec(
                (prop_oneof![1u16..=10, any::<u16>()], proptest::collection::vec(any::<u8>(), 0..24)),
                0..12,
            ),
            minor in any::<u8>(),
        ) {
            let mut buf = vec![0u8; 1024];
            let mut e = Encoder::new(&mut buf, MessageType::Hello, SubType::None, 0).unwrap();
            for (t, v) in &tlvs {
                let _ = e.tlv(*t, &[v]);
            }
            let len = e.finish();
            buf.truncate(len);
            buf[3] = minor;
            if let Ok(frame) = Frame::decode(&buf, wire::MAX_FRAME_LEN) {
                let _ = Hello::decode(&frame);
            }
        }

        /// Raw bytes after a hello header never panic either.
        #[test]
        fn decode_of_raw_bodies_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = vec![0x4d, 0x53, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0, 0, 0, 0];
            buf.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_be_bytes());
            buf.extend_from_slice(&body);
            if let Ok(frame) = Frame::decode(&buf, wire::MAX_FRAME_LEN) {
                let _ = Hello::decode(&frame);
            }
        }
    }
}
