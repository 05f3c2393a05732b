//! The MLAG sync protocol: the frames the two switches of a pair exchange
//! over the peer link. One codec, used by both ends; `no_std` and
//! allocation-free (encodes into a caller's buffer, decodes into borrowed
//! views).
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------+---------------+---------------+---------------+
//! |      'M'      |      'S'      | version major | version minor |
//! +---------------+---------------+---------------+---------------+
//! | message type  |   sub-type    |        flags (zero)           |
//! +---------------+---------------+---------------+---------------+
//! |                        sequence number                        |
//! +---------------+---------------+---------------+---------------+
//! |              total length (header + TLVs), bytes              |
//! +---------------+---------------+---------------+---------------+
//! |          TLV type             |         TLV length            |
//! +---------------+---------------+---------------+---------------+
//! |   value (TLV length bytes) ...                 next TLV ...
//! ```
//!
//! All integers are big-endian. A TLV type with the top bit set is
//! "must understand": a receiver that does not know it rejects the frame.
//! Other unknown TLVs are skipped, which is how minor versions add fields.
//!
//! An ARP entry TLV carries a driver header and the original frame:
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |                  MLAG port id (shared by both switches)       |
//! +-------------------------------+-------------------------------+
//! |          outer VLAN           |          inner VLAN           |
//! +-------------------------------+-------------------------------+
//! |                            VRF id                             |
//! +---------------+---------------+-------------------------------+
//! |     class     |  vlan count   |        frame length           |
//! +---------------+---------------+-------------------------------+
//! |   the original Ethernet frame (frame length bytes) ...
//! ```
//!
//! An ARP delete TLV withdraws an entry the sender synced earlier (its
//! kernel dropped the neighbour or marked it FAILED); the key is the one the
//! sender's table uses. Added in 1.1 without the must-understand bit, so a
//! 1.0 receiver skips it and keeps the entry as before:
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! |                  MLAG port id                                 |
//! +-------------------------------+-------------------------------+
//! |                            VRF id                             |
//! +-------------------------------+-------------------------------+
//! |                   IPv4 address of the entry                   |
//! +-------------------------------+-------------------------------+
//! ```
//!
//! ND sub-type sync frames (sub-type 2) carry ND entry TLVs (0x8201, laid
//! out as the ARP entry: driver header and the original frame, which must
//! be a Neighbour Advertisement) and ND delete TLVs (0x0202: MLAG id u32,
//! VRF u32, the IPv6 address, 24 bytes). ND entries are must-understand,
//! so they only go to a peer whose hello announces `ND_SYNC`.
//!
//! A port-state message (type 5, since 1.1) tells the peer that one of the
//! sender's member ports went up or down: one PORT_STATE TLV per port,
//! (MLAG id u32, state u8: 1 up, 0 down). It is a new message type, which a
//! 1.0 receiver would skip but count as unknown input, so it is only sent
//! to a peer whose hello said 1.1 or later.
//!
//! A sync frame may carry a SYNC_DONE TLV (no value): the sender has sent
//! everything it had when the session started, so a receiver that has
//! applied the frames up to this one has converged (MC-LAG ends its
//! hold-down on it). It is optional, so an older receiver skips it.
//!
//! Compatibility: the major version must match exactly (a mismatch closes the
//! session with an error on both sides); the minor versions are negotiated
//! down to the lower of the two.
//!
//! Known-answer vector (see the tests): a keepalive with sequence number 7,
//! no TLVs:
//! `4d 53 01 01 04 00 00 00 00 00 00 07 00 00 00 10`.

/// Frame magic, "MS".
pub const MAGIC: [u8; 2] = *b"MS";
/// Protocol major version spoken by this build.
pub const VERSION_MAJOR: u8 = 1;
/// Protocol minor version spoken by this build.
/// 1.1 added the ARP delete TLV and the port-state message.
pub const VERSION_MINOR: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 16;
/// TLV header length.
pub const TLV_HEADER_LEN: usize = 4;
/// Driver header length inside an ARP entry TLV.
pub const DRIVER_HEADER_LEN: usize = 16;
/// Value length of an ARP delete TLV.
pub const ARP_DELETE_LEN: usize = 12;
/// Largest frame any implementation may send.
pub const MAX_FRAME_LEN: usize = 256 * 1024;

