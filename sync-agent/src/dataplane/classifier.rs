//! The loaded XDP object, seen from userspace: the classifier and pass-only
//! programs, their attachments to the member ports, and the maps the agent
//! writes (MAC tables, policy word) and reads (counters). Only the dataplane
//! task holds one; benchmarks and verdict tests load their own.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, SchedClassifierLinkId},
        xdp::XdpLinkId,
    },
};
use serde::{Deserialize, Serialize};
use sync_common::{
    capture::{Class, MAC_FILTER_WORDS, MacKey, mac_filter_bit},
    counters,
};

use super::{
    config::{EbpfLogLevel, XdpModeConfig},
    ring::CaptureRing,
};
use crate::mac::MacAddr;

/// The compiled XDP object, embedded at build time by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sync-ebpf"));

/// Name of the classifier program (as `bpftool prog show` lists it).
pub const CLASSIFIER_PROGRAM: &str = "mlag_classify";
/// Name of the pass-only program used for injection and as a baseline.
pub const PASS_PROGRAM: &str = "mlag_pass";
/// Name of the benchmark's floor for the classifier: a pass that counts the
/// frame as the classifier counts every frame. Loaded only on request
/// ([`Classifier::load_count_only`]), never attached.
pub const COUNT_ONLY_PROGRAM: &str = "mlag_count_only";
/// Name of the program frames are injected through (marks each injection so
/// a generic-mode classifier does not capture it again).
pub const INJECT_PROGRAM: &str = "mlag_inject";
/// Name of the tc program on the loopback's egress that redirects marked
/// frames to a port's ingress (injection where live frames are refused).
pub const INJECT_REDIRECT_PROGRAM: &str = "mlag_inject_tc";
/// Per-CPU map of the injection marks.
pub const INJECTING_MAP: &str = "mlag_injecting";
/// Map names (as `bpftool map show` lists them; 15 characters at most).
/// The one MAC table: destination MAC -> class (peer, own, shared).
pub const MAC_CLASS_MAP: &str = "mlag_mac_class";
/// Its prefilter: one bit per folded MAC (`sync_common::capture`).
pub const MAC_FILTER_MAP: &str = "mlag_mac_filter";
/// Policy word map.
pub const POLICY_MAP: &str = "mlag_policy";
/// Per-CPU counters map (one `sync_common::counters::Block` per CPU).
pub const COUNTERS_MAP: &str = "mlag_counters";
/// Capture ring buffer.
pub const CAPTURES_MAP: &str = "mlag_captures";
/// Where the ring reader announces its sleeps (see `dataplane::ring`).
pub const RING_READER_MAP: &str = "mlag_rb_reader";

/// Errors of the dataplane, each naming the object involved.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The agent was built without its kernel object.
    #[error(
        "this sync-agent was built without its XDP object (AYA_BUILD_SKIP was set); rebuild with `cargo xtask build`"
    )]
    NoObject,
    /// Loading the object failed.
    #[error("cannot load the XDP object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is missing from the object or failed the verifier.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// The error.
        source: Box<aya::programs::ProgramError>,
    },
    /// A map is missing from the object.
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// The error.
        source: Box<aya::maps::MapError>,
    },
    /// Attaching to an interface failed in every allowed mode.
    #[error(
        "cannot attach {program} to interface {interface} (ifindex {ifindex}) in {mode} mode: {source}"
    )]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface name.
        interface: String,
        /// Interface index.
        ifindex: u32,
        /// The last mode tried.
        mode: &'static str,
        /// The error.
        source: Box<aya::programs::ProgramError>,
    },
    /// aya-log could not be set up.
    #[error("kernel log channel: {0}")]
    Log(#[source] aya_log::Error),
}

/// How a program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    /// Native driver mode.
    Driver,
    /// Generic (skb) mode.
    Generic,
}

impl AttachedMode {
    fn name(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Generic => "generic",
        }
    }
}

/// A member port with the classifier attached.
#[derive(Debug)]
pub struct AttachedPort {
    /// Interface index.
    pub ifindex: u32,
    /// Mode it is attached in.
    pub mode: AttachedMode,
    link: XdpLinkId,
}

