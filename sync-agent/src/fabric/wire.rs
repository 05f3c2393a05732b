//! The fabric message format, in one place: a clear binary header the broker
//! and receivers route by, then a JSON body (one schema per channel), sealed
//! with an AEAD when encryption is on.
//!
//! ```text
//! "MF" | schema u8 | channel u8 | flags u8 | key_id u8 | sender_len u8 | sender
//!      | counter u64 (big endian) | nonce (24 bytes, sealed only) | body
//! body (clear, or once opened) = JSON | Ed25519 signature (64 bytes)
//! ```
//! The signature covers the whole header and the JSON, so the counter (the
//! sender's microsecond clock, forced to increase: replay protection) and
//! the channel are the sender's word. The whole header is also the AEAD's
//! associated data, so a sealed body cannot be moved to another channel or
//! sender.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header magic.
pub const MAGIC: [u8; 2] = *b"MF";
/// The schema version this agent speaks (2: signed bodies, counter in the
/// header).
pub const SCHEMA: u8 = 2;
/// Largest message accepted or sent.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Nonce length of XChaCha20-Poly1305.
pub const NONCE_LEN: usize = 24;
/// Flag: the body is sealed.
pub const FLAG_SEALED: u8 = 1;
/// Flag: an MQTT last will (sealed at connect time, its own replay domain).
pub const FLAG_WILL: u8 = 2;

/// The three channels of SPEC 4.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// Device info: heartbeats, membership, server status.
    Info = 1,
    /// Config changes and acknowledgements.
    Conf = 2,
    /// Faults.
    Fault = 3,
}

impl Channel {
    /// The topic segment.
    pub fn topic_name(self) -> &'static str {
        match self {
            Channel::Info => "DEV_INFO_MSG",
            Channel::Conf => "DEV_CONF_MSG",
            Channel::Fault => "DEV_FAULT_MSG",
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Channel::Info),
            2 => Some(Channel::Conf),
            3 => Some(Channel::Fault),
            _ => None,
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too long.
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    Oversized(usize),
    /// Not our format.
    #[error("malformed header: {0}")]
    Malformed(&'static str),
    /// A schema this agent does not speak.
    #[error("unknown schema version {0} (this agent speaks {SCHEMA})")]
    UnknownVersion(u8),
    /// The body does not parse.
    #[error("malformed body: {0}")]
    Body(String),
    /// The body's kind belongs to another channel than the header says.
    #[error("a {kind} body on the {channel:?} channel")]
    WrongChannel {
        /// Kind of the body.
        kind: &'static str,
        /// Channel of the header.
        channel: Channel,
    },
}

/// A decoded header with the (possibly sealed) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Channel.
    pub channel: Channel,
    /// Flags.
    pub flags: u8,
    /// Key id (0 when clear).
    pub key_id: u8,
    /// Sending member.
    pub sender: &'a str,
    /// The sender's message counter (its microsecond clock, increasing).
    pub counter: u64,
    /// Nonce, when sealed.
    pub nonce: Option<[u8; NONCE_LEN]>,
    /// Header bytes (the associated data).
    pub header: &'a [u8],
    /// Body bytes.
    pub body: &'a [u8],
}

impl Envelope<'_> {
    /// True when the body is sealed.
    pub fn sealed(&self) -> bool {
        self.flags & FLAG_SEALED != 0
    }
}

/// Builds a header.
pub fn encode_header(
    channel: Channel,
    flags: u8,
    key_id: u8,
    sender: &str,
    counter: u64,
    nonce: Option<&[u8; NONCE_LEN]>,
) -> Vec<u8> {
    let sender = &sender.as_bytes()[..sender.len().min(255)];
    let mut out = Vec::with_capacity(15 + sender.len() + NONCE_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(SCHEMA);
    out.push(channel as u8);
    out.push(flags);
    out.push(key_id);
    out.push(sender.len() as u8);
    out.extend_from_slice(sender);
    out.extend_from_slice(&counter.to_be_bytes());
    if let Some(nonce) = nonce {
        out.extend_from_slice(nonce);
    }
    out
}

/// Splits a message into header and body.
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, WireError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::Oversized(bytes.len()));
    }
    if bytes.len() < 7 {
        return Err(WireError::Malformed("shorter than the fixed header"));
    }
    if bytes[..2] != MAGIC {
        return Err(WireError::Malformed("bad magic"));
    }
    if bytes[2] != SCHEMA {
        return Err(WireError::UnknownVersion(bytes[2]));
    }
    let channel = Channel::from_byte(bytes[3]).ok_or(WireError::Malformed("unknown channel"))?;
    let flags = bytes[4];
    if flags & !(FLAG_SEALED | FLAG_WILL) != 0 {
        return Err(WireError::Malformed("unknown flags"));
    }
    let key_id = bytes[5];
    let sender_len = bytes[6] as usize;
    let mut at = 7 + sender_len;
    if bytes.len() < at || sender_len == 0 {
        return Err(WireError::Malformed("sender truncated or empty"));
    }
    let sender = std::str::from_utf8(&bytes[7..at])
        .map_err(|_| WireError::Malformed("sender is not UTF-8"))?;
    let counter = bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(WireError::Malformed("counter truncated"))?;
    at += 8;
    let nonce = if flags & FLAG_SEALED != 0 {
        let end = at + NONCE_LEN;
        let nonce: [u8; NONCE_LEN] = bytes
            .get(at..end)
            .ok_or(WireError::Malformed("nonce truncated"))?
            .try_into()
            .map_err(|_| WireError::Malformed("nonce truncated"))?;
        at = end;
        Some(nonce)
    } else {
        None
    };
    Ok(Envelope {
        channel,
        flags,
        key_id,
        sender,
        counter,
        nonce,
        header: &bytes[..at],
        body: &bytes[at..],
    })
}