/// Default port of the peer-link protocol: the TCP session and the UDP
/// keepalives (and the backup path's keepalives) use the same number.
pub const DEFAULT_PORT: u16 = 7789;
/// Bit of a TLV type marking it must-understand.
pub const TLV_MUST_UNDERSTAND: u16 = 0x8000;

/// Message types.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// Session opening: version, identity, capabilities.
    Hello = 1,
    /// Synced entries (of the sub-type's kind).
    Sync = 2,
    /// Cumulative acknowledgement of sync frames.
    Ack = 3,
    /// Liveness, sent on its own path.
    Keepalive = 4,
    /// A member port of the sender went up or down (since 1.1).
    PortState = 5,
}

impl MessageType {
    /// From the wire byte.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Hello,
            2 => Self::Sync,
            3 => Self::Ack,
            4 => Self::Keepalive,
            5 => Self::PortState,
            _ => return None,
        })
    }
}

/// Sub-types: what kind of entries a sync frame carries.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubType {
    /// Not applicable (hello, ack, keepalive).
    None = 0,
    /// ARP replies.
    Arp = 1,
    /// IPv6 neighbour discovery (reserved).
    Nd = 2,
    /// IGMP (reserved).
    Igmp = 3,
    /// MAC table entries (reserved).
    Mac = 4,
}

impl SubType {
    /// From the wire byte.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Self::None,
            1 => Self::Arp,
            2 => Self::Nd,
            3 => Self::Igmp,
            4 => Self::Mac,
            _ => return None,
        })
    }
}

/// TLV types.
pub mod tlv {
    /// Hello: system name, UTF-8.
    pub const SYSTEM_NAME: u16 = 0x0001;
    /// Hello: system id (the switch's MAC), 6 bytes.
    pub const SYSTEM_ID: u16 = 0x0002;
    /// Hello: capability bits, u32.
    pub const CAPABILITIES: u16 = 0x0003;
    /// Hello/keepalive: boot id of the sender's agent, u64 (changes on restart).
    pub const BOOT_ID: u16 = 0x0004;
    /// Hello: largest frame the sender accepts, u32.
    pub const MAX_FRAME: u16 = 0x0005;
    /// Hello: the sender's MLAG port ids with their MACs, repeated (u32 + 6 bytes).
    pub const PORT: u16 = 0x0006;
    /// Hello: last sequence number the sender received and applied from the
    /// peer's agent with the peer's boot id (u64 boot id + u32 seq).
    pub const RESUME: u16 = 0x0007;
    /// Hello: the sender's MC-LAG election address (4 or 16 bytes).
    pub const MCLAG_ADDRESS: u16 = 0x0008;
    /// Hello: a member port's MTU, (MLAG id u32, MTU u32), one per port,
    /// for the pair's consistency check. Optional.
    pub const PORT_MTU: u16 = 0x0009;
    /// Hello: the VLANs a member port carries to the peer's kernel path
    /// (its `vlan_interfaces`), MLAG id u32 then (outer u16, inner u16)
    /// pairs, one TLV per member port (none: no VLAN interfaces), for the
    /// pair's consistency check. Optional: a peer that sends none for a
    /// port is not compared.
    pub const PORT_VLANS: u16 = 0x000A;
    /// Ack: cumulative sequence number, u32.
    pub const ACK_SEQ: u16 = 0x0010;
    /// Port state: a member port's MLAG id (u32) and state (u8: 1 up,
    /// 0 down), since 1.1.
    pub const PORT_STATE: u16 = 0x0011;
    /// Sync: the sender has now sent everything it had for this session
    /// (its bulk resync after the hello is complete); no value. Optional:
    /// a receiver that does not know it skips it.
    pub const SYNC_DONE: u16 = 0x0012;
    /// Sync/ARP: one entry (must understand).
    pub const ARP_ENTRY: u16 = 0x8101;
    /// Sync/ARP: one entry withdrawn, (MLAG id u32, VRF u32, IPv4), since
    /// 1.1. Not must-understand: an older receiver skips it safely.
    pub const ARP_DELETE: u16 = 0x0102;
    /// Sync/ND: one Neighbour Advertisement, laid out as an ARP entry
    /// (driver header + original frame) (must understand). Only sent to a
    /// peer whose hello announces `capability::ND_SYNC`.
    pub const ND_ENTRY: u16 = 0x8201;
    /// Sync/ND: one entry withdrawn, (MLAG id u32, VRF u32, IPv6 address).
    pub const ND_DELETE: u16 = 0x0202;
}