/// Kernel counters summed over CPUs, in the order of `sync_common::counters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters(pub [u64; counters::COUNT as usize]);

impl KernelCounters {
    /// The value of one slot.
    pub fn get(&self, slot: u32) -> u64 {
        self.0[slot as usize]
    }
}

/// The MAC tables the classifier sorts by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MacTables {
    /// The peer switch's MACs.
    pub peer: BTreeSet<MacAddr>,
    /// This switch's MACs.
    pub own: BTreeSet<MacAddr>,
    /// Shared MACs.
    pub shared: BTreeSet<MacAddr>,
}

impl MacTables {
    /// Each MAC's class, by the classification rule (shared beats peer
    /// beats own): what the kernel's one table holds.
    pub fn classes(&self) -> BTreeMap<MacAddr, Class> {
        self.peer
            .iter()
            .chain(&self.own)
            .chain(&self.shared)
            .map(|mac| {
                let class = sync_common::capture::classify(
                    self.shared.contains(mac),
                    self.peer.contains(mac),
                    self.own.contains(mac),
                );
                (*mac, class)
            })
            .collect()
    }
}

/// What [`Classifier::load`] gives: the classifier, the capture ring
/// buffer (with the reader's slot), and the kernel log reader (None when
/// the kernel log is off).
pub type Loaded = (
    Classifier,
    CaptureRing,
    Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
);

/// The loaded XDP object and what it is attached to.
pub struct Classifier {
    ebpf: Ebpf,
    mac_class: HashMap<MapData, MacKey, u8>,
    mac_filter: Array<MapData, u64>,
    /// The prefilter words as last written.
    filter: Vec<u64>,
    policy: Array<MapData, u32>,
    counters: PerCpuArray<MapData, counters::Block>,
    tables: MacTables,
    ports: BTreeMap<String, AttachedPort>,
    /// `mlag_inject_tc` on the loopback's egress, when injection uses it.
    inject_redirect: Option<SchedClassifierLinkId>,
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DataplaneError::Map {
        name,
        source: Box::new(source),
    })
}