/// Parses a clear body and checks it belongs to the header's channel.
pub fn parse_body(channel: Channel, body: &[u8]) -> Result<Message, WireError> {
    let message: Message =
        serde_json::from_slice(body).map_err(|e| WireError::Body(e.to_string()))?;
    if message.channel() != channel {
        return Err(WireError::WrongChannel {
            kind: message.kind(),
            channel,
        });
    }
    Ok(message)
}

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Hosts the broker and keeps the topology; not a member.
    Server,
    /// A member only.
    Client,
    /// Server and member.
    Both,
}

/// A heartbeat (SPEC 4.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Member identity.
    pub member: String,
    /// Role.
    pub role: Role,
    /// Model.
    pub model: String,
    /// Software version.
    pub version: String,
    /// The server IPs it is configured with.
    pub servers: Vec<std::net::IpAddr>,
    /// Its addresses.
    pub addresses: Vec<std::net::IpAddr>,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// Its heartbeat interval.
    pub interval_ms: u64,
    /// Its ports (interface names, sorted, `lo` left out, at most
    /// [`MAX_HEARTBEAT_PORTS`]), so other members' state inference knows
    /// them before any fault names one (issue 16). Absent (`None`) from an
    /// agent that predates the field and from a roster record that had no
    /// room for it: "not said", which leaves a receiver's idea of the ports
    /// as it was; `Some(vec![])` says "no ports". An older agent ignores
    /// the field (heartbeats do not deny unknown fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
}

/// Most ports a heartbeat lists: a switch's front panel with breakouts
/// fits, and a roster bucket of members still fits one message (a bucket
/// that would not sends its members without their ports).
pub const MAX_HEARTBEAT_PORTS: usize = 128;

impl Heartbeat {
    /// The port list a heartbeat carries for `names` (this switch's
    /// interfaces): sorted, without duplicates, `lo` and names that are
    /// no interface name left out, at most [`MAX_HEARTBEAT_PORTS`] (the
    /// first in name order).
    pub fn port_list<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut ports: Vec<String> = names
            .into_iter()
            .filter(|name| *name != "lo" && crate::validate::is_ifname(name))
            .map(str::to_string)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports.truncate(MAX_HEARTBEAT_PORTS);
        ports
    }

    /// The ports a received heartbeat lists, held to the same rules as
    /// [`Heartbeat::port_list`] whatever the sender did (a name that is
    /// no interface name is dropped, the list cut at
    /// [`MAX_HEARTBEAT_PORTS`]); `None` when it says nothing of its ports.
    pub fn listed_ports(&self) -> Option<Vec<String>> {
        self.ports
            .as_ref()
            .map(|ports| Self::port_list(ports.iter().map(String::as_str)))
    }
}

/// A server's own status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Server identity.
    pub server: String,
    /// Index in the configured server list (0 = primary).
    pub rank: usize,
    /// Announcing or not.
    pub active: bool,
}

/// One member in the server's topology.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// Its last heartbeat.
    pub heartbeat: Heartbeat,
    /// When it joined (server clock, ms since the epoch).
    pub joined_ms: u64,
    /// When the server last heard it (server clock).
    pub last_heartbeat_ms: u64,
}

/// The server's whole view (retained, so late joiners get it at once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// Announcing server.
    pub server: String,
    /// Increases with every change the server announces.
    pub epoch: u64,
    /// Members.
    pub members: Vec<MemberEntry>,
}

/// A join or departure announcement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    /// Announcing server.
    pub server: String,
    /// The member.
    pub member: String,
    /// Joined or departed.
    pub joined: bool,
    /// Why (for departures).
    pub reason: String,
    /// When (server clock).
    pub at_ms: u64,
}