/// Capability bits.
pub mod capability {
    /// Syncs ARP replies.
    pub const ARP_SYNC: u32 = 1 << 0;
    /// Syncs Neighbour Advertisements (ND sub-type frames).
    pub const ND_SYNC: u32 = 1 << 1;
    /// Every capability this implementation has (what its hello says).
    pub const ALL: u32 = ARP_SYNC | ND_SYNC;
}

/// What was wrong with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or the header's length field says.
    Incomplete {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Not our magic.
    BadMagic([u8; 2]),
    /// A major version this build does not speak.
    IncompatibleVersion {
        /// The frame's major version.
        major: u8,
        /// The frame's minor version.
        minor: u8,
    },
    /// Unknown message type.
    UnknownType(u8),
    /// Unknown sub-type.
    UnknownSubType(u8),
    /// Sub-type not valid with this message type.
    SubTypeMismatch {
        /// The message type.
        msg_type: u8,
        /// The sub-type.
        sub_type: u8,
    },
    /// Non-zero reserved flags.
    BadFlags(u16),
    /// Length field smaller than the header or larger than allowed.
    BadLength(u32),
    /// A TLV header or value runs past the end of the frame.
    TlvOverrun {
        /// Offset of the TLV.
        offset: usize,
    },
    /// An unknown must-understand TLV.
    UnknownMandatoryTlv(u16),
    /// A known TLV with a value of the wrong size or content.
    BadTlvValue {
        /// The TLV type.
        tlv_type: u16,
    },
    /// A required TLV is missing.
    MissingTlv(u16),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Incomplete { need, have } => {
                write!(f, "truncated frame: need {need} bytes, have {have}")
            }
            Self::BadMagic(m) => write!(f, "bad magic {:02x}{:02x}", m[0], m[1]),
            Self::IncompatibleVersion { major, minor } => {
                write!(
                    f,
                    "incompatible protocol version {major}.{minor} (this agent speaks {VERSION_MAJOR}.x)"
                )
            }
            Self::UnknownType(t) => write!(f, "unknown message type {t}"),
            Self::UnknownSubType(t) => write!(f, "unknown sub-type {t}"),
            Self::SubTypeMismatch { msg_type, sub_type } => write!(
                f,
                "sub-type {sub_type} not valid for message type {msg_type}"
            ),
            Self::BadFlags(x) => write!(f, "reserved flags set: {x:#06x}"),
            Self::BadLength(l) => write!(f, "bad length field {l}"),
            Self::TlvOverrun { offset } => {
                write!(f, "TLV at offset {offset} runs past the end of the frame")
            }
            Self::UnknownMandatoryTlv(t) => write!(f, "unknown must-understand TLV {t:#06x}"),
            Self::BadTlvValue { tlv_type } => write!(f, "bad value for TLV {tlv_type:#06x}"),
            Self::MissingTlv(t) => write!(f, "required TLV {t:#06x} missing"),
        }
    }
}

impl DecodeError {
    /// Short stable name, used as a counter label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Incomplete { .. } => "truncated",
            Self::BadMagic(_) => "bad_magic",
            Self::IncompatibleVersion { .. } => "bad_version",
            Self::UnknownType(_) => "unknown_type",
            Self::UnknownSubType(_) | Self::SubTypeMismatch { .. } => "unknown_subtype",
            Self::BadFlags(_) | Self::BadLength(_) => "bad_header",
            Self::TlvOverrun { .. } | Self::BadTlvValue { .. } | Self::MissingTlv(_) => "bad_tlv",
            Self::UnknownMandatoryTlv(_) => "unknown_tlv",
        }
    }
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Sender's major version.
    pub major: u8,
    /// Sender's minor version.
    pub minor: u8,
    /// Message type.
    pub msg_type: MessageType,
    /// Sub-type.
    pub sub_type: SubType,
    /// Sequence number.
    pub seq: u32,
    /// Total frame length.
    pub length: u32,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes and checks a header from the first [`HEADER_LEN`] bytes; frames