impl Classifier {
    /// Loads the object and both programs (verifier included) without
    /// attaching anything. Returns the capture ring buffer and the kernel log
    /// reader (None when the kernel log level is off) alongside.
    pub fn load(log_level: EbpfLogLevel) -> Result<Loaded, DataplaneError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let level = log_level.aya_level();
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let logger = if log_level == EbpfLogLevel::Off {
            None
        } else {
            Some(aya_log::EbpfLogger::init(&mut ebpf).map_err(DataplaneError::Log)?)
        };
        for name in [CLASSIFIER_PROGRAM, PASS_PROGRAM, INJECT_PROGRAM] {
            let program = xdp_program(&mut ebpf, name)?;
            program.load().map_err(|source| DataplaneError::Program {
                name,
                source: Box::new(source),
            })?;
        }
        inject_redirect_program(&mut ebpf)?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: INJECT_REDIRECT_PROGRAM,
                source: Box::new(source),
            })?;
        let ring = CaptureRing {
            // The map's data only: aya's `RingBuf` would map the ring a
            // second time (the data area twice, all of it resident),
            // unused beside the reader's own mapping.
            ring: match ebpf.take_map(CAPTURES_MAP) {
                Some(aya::maps::Map::RingBuf(data)) => data,
                _ => return Err(DataplaneError::MissingMap(CAPTURES_MAP)),
            },
            reader_slot: match ebpf.take_map(RING_READER_MAP) {
                Some(aya::maps::Map::Array(data)) => data,
                _ => return Err(DataplaneError::MissingMap(RING_READER_MAP)),
            },
        };
        let dataplane = Self {
            mac_class: take_map(&mut ebpf, MAC_CLASS_MAP)?,
            mac_filter: take_map(&mut ebpf, MAC_FILTER_MAP)?,
            filter: vec![0; MAC_FILTER_WORDS as usize],
            policy: take_map(&mut ebpf, POLICY_MAP)?,
            counters: take_map(&mut ebpf, COUNTERS_MAP)?,
            ebpf,
            tables: MacTables::default(),
            ports: BTreeMap::new(),
            inject_redirect: None,
        };
        Ok((dataplane, ring, logger))
    }

    /// Kernel id of a program (for `bpftool prog show id N`).
    pub fn program_id(&mut self, name: &'static str) -> Option<u32> {
        xdp_program(&mut self.ebpf, name)
            .ok()?
            .info()
            .ok()
            .map(|info| info.id())
    }

    /// Kernel id of `mlag_inject_tc` while it is attached.
    pub fn inject_redirect_program_id(&mut self) -> Option<u32> {
        self.inject_redirect.as_ref()?;
        let program = inject_redirect_program(&mut self.ebpf).ok()?;
        program.info().ok().map(|info| info.id())
    }

    /// Loads the benchmark's floor program ([`COUNT_ONLY_PROGRAM`]) if it is
    /// not loaded yet; its fd then comes from [`Self::program_fd`]. The
    /// agent never loads it.
    pub fn load_count_only(&mut self) -> Result<(), DataplaneError> {
        let program = xdp_program(&mut self.ebpf, COUNT_ONLY_PROGRAM)?;
        if program.fd().is_err() {
            program.load().map_err(|source| DataplaneError::Program {
                name: COUNT_ONLY_PROGRAM,
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// A borrowed fd of a loaded program, for `BPF_PROG_RUN`.
    pub fn program_fd(&mut self, name: &'static str) -> Result<std::os::fd::RawFd, DataplaneError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let program = xdp_program(&mut self.ebpf, name)?;
        let fd = program.fd().map_err(|source| DataplaneError::Program {
            name,
            source: Box::new(source),
        })?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// An owned duplicate of a program's fd, for a task that runs it on its
    /// own (peer sync injects frames with the pass-only program).
    pub fn program_owned_fd(
        &mut self,
        name: &'static str,
    ) -> Result<std::os::fd::OwnedFd, DataplaneError> {
        use std::os::fd::AsFd as _;
        let program = xdp_program(&mut self.ebpf, name)?;
        let fd = program.fd().map_err(|source| DataplaneError::Program {
            name,
            source: Box::new(source),
        })?;
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(|e| DataplaneError::Program {
                name,
                source: Box::new(aya::programs::ProgramError::SyscallError(
                    aya::sys::SyscallError {
                        call: "dup",
                        io_error: e,
                    },
                )),
            })
    }

    /// Attaches `mlag_inject_tc` to the loopback's tc egress (a TCX link on
    /// kernels >= 6.6, else a filter on a clsact qdisc, added if missing), for injection by tc redirect. The link
    /// goes with the agent: detached on exit, and a TCX link dies with its
    /// last fd even on SIGKILL.
    pub fn attach_inject_redirect(&mut self) -> Result<(), DataplaneError> {
        if self.inject_redirect.is_some() {
            return Ok(());
        }
        const LOOPBACK: &str = "lo";
        let attach_error = |source| DataplaneError::Attach {
            program: INJECT_REDIRECT_PROGRAM,
            interface: LOOPBACK.into(),
            ifindex: 1,
            mode: "tc egress",
            source: Box::new(source),
        };
        let program = inject_redirect_program(&mut self.ebpf)?;
        let link = match program.attach(LOOPBACK, TcAttachType::Egress) {
            Ok(link) => link,
            Err(_) => {
                // Before TCX (kernel < 6.6) a clsact qdisc must exist first;
                // one already there is fine.
                let _ = tc::qdisc_add_clsact(LOOPBACK);
                program
                    .attach(LOOPBACK, TcAttachType::Egress)
                    .map_err(attach_error)?
            }
        };
        self.inject_redirect = Some(link);
        Ok(())
    }

    /// Attaches the classifier to `interface`. `Auto` tries driver mode and
    /// falls back to generic mode, saying so.
    pub fn attach(
        &mut self,
        interface: &str,
        ifindex: u32,
        mode: XdpModeConfig,
    ) -> Result<AttachedMode, DataplaneError> {
        self.detach(interface);
        let program = xdp_program(&mut self.ebpf, CLASSIFIER_PROGRAM)?;
        let attempt = |program: &mut Xdp, mode: AttachedMode| {
            let flags = match mode {
                AttachedMode::Driver => XdpMode::Driver,
                AttachedMode::Generic => XdpMode::Skb,
            };
            program
                .attach_to_if_index(ifindex, flags)
                .map_err(|source| DataplaneError::Attach {
                    program: CLASSIFIER_PROGRAM,
                    interface: interface.to_string(),
                    ifindex,
                    mode: mode.name(),
                    source: Box::new(source),
                })
        };
        let (link, attached) = match mode {
            XdpModeConfig::Driver => (
                attempt(program, AttachedMode::Driver)?,
                AttachedMode::Driver,
            ),
            XdpModeConfig::Generic => (
                attempt(program, AttachedMode::Generic)?,
                AttachedMode::Generic,
            ),
            XdpModeConfig::Auto => match attempt(program, AttachedMode::Driver) {
                Ok(link) => (link, AttachedMode::Driver),
                Err(err) => {
                    tracing::warn!(interface, error = %err, "driver-mode XDP unavailable, falling back to generic mode");
                    (
                        attempt(program, AttachedMode::Generic)?,
                        AttachedMode::Generic,
                    )
                }
            },
        };
        self.ports.insert(
            interface.to_string(),
            AttachedPort {
                ifindex,
                mode: attached,
                link,
            },
        );
        Ok(attached)
    }

    /// Attaches the pass-only program `mlag_pass` to `ifindex` (in the
    /// calling thread's namespace) in `mode`: the floor `mlag-bench`
    /// measures the classifier's cost on a real port against. It stays
    /// attached until this classifier is dropped.
    pub fn attach_pass_only(
        &mut self,
        interface: &str,
        ifindex: u32,
        mode: AttachedMode,
    ) -> Result<(), DataplaneError> {
        let flags = match mode {
            AttachedMode::Driver => XdpMode::Driver,
            AttachedMode::Generic => XdpMode::Skb,
        };
        xdp_program(&mut self.ebpf, PASS_PROGRAM)?
            .attach_to_if_index(ifindex, flags)
            .map_err(|source| DataplaneError::Attach {
                program: PASS_PROGRAM,
                interface: interface.to_string(),
                ifindex,
                mode: mode.name(),
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Detaches the classifier from `interface`, if attached.
    pub fn detach(&mut self, interface: &str) {
        let Some(port) = self.ports.remove(interface) else {
            return;
        };
        match xdp_program(&mut self.ebpf, CLASSIFIER_PROGRAM) {
            Ok(program) => {
                if let Err(err) = program.detach(port.link) {
                    // The link may already be gone with its interface.
                    tracing::debug!(interface, error = %err, "detach");
                }
            }
            Err(err) => tracing::warn!(interface, error = %err, "detach"),
        }
    }

    /// Detaches from every port.
    pub fn detach_all(&mut self) {
        let names: Vec<String> = self.ports.keys().cloned().collect();
        for name in names {
            self.detach(&name);
        }
    }

    /// The ports the classifier is attached to.
    pub fn ports(&self) -> &BTreeMap<String, AttachedPort> {
        &self.ports
    }

    /// The MAC tables as last written.
    pub fn tables(&self) -> &MacTables {
        &self.tables
    }

    /// Makes the kernel's MAC-to-class table say what `tables` say,
    /// touching only entries that changed (the classifier keeps running
    /// against the old entries).
    pub fn set_tables(&mut self, tables: MacTables) -> Result<(), DataplaneError> {
        let (old, new) = (self.tables.classes(), tables.classes());
        // The prefilter never hides a MAC the class table holds: bits for
        // new MACs are set before their entries, stale bits cleared after.
        let wanted = filter_words(new.keys());
        let union: Vec<u64> = wanted
            .iter()
            .zip(&self.filter)
            .map(|(a, b)| a | b)
            .collect();
        self.write_filter(union)?;
        sync_classes(&mut self.mac_class, &old, &new)?;
        self.write_filter(wanted)?;
        self.tables = tables;
        Ok(())
    }

    fn write_filter(&mut self, words: Vec<u64>) -> Result<(), DataplaneError> {
        for (index, (word, current)) in words.iter().zip(&self.filter).enumerate() {
            if word != current {
                self.mac_filter
                    .set(index as u32, *word, 0)
                    .map_err(|source| DataplaneError::Map {
                        name: MAC_FILTER_MAP,
                        source: Box::new(source),
                    })?;
            }
        }
        self.filter = words;
        Ok(())
    }

    /// Writes the policy word (`sync_common::policy`).
    pub fn set_policy(&mut self, word: u32) -> Result<(), DataplaneError> {
        self.policy
            .set(0, word, 0)
            .map_err(|source| DataplaneError::Map {
                name: POLICY_MAP,
                source: Box::new(source),
            })
    }

    /// Reads the counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, DataplaneError> {
        let mut out = KernelCounters::default();
        let blocks = self
            .counters
            .get(&0, 0)
            .map_err(|source| DataplaneError::Map {
                name: COUNTERS_MAP,
                source: Box::new(source),
            })?;
        for block in blocks.iter() {
            for (sum, value) in out.0.iter_mut().zip(block.slots) {
                *sum += value;
            }
        }
        Ok(out)
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Program `name` of the object as its type `P` (`Xdp`, `SchedClassifier`).
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(DataplaneError::Program {
        name,
        source: Box::new(aya::programs::ProgramError::NotLoaded),
    })?;
    program
        .try_into()
        .map_err(|source| DataplaneError::Program {
            name,
            source: Box::new(source),
        })
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    program(ebpf, name)
}

/// `mlag_inject_tc`, the object's one tc program.
fn inject_redirect_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DataplaneError> {
    program(ebpf, INJECT_REDIRECT_PROGRAM)
}

/// Prefilter words with the bit of every MAC in `macs` set.
fn filter_words<'a>(macs: impl Iterator<Item = &'a MacAddr>) -> Vec<u64> {
    let mut words = vec![0u64; MAC_FILTER_WORDS as usize];
    for mac in macs {
        let bit = mac_filter_bit(&mac.0);
        words[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
    words
}

fn sync_classes(
    map: &mut HashMap<MapData, MacKey, u8>,
    old: &BTreeMap<MacAddr, Class>,
    new: &BTreeMap<MacAddr, Class>,
) -> Result<(), DataplaneError> {
    let error = |source| DataplaneError::Map {
        name: MAC_CLASS_MAP,
        source: Box::new(source),
    };
    for mac in old.keys().filter(|mac| !new.contains_key(mac)) {
        match map.remove(&MacKey::new(mac.0)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(error(source)),
        }
    }
    for (mac, class) in new {
        if old.get(mac) != Some(class) {
            map.insert(MacKey::new(mac.0), *class as u8, 0)
                .map_err(error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_class_per_mac_shared_beats_peer_beats_own() {
        let mac = |last| MacAddr([2, 0, 0, 0, 0, last]);
        let tables = MacTables {
            peer: [mac(1), mac(2), mac(4)].into(),
            own: [mac(2), mac(3), mac(4)].into(),
            shared: [mac(4), mac(5)].into(),
        };
        let classes: Vec<_> = tables.classes().into_iter().collect();
        assert_eq!(
            classes,
            [
                (mac(1), Class::Peer),
                (mac(2), Class::Peer),
                (mac(3), Class::Own),
                (mac(4), Class::Shared),
                (mac(5), Class::Shared),
            ]
        );
        assert!(MacTables::default().classes().is_empty());
    }

    #[test]
    fn the_prefilter_has_a_bit_for_every_mac_and_only_those() {
        let macs = [
            MacAddr([2, 0, 0, 0, 0xa, 1]),
            MacAddr([0, 0, 0x5e, 0, 1, 7]),
        ];
        let words = filter_words(macs.iter());
        assert_eq!(words.len(), MAC_FILTER_WORDS as usize);
        assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
        for mac in &macs {
            let bit = mac_filter_bit(&mac.0);
            assert_ne!(words[(bit >> 6) as usize] & (1 << (bit & 63)), 0);
        }
    }
}