/// A fabric-wide config change (SPEC 4.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChange {
    /// Who made it.
    pub origin: String,
    /// The origin's change number.
    pub seq: u64,
    /// Setting.
    pub key: String,
    /// New value.
    pub value: String,
    /// When, by the origin's hybrid logical clock (ms since the epoch,
    /// never at or below a change time the origin had made or heard);
    /// newer wins.
    pub at_ms: u64,
}

/// A member's answer to a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigAck {
    /// The answering member.
    pub member: String,
    /// The change's origin.
    pub origin: String,
    /// The change's number.
    pub seq: u64,
    /// `applied`, `superseded` (a newer value is in force) or `rejected: why`.
    pub outcome: String,
}

/// The fabric config as the active server holds it (retained).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConfigState {
    /// Setting -> the change in force.
    pub entries: BTreeMap<String, ConfigChange>,
}

/// A config center released a version (SPEC 6.2 push): devices that use
/// `key` ask their center at once instead of waiting for their next poll.
/// Only a hint; the content comes from the center over its own API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigAnnounce {
    /// The announcing switch (the center's agent).
    pub origin: String,
    /// `namespace/group/name`.
    pub key: String,
    /// The released version.
    pub version: u64,
    /// Its MD5 (hex).
    pub md5: String,
}

/// A fault (SPEC 4.5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Reporting member.
    pub member: String,
    /// The reporting agent's boot id: fault numbers restart with every
    /// boot, so (boot, seq) identifies a fault.
    pub boot: u64,
    /// The member's fault number in this boot (for de-duplication).
    pub seq: u64,
    /// Its object, e.g. a port name.
    pub port: String,
    /// `port-down` or `port-up`.
    pub kind: String,
    /// When (reporter clock, ms since the epoch).
    pub at_ms: u64,
}

/// A root-cause alarm of a member's state inference, raised or cleared
/// (issue 16), on the fault channel. Retained per object
/// (`<prefix>/DEV_FAULT_MSG/<member>/alarm/<object>`), so a late joiner
/// learns which alarms stand; a cleared one replaces its raised record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// The member whose inference raised it.
    pub member: String,
    /// Its agent's boot id: a record of an earlier boot still retained is
    /// corrected by the member when it comes back.
    pub boot: u64,
    /// The alarmed object.
    pub object: String,
    /// Its effective state names, comma-separated.
    pub state: String,
    /// Its fault level.
    pub level: u8,
    /// Its root causes.
    pub root_causes: Vec<String>,
    /// Objects suppressed under it (bounded by the sender).
    pub suppressed: Vec<String>,
    /// When raised (member clock, ms since the epoch).
    pub raised_ms: u64,
    /// When cleared (0 while raised).
    pub cleared_ms: u64,
}

/// Buckets the roster is retained in (see [`RosterRecord`]).
pub const ROSTER_BUCKETS: u16 = 64;

/// The roster bucket of `member`: FNV-1a of its name modulo
/// [`ROSTER_BUCKETS`]. Part of the wire format (every version must agree
/// where a member's entry lives), so never change it.
pub fn roster_bucket(member: &str) -> u16 {
    let hash = member.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    (hash % u32::from(ROSTER_BUCKETS)) as u16
}

/// The members of one roster bucket as the active server holds them,
/// retained on the bucket's topic (`<prefix>/DEV_INFO_MSG/roster/<bucket>`).
/// Why buckets, not one record per member: brokers cut the retained
/// messages they hand a new subscription to their queue limits (rumqttd
/// 0.20 to its 100 free in-flight slots, mosquitto to about
/// `max_queued_messages` + `max_inflight_messages`), so a per-member record
/// was lost beyond ~100 members; [`ROSTER_BUCKETS`] messages always fit,
/// and a join still rewrites one small message. An emptied bucket's
/// message is deleted (an empty retained message on its topic).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RosterRecord {
    /// Announcing server.
    pub server: String,
    /// The roster's epoch when this record was written.
    pub epoch: u64,
    /// The bucket ([`roster_bucket`] of each member's name).
    pub bucket: u16,
    /// The bucket's members.
    pub entries: Vec<MemberEntry>,
}

/// One setting in force as the active server holds it, retained on a topic
/// of its own (`<prefix>/DEV_CONF_MSG/setting/<key>`): the config snapshot
/// split per key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingRecord {
    /// Announcing server.
    pub server: String,
    /// The change in force.
    pub change: ConfigChange,
}