/// longer than `max_len` are refused. Use it on a stream to learn how many
/// bytes the whole frame has.
pub fn decode_header(bytes: &[u8], max_len: usize) -> Result<Header, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete {
            need: HEADER_LEN,
            have: bytes.len(),
        });
    }
    if bytes[0..2] != MAGIC {
        return Err(DecodeError::BadMagic([bytes[0], bytes[1]]));
    }
    let (major, minor) = (bytes[2], bytes[3]);
    if major != VERSION_MAJOR {
        return Err(DecodeError::IncompatibleVersion { major, minor });
    }
    let msg_type = MessageType::from_u8(bytes[4]).ok_or(DecodeError::UnknownType(bytes[4]))?;
    let sub_type = SubType::from_u8(bytes[5]).ok_or(DecodeError::UnknownSubType(bytes[5]))?;
    let sub_ok = match msg_type {
        MessageType::Sync => sub_type != SubType::None,
        _ => sub_type == SubType::None,
    };
    if !sub_ok {
        return Err(DecodeError::SubTypeMismatch {
            msg_type: bytes[4],
            sub_type: bytes[5],
        });
    }
    let flags = be16(bytes, 6);
    if flags != 0 {
        return Err(DecodeError::BadFlags(flags));
    }
    let length = be32(bytes, 12);
    if (length as usize) < HEADER_LEN || length as usize > max_len.min(MAX_FRAME_LEN) {
        return Err(DecodeError::BadLength(length));
    }
    Ok(Header {
        major,
        minor,
        msg_type,
        sub_type,
        seq: be32(bytes, 8),
        length,
    })
}

/// One TLV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// Its type.
    pub tlv_type: u16,
    /// Its value.
    pub value: &'a [u8],
}

/// A decoded frame: a checked header and TLVs that are known to be well
/// formed.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// The header.
    pub header: Header,
    body: &'a [u8],
}

/// The TLV types this build understands, per message type.
fn known_tlv(msg_type: MessageType, tlv_type: u16) -> bool {
    match msg_type {
        MessageType::Hello => matches!(
            tlv_type,
            tlv::SYSTEM_NAME
                | tlv::SYSTEM_ID
                | tlv::CAPABILITIES
                | tlv::BOOT_ID
                | tlv::MAX_FRAME
                | tlv::PORT
                | tlv::RESUME
                | tlv::MCLAG_ADDRESS
                | tlv::PORT_MTU
                | tlv::PORT_VLANS
        ),
        MessageType::Keepalive => tlv_type == tlv::BOOT_ID,
        MessageType::Ack => tlv_type == tlv::ACK_SEQ,
        MessageType::PortState => tlv_type == tlv::PORT_STATE,
        MessageType::Sync => matches!(
            tlv_type,
            tlv::ARP_ENTRY | tlv::ARP_DELETE | tlv::ND_ENTRY | tlv::ND_DELETE | tlv::SYNC_DONE
        ),
    }
}

impl<'a> Frame<'a> {
    /// Decodes exactly one frame occupying all of `bytes`.
    pub fn decode(bytes: &'a [u8], max_len: usize) -> Result<Self, DecodeError> {
        let header = decode_header(bytes, max_len)?;
        let length = header.length as usize;
        if bytes.len() < length {
            return Err(DecodeError::Incomplete {
                need: length,
                have: bytes.len(),
            });
        }
        if bytes.len() > length {
            return Err(DecodeError::BadLength(header.length));
        }
        let frame = Self {
            header,
            body: &bytes[HEADER_LEN..length],
        };
        let mut offset = HEADER_LEN;
        let mut rest = frame.body;
        while !rest.is_empty() {
            if rest.len() < TLV_HEADER_LEN {
                return Err(DecodeError::TlvOverrun { offset });
            }
            let tlv_type = be16(rest, 0);
            let len = be16(rest, 2) as usize;
            if rest.len() < TLV_HEADER_LEN + len {
                return Err(DecodeError::TlvOverrun { offset });
            }
            let value = &rest[TLV_HEADER_LEN..TLV_HEADER_LEN + len];
            if known_tlv(header.msg_type, tlv_type) {
                check_value(tlv_type, value)?;
            } else if tlv_type & TLV_MUST_UNDERSTAND != 0 {
                return Err(DecodeError::UnknownMandatoryTlv(tlv_type));
            }
            rest = &rest[TLV_HEADER_LEN + len..];
            offset += TLV_HEADER_LEN + len;
        }
        Ok(frame)
    }

    /// Every TLV, in order (already validated by [`Frame::decode`]).
    pub fn tlvs(&self) -> TlvIter<'a> {
        TlvIter { rest: self.body }
    }

    /// The first TLV of `tlv_type`.
    pub fn find(&self, tlv_type: u16) -> Option<&'a [u8]> {
        self.tlvs()
            .find(|t| t.tlv_type == tlv_type)
            .map(|t| t.value)
    }

    /// A u32 TLV.
    pub fn u32_of(&self, tlv_type: u16) -> Option<u32> {
        let v = self.find(tlv_type)?.get(..4)?;
        Some(be32(v, 0))
    }

    /// A u64 TLV.
    pub fn u64_of(&self, tlv_type: u16) -> Option<u64> {
        let v: [u8; 8] = self.find(tlv_type)?.get(..8)?.try_into().ok()?;
        Some(u64::from_be_bytes(v))
    }

    /// The ARP entries of a sync frame.
    pub fn arp_entries(&self) -> impl Iterator<Item = ArpEntry<'a>> + 'a {
        self.tlvs()
            .filter(|t| t.tlv_type == tlv::ARP_ENTRY)
            .filter_map(|t| ArpEntry::parse(t.value))
    }

    /// The port states of a port-state message: (MLAG id, up).
    pub fn port_states(&self) -> impl Iterator<Item = (u32, bool)> + 'a {
        self.tlvs()
            .filter(|t| t.tlv_type == tlv::PORT_STATE && t.value.len() == 5)
            .map(|t| (be32(t.value, 0), t.value[4] == 1))
    }

    /// Whether the frame ends the sender's bulk resync (SYNC_DONE).
    pub fn is_sync_done(&self) -> bool {
        self.find(tlv::SYNC_DONE).is_some()
    }

    /// The ND entries of a sync frame.
    pub fn nd_entries(&self) -> impl Iterator<Item = NdEntry<'a>> + 'a {
        self.tlvs()
            .filter(|t| t.tlv_type == tlv::ND_ENTRY)
            .filter_map(|t| NdEntry::parse(t.value))
    }

    /// The ND deletes of a sync frame.
    pub fn nd_deletes(&self) -> impl Iterator<Item = NdDelete> + 'a {
        self.tlvs()
            .filter(|t| t.tlv_type == tlv::ND_DELETE)
            .filter_map(|t| NdDelete::parse(t.value))
    }

    /// The ARP deletes of a sync frame (entries the sender withdrew).
    pub fn arp_deletes(&self) -> impl Iterator<Item = ArpDelete> + 'a {
        self.tlvs()
            .filter(|t| t.tlv_type == tlv::ARP_DELETE)
            .filter_map(|t| ArpDelete::parse(t.value))
    }
}