/// Every body, tagged by kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Member heartbeat.
    Heartbeat(Heartbeat),
    /// A member leaving (graceful or last will).
    Departed {
        /// The member.
        member: String,
        /// Why.
        reason: String,
    },
    /// Server status.
    Server(ServerStatus),
    /// Topology snapshot.
    Topology(Topology),
    /// Join/departure announcement.
    Membership(Membership),
    /// Config change.
    Change(ConfigChange),
    /// Config acknowledgement.
    Ack(ConfigAck),
    /// Config snapshot.
    ConfigState(ConfigState),
    /// Fault.
    Fault(Fault),
    /// A config center's release (push).
    ConfigAnnounce(ConfigAnnounce),
    /// One member of the server's roster (retained per member).
    Roster(RosterRecord),
    /// One setting in force (retained per key).
    Setting(SettingRecord),
    /// A root-cause alarm raised or cleared (retained per object).
    Alarm(Alarm),
}

impl Message {
    /// The channel this kind travels on.
    pub fn channel(&self) -> Channel {
        match self {
            Message::Heartbeat(_)
            | Message::Departed { .. }
            | Message::Server(_)
            | Message::Topology(_)
            | Message::Membership(_)
            | Message::Roster(_) => Channel::Info,
            Message::Change(_)
            | Message::Ack(_)
            | Message::ConfigState(_)
            | Message::Setting(_)
            | Message::ConfigAnnounce(_) => Channel::Conf,
            Message::Fault(_) | Message::Alarm(_) => Channel::Fault,
        }
    }

    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Heartbeat(_) => "heartbeat",
            Message::Departed { .. } => "departed",
            Message::Server(_) => "server",
            Message::Topology(_) => "topology",
            Message::Membership(_) => "membership",
            Message::Change(_) => "change",
            Message::Ack(_) => "ack",
            Message::ConfigState(_) => "config_state",
            Message::Fault(_) => "fault",
            Message::ConfigAnnounce(_) => "config_announce",
            Message::Roster(_) => "roster",
            Message::Setting(_) => "setting",
            Message::Alarm(_) => "alarm",
        }
    }

    /// Kinds only a key marked `server` in the roster may send. One match,
    /// so a new server-only kind is one line here.
    pub fn server_only(&self) -> bool {
        match self {
            Message::Server(_)
            | Message::Topology(_)
            | Message::Membership(_)
            | Message::ConfigState(_)
            | Message::Roster(_)
            | Message::Setting(_) => true,
            Message::Heartbeat(_)
            | Message::Departed { .. }
            | Message::Change(_)
            | Message::Ack(_)
            | Message::Fault(_)
            | Message::Alarm(_) => false,
            // Any roster member may run a config center; an announcement
            // only makes devices ask their center, which authenticates.
            Message::ConfigAnnounce(_) => false,
        }
    }

    /// The member the body speaks for, which must be the header's sender
    /// (server-authored kinds name the server).
    pub fn author(&self) -> &str {
        match self {
            Message::Heartbeat(h) => &h.member,
            Message::Departed { member, .. } => member,
            Message::Server(s) => &s.server,
            Message::Topology(t) => &t.server,
            Message::Membership(m) => &m.server,
            Message::Change(c) => &c.origin,
            Message::Ack(a) => &a.member,
            Message::ConfigState(_) => "",
            Message::Fault(f) => &f.member,
            Message::ConfigAnnounce(a) => &a.origin,
            Message::Roster(r) => &r.server,
            Message::Setting(s) => &s.server,
            Message::Alarm(a) => &a.member,
        }
    }
}