fn check_value(tlv_type: u16, value: &[u8]) -> Result<(), DecodeError> {
    let ok = match tlv_type {
        tlv::SYSTEM_NAME => value.len() <= 64 && core::str::from_utf8(value).is_ok(),
        tlv::SYSTEM_ID => value.len() == 6,
        tlv::CAPABILITIES | tlv::MAX_FRAME | tlv::ACK_SEQ => value.len() == 4,
        tlv::BOOT_ID => value.len() == 8,
        tlv::PORT => value.len() == 10,
        tlv::PORT_MTU => value.len() == 8,
        tlv::PORT_VLANS => value.len() >= 4 && (value.len() - 4).is_multiple_of(4),
        tlv::RESUME => value.len() == 12,
        tlv::MCLAG_ADDRESS => value.len() == 4 || value.len() == 16,
        tlv::ARP_ENTRY => ArpEntry::parse(value).is_some(),
        tlv::ARP_DELETE => ArpDelete::parse(value).is_some(),
        tlv::ND_ENTRY => NdEntry::parse(value).is_some(),
        tlv::ND_DELETE => NdDelete::parse(value).is_some(),
        tlv::PORT_STATE => value.len() == 5 && value[4] <= 1,
        tlv::SYNC_DONE => value.is_empty(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadTlvValue { tlv_type })
    }
}

/// Iterator over validated TLVs.
#[derive(Clone, Debug)]
pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        if self.rest.len() < TLV_HEADER_LEN {
            return None;
        }
        let tlv_type = be16(self.rest, 0);
        let len = be16(self.rest, 2) as usize;
        let value = self.rest.get(TLV_HEADER_LEN..TLV_HEADER_LEN + len)?;
        self.rest = &self.rest[TLV_HEADER_LEN + len..];
        Some(Tlv { tlv_type, value })
    }
}

/// The driver header of a synced entry: where the original frame came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverHeader {
    /// MLAG port id of the ingress member port (both switches use the same id
    /// for the two halves of one MLAG).
    pub mlag_id: u32,
    /// Outer VLAN id (0 untagged).
    pub outer_vlan: u16,
    /// Inner VLAN id.
    pub inner_vlan: u16,
    /// VRF id (0 default).
    pub vrf: u32,
    /// Classification on the sender (a `capture::Class` as u8).
    pub class: u8,
    /// Number of VLAN tags on the frame.
    pub vlan_count: u8,
}

/// One synced ARP reply: driver header and the original frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpEntry<'a> {
    /// Where it came in.
    pub driver: DriverHeader,
    /// The original Ethernet frame.
    pub frame: &'a [u8],
}

impl<'a> ArpEntry<'a> {
    /// Parses an ARP entry TLV value; the frame must hold an ARP reply by the
    /// classifier's own rules.
    pub fn parse(value: &'a [u8]) -> Option<Self> {
        if value.len() < DRIVER_HEADER_LEN {
            return None;
        }
        let frame_len = be16(value, 14) as usize;
        if value.len() != DRIVER_HEADER_LEN + frame_len {
            return None;
        }
        let frame = &value[DRIVER_HEADER_LEN..];
        if !matches!(crate::arp::parse(frame), crate::arp::Parsed::ArpReply(_)) {
            return None;
        }
        let vlan_count = value[13];
        if vlan_count > 2 {
            return None;
        }
        Some(Self {
            driver: DriverHeader {
                mlag_id: be32(value, 0),
                outer_vlan: be16(value, 4),
                inner_vlan: be16(value, 6),
                vrf: be32(value, 8),
                class: value[12],
                vlan_count,
            },
            frame,
        })
    }

    /// Encoded length of the TLV value.
    pub fn value_len(frame_len: usize) -> usize {
        DRIVER_HEADER_LEN + frame_len
    }
}

/// One synced Neighbour Advertisement: driver header and the original frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdEntry<'a> {
    /// Where it came in.
    pub driver: DriverHeader,
    /// The original Ethernet frame.
    pub frame: &'a [u8],
}

/// Decodes a driver header + frame value; `frame_ok` judges the frame.
fn parse_driver_entry(value: &[u8], frame_ok: fn(&[u8]) -> bool) -> Option<(DriverHeader, &[u8])> {
    if value.len() < DRIVER_HEADER_LEN {
        return None;
    }
    let frame_len = be16(value, 14) as usize;
    if value.len() != DRIVER_HEADER_LEN + frame_len {
        return None;
    }
    let frame = &value[DRIVER_HEADER_LEN..];
    let vlan_count = value[13];
    if vlan_count > 2 || !frame_ok(frame) {
        return None;
    }
    Some((
        DriverHeader {
            mlag_id: be32(value, 0),
            outer_vlan: be16(value, 4),
            inner_vlan: be16(value, 6),
            vrf: be32(value, 8),
            class: value[12],
            vlan_count,
        },
        frame,
    ))
}

impl<'a> NdEntry<'a> {
    /// Parses an ND entry TLV value; the frame must hold a Neighbour
    /// Advertisement by the classifier's own rules (`crate::nd`).
    pub fn parse(value: &'a [u8]) -> Option<Self> {
        let (driver, frame) = parse_driver_entry(value, |f| {
            matches!(crate::nd::parse(f), crate::nd::Parsed::Advert(_))
        })?;
        Some(Self { driver, frame })
    }
}

/// Value length of an ND delete TLV.
pub const ND_DELETE_LEN: usize = 24;

/// One withdrawn ND entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdDelete {
    /// MLAG port id the entry was synced for.
    pub mlag_id: u32,
    /// VRF id (0 default).
    pub vrf: u32,
    /// The entry's IPv6 address.
    pub ip: [u8; 16],
}

impl NdDelete {
    /// Parses an ND delete TLV value (exactly [`ND_DELETE_LEN`] bytes).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() != ND_DELETE_LEN {
            return None;
        }
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&value[8..24]);
        Some(Self {
            mlag_id: be32(value, 0),
            vrf: be32(value, 4),
            ip,
        })
    }

    /// The TLV value.
    pub fn to_bytes(&self) -> [u8; ND_DELETE_LEN] {
        let mut out = [0u8; ND_DELETE_LEN];
        out[0..4].copy_from_slice(&self.mlag_id.to_be_bytes());
        out[4..8].copy_from_slice(&self.vrf.to_be_bytes());
        out[8..24].copy_from_slice(&self.ip);
        out
    }
}

/// One withdrawn ARP entry: the sender's kernel no longer holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpDelete {
    /// MLAG port id the entry was synced for.
    pub mlag_id: u32,
    /// VRF id (0 default).
    pub vrf: u32,
    /// The entry's IPv4 address.
    pub ip: [u8; 4],
}

impl ArpDelete {
    /// Parses an ARP delete TLV value (exactly [`ARP_DELETE_LEN`] bytes).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() != ARP_DELETE_LEN {
            return None;
        }
        Some(Self {
            mlag_id: be32(value, 0),
            vrf: be32(value, 4),
            ip: [value[8], value[9], value[10], value[11]],
        })
    }

    /// The TLV value.
    pub fn to_bytes(&self) -> [u8; ARP_DELETE_LEN] {
        let mut out = [0u8; ARP_DELETE_LEN];
        out[0..4].copy_from_slice(&self.mlag_id.to_be_bytes());
        out[4..8].copy_from_slice(&self.vrf.to_be_bytes());
        out[8..12].copy_from_slice(&self.ip);
        out
    }
}

/// Why a frame could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The buffer (or the size limit) has no room for it.
    NoRoom,
    /// A TLV value longer than 65535 bytes.
    ValueTooLong,
}