/// Topic names under a prefix.
#[derive(Clone, Debug)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The subscriptions member `me` makes. Only servers hear every
    /// member's heartbeats and departures (`member/#`); other members learn
    /// the members from the servers' signed roster records and join and
    /// departure announcements, so a heartbeat costs the broker two
    /// deliveries, not one per member (a million a second at 1,000
    /// members). On the config channel an ack goes only to the change's
    /// origin (the one member that acts on it), so a change costs one
    /// delivery per member instead of one per pair of members.
    pub fn subscriptions(&self, me: &str, server: bool) -> Vec<String> {
        let p = &self.prefix;
        let info = Channel::Info.topic_name();
        let conf = Channel::Conf.topic_name();
        let mut filters = Vec::new();
        // Its own filter, not `{info}/#`: the broker sizes the log it keeps
        // of this, the busiest filter, apart (`broker::router_config`).
        if server {
            filters.push(self.member_filter());
        }
        filters.extend([
            format!("{p}/{info}/server/#"),
            format!("{p}/{info}/roster/#"),
            format!("{p}/{info}/topology"),
            format!("{p}/{info}/event"),
            format!("{p}/{}/#", Channel::Fault.topic_name()),
            format!("{p}/{conf}/change/#"),
            format!("{p}/{conf}/state"),
            format!("{p}/{conf}/setting/#"),
            format!("{p}/{conf}/announce/#"),
            self.ack_filter(me),
        ]);
        filters
    }

    /// Every member's heartbeats and departures (servers only).
    pub fn member_filter(&self) -> String {
        format!("{}/{}/member/#", self.prefix, Channel::Info.topic_name())
    }

    /// Every origin's acknowledgements (what the embedded broker sizes
    /// each origin's ack log by; nobody subscribes to it).
    pub fn every_ack_filter(&self) -> String {
        format!("{}/{}/ack/#", self.prefix, Channel::Conf.topic_name())
    }

    /// The acknowledgements of `origin`'s changes.
    pub fn ack_filter(&self, origin: &str) -> String {
        format!(
            "{}/{}/ack/{origin}/#",
            self.prefix,
            Channel::Conf.topic_name()
        )
    }

    /// Where a message goes; `retained` for the snapshot kinds.
    pub fn topic_for(&self, message: &Message) -> (String, bool) {
        let channel = message.channel().topic_name();
        let p = &self.prefix;
        match message {
            Message::Heartbeat(h) => (format!("{p}/{channel}/member/{}", h.member), false),
            Message::Departed { member, .. } => (format!("{p}/{channel}/member/{member}"), false),
            Message::Server(s) => (format!("{p}/{channel}/server/{}", s.server), false),
            Message::Topology(_) => (format!("{p}/{channel}/topology"), true),
            Message::Membership(_) => (format!("{p}/{channel}/event"), false),
            Message::Change(c) => (format!("{p}/{channel}/change/{}", c.origin), false),
            Message::Ack(a) => (
                format!("{p}/{channel}/ack/{}/{}", a.origin, a.member),
                false,
            ),
            Message::ConfigState(_) => (format!("{p}/{channel}/state"), true),
            // Retained per port: a late joiner or a restarted member learns
            // at once which remote ports are down.
            Message::Fault(f) => (
                format!(
                    "{p}/{channel}/{}/{}",
                    f.member,
                    f.port.replace(['#', '+'], "_")
                ),
                true,
            ),
            // Not retained: a device that was away registers and polls.
            Message::ConfigAnnounce(a) => (format!("{p}/{channel}/announce/{}", a.origin), false),
            Message::Roster(r) => (self.roster_topic(r.bucket), true),
            Message::Setting(s) => (self.setting_topic(&s.change.key), true),
            // Retained per object, beside the member's port faults (port
            // names hold no `/`, so `alarm/...` is no port's topic).
            Message::Alarm(a) => (
                format!(
                    "{p}/{channel}/{}/alarm/{}",
                    a.member,
                    a.object.replace(['#', '+'], "_")
                ),
                true,
            ),
        }
    }

    /// Where roster bucket `bucket` is retained (an empty retained
    /// message there deletes it).
    pub fn roster_topic(&self, bucket: u16) -> String {
        format!(
            "{}/{}/roster/{bucket}",
            self.prefix,
            Channel::Info.topic_name()
        )
    }

    /// Every roster bucket.
    pub fn roster_filter(&self) -> String {
        format!("{}/{}/roster/+", self.prefix, Channel::Info.topic_name())
    }

    /// Where setting `key`'s record is retained.
    pub fn setting_topic(&self, key: &str) -> String {
        format!(
            "{}/{}/setting/{key}",
            self.prefix,
            Channel::Conf.topic_name()
        )
    }

    /// The channel a topic belongs to, when it is under the prefix.
    pub fn channel_of(&self, topic: &str) -> Option<Channel> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let name = rest.split('/').next()?;
        [Channel::Info, Channel::Conf, Channel::Fault]
            .into_iter()
            .find(|c| c.topic_name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Message {
        Message::Change(ConfigChange {
            origin: "sw1".into(),
            seq: 7,
            key: "site.ntp".into(),
            value: "10.0.0.9".into(),
            at_ms: 1,
        })
    }

    #[test]
    fn header_round_trips_clear_and_sealed() {
        for nonce in [None, Some([7u8; NONCE_LEN])] {
            let flags = if nonce.is_some() { FLAG_SEALED } else { 0 };
            let mut bytes = encode_header(Channel::Conf, flags, 3, "sw-1", 99, nonce.as_ref());
            bytes.extend_from_slice(b"{}");
            let env = decode(&bytes).unwrap();
            assert_eq!(env.channel, Channel::Conf);
            assert_eq!(env.sender, "sw-1");
            assert_eq!(env.key_id, 3);
            assert_eq!(env.counter, 99);
            assert_eq!(env.nonce, nonce);
            assert_eq!(env.body, b"{}");
            assert_eq!(env.sealed(), nonce.is_some());
        }
    }

    #[test]
    fn bad_headers_are_named() {
        assert_eq!(
            decode(b"MF"),
            Err(WireError::Malformed("shorter than the fixed header"))
        );
        assert_eq!(
            decode(b"XX\x02\x01\x00\x00\x01a"),
            Err(WireError::Malformed("bad magic"))
        );
        assert_eq!(
            decode(b"MF\x09\x01\x00\x00\x01a"),
            Err(WireError::UnknownVersion(9))
        );
        assert_eq!(
            decode(b"MF\x02\x09\x00\x00\x01a"),
            Err(WireError::Malformed("unknown channel"))
        );
        assert_eq!(
            decode(b"MF\x02\x01\x80\x00\x01a"),
            Err(WireError::Malformed("unknown flags"))
        );
        assert_eq!(
            decode(b"MF\x02\x01\x00\x00\x05ab"),
            Err(WireError::Malformed("sender truncated or empty"))
        );
        assert_eq!(
            decode(b"MF\x02\x01\x00\x00\x01a123"),
            Err(WireError::Malformed("counter truncated"))
        );
        assert_eq!(
            decode(b"MF\x02\x01\x01\x00\x01a12345678123"),
            Err(WireError::Malformed("nonce truncated"))
        );
        let big = vec![0u8; MAX_MESSAGE + 1];
        assert_eq!(decode(&big), Err(WireError::Oversized(MAX_MESSAGE + 1)));
    }

    #[test]
    fn bodies_round_trip_and_must_match_their_channel() {
        let m = change();
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(parse_body(Channel::Conf, &json).unwrap(), m);
        assert!(matches!(
            parse_body(Channel::Info, &json),
            Err(WireError::WrongChannel { .. })
        ));
        assert!(matches!(
            parse_body(Channel::Conf, b"{\"type\":\"nope\"}"),
            Err(WireError::Body(_))
        ));
    }

    #[test]
    fn a_heartbeats_port_list_round_trips_and_both_sides_of_a_version_change_read_each_other() {
        let hb = |ports: Option<Vec<String>>| Heartbeat {
            member: "sw2".into(),
            role: Role::Client,
            model: "m".into(),
            version: "1".into(),
            servers: vec![],
            addresses: vec![],
            uptime_s: 1,
            interval_ms: 300,
            ports,
        };
        let listed = Message::Heartbeat(hb(Some(vec!["p1".into(), "swp2".into()])));
        let json = serde_json::to_vec(&listed).unwrap();
        assert_eq!(parse_body(Channel::Info, &json).unwrap(), listed);
        assert!(String::from_utf8_lossy(&json).contains(r#""ports":["p1","swp2"]"#));
        // "No ports" is said, not left out.
        let none = Message::Heartbeat(hb(Some(vec![])));
        let json = serde_json::to_vec(&none).unwrap();
        assert!(String::from_utf8_lossy(&json).contains(r#""ports":[]"#));
        assert_eq!(parse_body(Channel::Info, &json).unwrap(), none);
        // From an agent that predates the list: it is "not said".
        let old = br#"{"type":"heartbeat","member":"sw2","role":"client","model":"m","version":"1","servers":[],"addresses":[],"uptime_s":1,"interval_ms":300}"#;
        assert_eq!(
            parse_body(Channel::Info, old).unwrap(),
            Message::Heartbeat(hb(None))
        );
        // Not said, it is not written: an older agent reads the same bytes
        // as before.
        let json = serde_json::to_vec(&Message::Heartbeat(hb(None))).unwrap();
        assert_eq!(json, old.to_vec());
        // An older agent reading a newer heartbeat: heartbeats ignore
        // fields they do not know, which is what lets the list through.
        let mut newer: serde_json::Value = serde_json::to_value(&listed).unwrap();
        newer["from_the_future"] = serde_json::json!([1, 2]);
        let newer = serde_json::to_vec(&newer).unwrap();
        assert_eq!(parse_body(Channel::Info, &newer).unwrap(), listed);
    }

    #[test]
    fn a_port_list_is_sorted_bounded_and_holds_interface_names_only() {
        let many: Vec<String> = (0..MAX_HEARTBEAT_PORTS + 10)
            .rev()
            .map(|i| format!("p{i:03}"))
            .collect();
        let list = Heartbeat::port_list(many.iter().map(String::as_str).chain([
            "lo",
            "",
            "a/b",
            "x y",
            "waytoolonganame0",
            "p001",
        ]));
        assert_eq!(list.len(), MAX_HEARTBEAT_PORTS);
        assert_eq!(list[0], "p000");
        assert_eq!(list[1], "p001", "duplicates once");
        assert!(list.windows(2).all(|w| w[0] < w[1]));
        assert!(list.iter().all(|p| p.starts_with('p')), "{list:?}");
        // A received list is held to the same rules, whatever was sent.
        let hb = Heartbeat {
            member: "sw2".into(),
            role: Role::Client,
            model: "m".into(),
            version: "1".into(),
            servers: vec![],
            addresses: vec![],
            uptime_s: 1,
            interval_ms: 300,
            ports: Some(many),
        };
        assert_eq!(hb.listed_ports(), Some(list));
        assert_eq!(Heartbeat { ports: None, ..hb }.listed_ports(), None);
    }

    #[test]
    fn a_config_announce_round_trips_on_the_conf_channel() {
        let m = Message::ConfigAnnounce(ConfigAnnounce {
            origin: "center-1".into(),
            key: "prod/web/nginx".into(),
            version: 12,
            md5: "0123456789abcdef0123456789abcdef".into(),
        });
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(parse_body(Channel::Conf, &json).unwrap(), m);
        assert_eq!(m.author(), "center-1");
        let (topic, retained) = Topics::new("fab").topic_for(&m);
        assert_eq!(topic, "fab/DEV_CONF_MSG/announce/center-1");
        assert!(!retained);
    }

    #[test]
    fn topics_route_by_channel() {
        let t = Topics::new("fab");
        let (topic, retained) = t.topic_for(&change());
        assert_eq!(topic, "fab/DEV_CONF_MSG/change/sw1");
        assert!(!retained);
        assert_eq!(t.channel_of(&topic), Some(Channel::Conf));
        assert_eq!(t.channel_of("other/DEV_CONF_MSG/x"), None);
        let subscribed = t.subscriptions("sw1", false);
        assert!(subscribed.contains(&"fab/DEV_FAULT_MSG/#".to_string()));
        assert!(subscribed.contains(&"fab/DEV_CONF_MSG/ack/sw1/#".to_string()));
        // Every kind but others' acks is under a subscription of sw2's.
        let ack_for = |origin: &str| {
            Message::Ack(ConfigAck {
                member: "sw3".into(),
                origin: origin.into(),
                seq: 1,
                outcome: "applied".into(),
            })
        };
        assert_eq!(
            t.topic_for(&ack_for("sw1")).0,
            "fab/DEV_CONF_MSG/ack/sw1/sw3"
        );
        let covered = |me: &str, server: bool, topic: &str| {
            t.subscriptions(me, server)
                .iter()
                .any(|f| match f.strip_suffix('#') {
                    Some(prefix) => topic.starts_with(prefix),
                    None => topic == f,
                })
        };
        assert!(!covered("sw2", false, &t.topic_for(&ack_for("sw1")).0));
        assert!(covered("sw2", false, &t.topic_for(&ack_for("sw2")).0));
        assert!(!covered("sw2", true, &t.topic_for(&ack_for("sw1")).0));
        // Servers hear heartbeats and departures; other members hear
        // everything else but others' acks.
        for m in super::every_kind::every_kind() {
            let (topic, _) = t.topic_for(&m);
            let for_servers_only = matches!(m, Message::Heartbeat(_) | Message::Departed { .. });
            let others_ack = matches!(&m, Message::Ack(a) if a.origin != "x");
            assert_eq!(covered("x", true, &topic), !others_ack, "{topic}");
            assert_eq!(
                covered("x", false, &topic),
                !others_ack && !for_servers_only,
                "{topic}"
            );
        }
        assert_eq!(t.roster_filter(), "fab/DEV_INFO_MSG/roster/+");
        assert_eq!(t.roster_topic(7), "fab/DEV_INFO_MSG/roster/7");
        assert_eq!(t.channel_of(&t.roster_topic(7)), Some(Channel::Info));
        assert_eq!(
            t.setting_topic("site.ntp"),
            "fab/DEV_CONF_MSG/setting/site.ntp"
        );
    }

    #[test]
    fn an_alarm_is_retained_per_object_beside_its_members_port_faults() {
        let t = Topics::new("fab");
        let alarm = super::every_kind::every_kind()
            .into_iter()
            .find(|m| matches!(m, Message::Alarm(_)))
            .unwrap();
        let (topic, retained) = t.topic_for(&alarm);
        assert_eq!(topic, "fab/DEV_FAULT_MSG/a/alarm/port:sw2/p1");
        assert!(retained);
        assert_eq!(t.channel_of(&topic), Some(Channel::Fault));
        assert_eq!(alarm.author(), "a");
        assert!(!alarm.server_only());
        let json = serde_json::to_vec(&alarm).unwrap();
        assert!(matches!(
            parse_body(Channel::Info, &json),
            Err(WireError::WrongChannel { kind: "alarm", .. })
        ));
        // A wildcard in an object name never reaches a topic.
        if let Message::Alarm(mut a) = alarm {
            a.object = "svc:#+".into();
            assert_eq!(
                t.topic_for(&Message::Alarm(a)).0,
                "fab/DEV_FAULT_MSG/a/alarm/svc:__"
            );
        }
    }

    proptest::proptest! {
        /// Every kind's body, cut short or with bytes changed, is refused
        /// or parsed, never a panic (random bytes alone rarely reach the
        /// JSON of a kind).
        #[test]
        fn a_damaged_body_of_any_kind_never_panics(
            kind in 0usize..64,
            cut in 0usize..2048,
            flips in proptest::collection::vec((0usize..2048, proptest::num::u8::ANY), 0..6),
        ) {
            let all = super::every_kind::every_kind();
            let m = &all[kind % all.len()];
            let mut json = serde_json::to_vec(m).unwrap();
            for (at, byte) in flips {
                if !json.is_empty() {
                    let at = at % json.len();
                    json[at] = byte;
                }
            }
            json.truncate(cut.min(json.len()));
            let _ = parse_body(m.channel(), &json);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if let Ok(env) = decode(&bytes) {
                let _ = parse_body(env.channel, env.body);
            }
        }
    }
}

#[cfg(test)]
mod every_kind {
    use super::*;

    /// One message of each kind.
    pub(super) fn every_kind() -> Vec<Message> {
        let hb = Heartbeat {
            member: "a".into(),
            role: Role::Both,
            model: "m".into(),
            version: "1".into(),
            servers: vec!["10.0.0.1".parse().unwrap()],
            addresses: vec![],
            uptime_s: 3,
            interval_ms: 1000,
            ports: Some(vec!["p1".into(), "swp2".into()]),
        };
        let change = ConfigChange {
            origin: "a".into(),
            seq: 1,
            key: "k".into(),
            value: "v".into(),
            at_ms: 2,
        };
        let all = vec![
            Message::Heartbeat(hb.clone()),
            Message::Departed {
                member: "a".into(),
                reason: "r".into(),
            },
            Message::Server(ServerStatus {
                server: "a".into(),
                rank: 0,
                active: true,
            }),
            Message::Topology(Topology {
                server: "a".into(),
                epoch: 4,
                members: vec![MemberEntry {
                    heartbeat: hb.clone(),
                    joined_ms: 1,
                    last_heartbeat_ms: 2,
                }],
            }),
            Message::Membership(Membership {
                server: "a".into(),
                member: "b".into(),
                joined: true,
                reason: "".into(),
                at_ms: 1,
            }),
            Message::Change(change.clone()),
            Message::Ack(ConfigAck {
                member: "a".into(),
                origin: "b".into(),
                seq: 1,
                outcome: "applied".into(),
            }),
            Message::ConfigState(ConfigState {
                entries: [("k".to_string(), change.clone())].into(),
            }),
            Message::Roster(RosterRecord {
                server: "s".into(),
                epoch: 9,
                bucket: roster_bucket(&hb.member),
                entries: vec![MemberEntry {
                    heartbeat: hb.clone(),
                    joined_ms: 1,
                    last_heartbeat_ms: 2,
                }],
            }),
            Message::Setting(SettingRecord {
                server: "s".into(),
                change: change.clone(),
            }),
            Message::Fault(Fault {
                member: "a".into(),
                boot: 9,
                seq: 1,
                port: "p".into(),
                kind: "port-down".into(),
                at_ms: 1,
            }),
            Message::Alarm(Alarm {
                member: "a".into(),
                boot: 9,
                object: "port:sw2/p1".into(),
                state: "down".into(),
                level: 3,
                root_causes: vec!["port:sw2/p1".into()],
                suppressed: vec!["svc:web".into()],
                raised_ms: 5,
                cleared_ms: 0,
            }),
        ];
        all
    }

    /// The bucket function is part of the wire format: FNV-1a, known answers.
    #[test]
    fn roster_buckets_are_fnv1a_of_the_name_and_spread_members_evenly() {
        assert_eq!(
            ["sw0", "sw1", "sim000", "a"].map(roster_bucket),
            [13, 58, 44, 44]
        );
        let mut sizes = [0usize; ROSTER_BUCKETS as usize];
        for n in 0..1000 {
            sizes[roster_bucket(&format!("sim{n:03}")) as usize] += 1;
        }
        assert!(sizes.iter().all(|&s| (5..=40).contains(&s)), "{sizes:?}");
    }

    /// Each kind survives encode/decode (a body field named like the tag would not).
    #[test]
    fn every_kind_round_trips() {
        for m in every_kind() {
            let json = serde_json::to_vec(&m).unwrap();
            assert_eq!(parse_body(m.channel(), &json).unwrap(), m, "{}", m.kind());
        }
    }
}