/// Builds one frame in a caller's buffer.
pub struct Encoder<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Encoder<'b> {
    /// Starts a frame. `buf` bounds the frame's size.
    pub fn new(
        buf: &'b mut [u8],
        msg_type: MessageType,
        sub_type: SubType,
        seq: u32,
    ) -> Result<Self, EncodeError> {
        if buf.len() < HEADER_LEN {
            return Err(EncodeError::NoRoom);
        }
        buf[0..2].copy_from_slice(&MAGIC);
        buf[2] = VERSION_MAJOR;
        buf[3] = VERSION_MINOR;
        buf[4] = msg_type as u8;
        buf[5] = sub_type as u8;
        buf[6..8].copy_from_slice(&[0, 0]);
        buf[8..12].copy_from_slice(&seq.to_be_bytes());
        Ok(Self {
            buf,
            len: HEADER_LEN,
        })
    }

    /// Room left for TLVs (headers included).
    pub fn room(&self) -> usize {
        self.buf.len().min(MAX_FRAME_LEN) - self.len
    }

    /// Appends a TLV whose value is the concatenation of `parts`.
    pub fn tlv(&mut self, tlv_type: u16, parts: &[&[u8]]) -> Result<(), EncodeError> {
        let value_len: usize = parts.iter().map(|p| p.len()).sum();
        if value_len > u16::MAX as usize {
            return Err(EncodeError::ValueTooLong);
        }
        if self.room() < TLV_HEADER_LEN + value_len {
            return Err(EncodeError::NoRoom);
        }
        let at = self.len;
        self.buf[at..at + 2].copy_from_slice(&tlv_type.to_be_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&(value_len as u16).to_be_bytes());
        let mut pos = at + TLV_HEADER_LEN;
        for part in parts {
            self.buf[pos..pos + part.len()].copy_from_slice(part);
            pos += part.len();
        }
        self.len = pos;
        Ok(())
    }

    /// Appends an ND entry (a Neighbour Advertisement; ND sub-type frames).
    pub fn nd_entry(&mut self, driver: &DriverHeader, frame: &[u8]) -> Result<(), EncodeError> {
        self.driver_entry(tlv::ND_ENTRY, driver, frame)
    }

    /// Appends an ND delete.
    pub fn nd_delete(&mut self, delete: &NdDelete) -> Result<(), EncodeError> {
        self.tlv(tlv::ND_DELETE, &[&delete.to_bytes()])
    }

    /// Appends an ARP entry.
    pub fn arp_entry(&mut self, driver: &DriverHeader, frame: &[u8]) -> Result<(), EncodeError> {
        self.driver_entry(tlv::ARP_ENTRY, driver, frame)
    }

    fn driver_entry(
        &mut self,
        tlv_type: u16,
        driver: &DriverHeader,
        frame: &[u8],
    ) -> Result<(), EncodeError> {
        if frame.len() > u16::MAX as usize - DRIVER_HEADER_LEN {
            return Err(EncodeError::ValueTooLong);
        }
        let mut head = [0u8; DRIVER_HEADER_LEN];
        head[0..4].copy_from_slice(&driver.mlag_id.to_be_bytes());
        head[4..6].copy_from_slice(&driver.outer_vlan.to_be_bytes());
        head[6..8].copy_from_slice(&driver.inner_vlan.to_be_bytes());
        head[8..12].copy_from_slice(&driver.vrf.to_be_bytes());
        head[12] = driver.class;
        head[13] = driver.vlan_count;
        head[14..16].copy_from_slice(&(frame.len() as u16).to_be_bytes());
        self.tlv(tlv_type, &[&head, frame])
    }

    /// Marks the frame as the end of the sender's bulk resync.
    pub fn sync_done(&mut self) -> Result<(), EncodeError> {
        self.tlv(tlv::SYNC_DONE, &[])
    }

    /// Appends a port state (port-state message).
    pub fn port_state(&mut self, mlag_id: u32, up: bool) -> Result<(), EncodeError> {
        self.tlv(tlv::PORT_STATE, &[&mlag_id.to_be_bytes(), &[u8::from(up)]])
    }

    /// Appends an ARP delete.
    pub fn arp_delete(&mut self, delete: &ArpDelete) -> Result<(), EncodeError> {
        self.tlv(tlv::ARP_DELETE, &[&delete.to_bytes()])
    }

    /// Bytes used so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no TLV has been added.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// Writes the length field and returns the frame's size.
    pub fn finish(self) -> usize {
        self.buf[12..16].copy_from_slice(&(self.len as u32).to_be_bytes());
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_known_answer() {
        let mut buf = [0u8; 64];
        let len = Encoder::new(&mut buf, MessageType::Keepalive, SubType::None, 7)
            .unwrap()
            .finish();
        assert_eq!(
            &buf[..len],
            &[0x4d, 0x53, 1, 1, 4, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0x10]
        );
        let frame = Frame::decode(&buf[..len], 1024).unwrap();
        assert_eq!(frame.header.seq, 7);
        assert_eq!(frame.header.msg_type, MessageType::Keepalive);
    }
}
