//! The object model: objects in layers, one-way dependencies (cycles
//! rejected), actual states per source, and incremental propagation of
//! logical states to dependents (SPEC 5.1-5.6).
//!
//! Storage is an arena of objects addressed by `u32` indices, with adjacency
//! in both directions as edge lists that hold up to four edges inline (no
//! allocation for most objects; the dependency kind packed into the top
//! bit, membership of the dependent's redundancy group into the next one:
//! a group costs no memory beyond 6 bytes that fill the object's padding),
//! interned kind names, sources and states, and histories allocated only
//! for objects that have any. The effective state is stored as a (usually
//! empty) slice of interned state ids; the logical state is derived on demand
//! from the dependencies' effective states, so it costs no memory. The id
//! string lives once, in its object: the id index is a hash table of slot
//! numbers that hashes and compares the objects' own ids (issue 16 item 6:
//! the memory per object came down from ~313 to under 200 bytes).
//!
//! Every object carries a *rank* with `rank(x) > rank(y)` whenever `x` depends
//! on `y` (a topological order, kept valid by raising ranks when a dependency
//! is added; removals keep it valid). Propagation pops objects from a min-heap
//! keyed by rank, so an object is recomputed once, after all of its
//! dependencies that changed, whatever the shape (diamonds included), and
//! expansion stops at objects whose effective state did not change. The rank
//! also prunes the cycle check: `on` can only reach `dependent` if
//! `rank(on) > rank(dependent)`.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    fmt,
};

use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::rules::{NORMAL, RuleTable, State};
use crate::bus::{Info, ObjectId};

/// The layer of an object, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Switches, ports, links.
    Physical,
    /// LAN ports, bonds/MLAG interfaces, bridges, VLANs.
    L2,
    /// IP interfaces, gateways, neighbours.
    L3,
    /// Services declared on top.
    Service,
}

impl Layer {
    /// The name used in the config and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Physical => "physical",
            Self::L2 => "l2",
            Self::L3 => "l3",
            Self::Service => "service",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dependency {
    /// Same layer: a port belongs to its switch.
    BelongsTo,
    /// A lower layer realises a higher one: physical port -> LAN port -> IP interface.
    MapsTo,
}

impl Dependency {
    /// The name used in the config and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BelongsTo => "belongs-to",
            Self::MapsTo => "maps-to",
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an object's *redundancy group* (the dependencies added with
/// [`Model::add_group_dependency`]) passes its parents' faults on.
///
/// - `all`: any parent's fault propagates (as for dependencies outside a
///   group);
/// - `redundant`: the object is down only when no parent is up;
/// - `at_least = N`: the object is down only when fewer than N parents are
///   up.
///
/// A parent is *up* when its effective state has no fault and is not lost
/// contact: a parent in lost contact is not counted as up (it may well be
/// down, and the redundancy can no longer be vouched for). While at least N
/// parents are up but not all of them, the object is `degraded` at its
/// configured level. When fewer than N are up, the object takes the faults
/// of the N-th best parent (ranking up < faults by level < lost contact): a
/// redundant pair with one leg down and the other degraded is degraded, not
/// down. When that N-th best parent is in lost contact the object takes the
/// most severe fault among the group's parents, or, with no fault among
/// them, lost contact itself (nothing is known). N above the group's size
/// counts as the group's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redundancy {
    /// Any parent's fault propagates (the default).
    #[default]
    All,
    /// Down only when every parent is down (`at_least = 1`).
    Redundant,
    /// Down only when fewer than N parents are up.
    AtLeast(u16),
}

impl Redundancy {
    /// Parents that must be up for the object not to be down (0 = `all`).
    pub fn at_least(self) -> u16 {
        match self {
            Self::All => 0,
            Self::Redundant => 1,
            Self::AtLeast(n) => n,
        }
    }
}

impl fmt::Display for Redundancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Redundant => f.write_str("redundant"),
            Self::AtLeast(n) => write!(f, "at_least = {n}"),
        }
    }
}

/// The degraded level of a redundancy group unless configured.
pub const DEFAULT_DEGRADED_LEVEL: u8 = 1;

/// Name of the state of an object whose redundancy group lost a parent.
pub const DEGRADED: &str = "degraded";

fn path_text(path: &[ObjectId]) -> String {
    path.iter()
        .map(ObjectId::as_str)
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Why the model refused a change.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No object with that id.
    #[error("no object {0} in the state model")]
    UnknownObject(ObjectId),
    /// An object with that id exists already.
    #[error("object {0} is already in the state model")]
    Duplicate(ObjectId),
    /// The dependency would close a cycle; `path` starts and ends with the
    /// dependent (`dependent -> on -> ... -> dependent`).
    #[error("dependency would close a cycle: {}", path_text(.path))]
    Cycle {
        /// The cycle, first object repeated at the end.
        path: Vec<ObjectId>,
    },
    /// A redundancy policy the model cannot use.
    #[error("{object}: {reason}")]
    Redundancy {
        /// The object.
        object: ObjectId,
        /// What is wrong.
        reason: String,
    },
    /// belongs-to across layers, or maps-to not going up a layer.
    #[error(
        "{dependent} ({dependent_layer}) cannot {kind} {on} ({on_layer}): {}",
        match .kind {
            Dependency::BelongsTo => "belongs-to links objects of the same layer",
            Dependency::MapsTo => "maps-to goes from a lower layer up to a higher one (the object depended on must be in a lower layer)",
        }
    )]
    LayerRule {
        /// The object that would depend.
        dependent: ObjectId,
        /// Its layer.
        dependent_layer: Layer,
        /// The object it would depend on.
        on: ObjectId,
        /// Its layer.
        on_layer: Layer,
        /// The refused kind.
        kind: Dependency,
    },
}

/// A state as shown to operators, with where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateView {
    /// State name.
    pub name: String,
    /// Fault level.
    pub level: u8,
    /// Lost contact (not a fault).
    pub lost_contact: bool,
    /// For an actual state: the information's source. For a logical state:
    /// the id of the dependency it was inferred from. For an effective state:
    /// every contributing source and dependency id, comma-separated (empty
    /// for normal).
    pub source: String,
}

/// One entry of an object's state history: its effective state from `at_ms` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When the effective state changed (ms since the epoch, as given to the model).
    pub at_ms: u64,
    /// The new effective state.
    pub effective: Vec<StateView>,
}

/// One entry of an object's information history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoEntry {
    /// When it arrived.
    pub at_ms: u64,
    /// Its source.
    pub source: String,
    /// Its message.
    pub message: String,
    /// False if no rule knows it (it changed nothing).
    pub known: bool,
}

/// Everything about one object, for operators.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectView {
    /// Id.
    pub id: ObjectId,
    /// Layer.
    pub layer: Layer,
    /// Kind (free text: switch, port, lan-port, ip-interface, ...).
    pub kind: String,
    /// Actual states, one per source that reported one (empty = normal).
    pub actual: Vec<StateView>,
    /// Logical states: the most severe fault of every faulty dependency.
    pub logical: Vec<StateView>,
    /// Effective state: the most severe of actual and logical (all of them on
    /// a tie); `normal`, or `lost-contact`, when nothing is above level 0.
    pub effective: Vec<StateView>,
    /// The effective level.
    pub fault_level: u8,
    /// When the effective state last changed (0 = never).
    pub since_ms: u64,
    /// Effective state changes, oldest first (bounded).
    pub state_history: Vec<HistoryEntry>,
    /// Information received, oldest first (bounded).
    pub info_history: Vec<InfoEntry>,
    /// Its redundancy group, if it has one (absent from the JSON otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupView>,
}

/// An object's redundancy group, for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// How the group passes faults on.
    pub redundancy: Redundancy,
    /// Level of the `degraded` state while some but enough parents are up.
    pub degraded_level: u8,
    /// The parents in the group.
    pub members: Vec<ObjectId>,
    /// How many of them are up (no fault, not in lost contact).
    pub up: usize,
}

/// A change of an object's effective state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The object.
    pub object: ObjectId,
    /// Effective state before (`[normal]` when nothing was above level 0).
    pub before: Vec<State>,
    /// Effective state after.
    pub after: Vec<State>,
}

/// The outcome of [`Model::apply`].
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// False if no rule knows the information (then nothing changed).
    pub known: bool,
    /// Every object whose effective state changed.
    pub changes: Vec<Change>,
}

const MAPS_TO_BIT: u32 = 1 << 31;
/// On a dependency edge: the dependency is in the dependent's redundancy group.
const GROUP_BIT: u32 = 1 << 30;
const INDEX_MASK: u32 = !(MAPS_TO_BIT | GROUP_BIT);

fn edge(index: u32, kind: Dependency) -> u32 {
    match kind {
        Dependency::BelongsTo => index,
        Dependency::MapsTo => index | MAPS_TO_BIT,
    }
}

fn in_group(edge: u32) -> bool {
    edge & GROUP_BIT != 0
}

fn edge_index(edge: u32) -> u32 {
    edge & INDEX_MASK
}

fn edge_kind(edge: u32) -> Dependency {
    if edge & MAPS_TO_BIT == 0 {
        Dependency::BelongsTo
    } else {
        Dependency::MapsTo
    }
}

/// [`Model::group_key`] of a parent in lost contact.
const LOST: u16 = u16::MAX;

const ALIVE: u8 = 1;
const QUEUED: u8 = 2;
const VISITED: u8 = 4;

/// Strings interned to `u32`.
#[derive(Default)]
struct Interner {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct names");
        self.names.push(name.into());
        self.index.insert(name.into(), i);
        i
    }

    fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
}

/// An object's edge list: most objects have one to four edges, held
/// inline (24 bytes, like an empty `Vec`, without the allocation).
type Edges = SmallVec<[u32; 4]>;

/// Object ids to their slots. The table holds only slot numbers; hashing
/// and comparing go through the ids the objects hold, so each id is stored
/// once.
#[derive(Default)]
struct Index {
    table: HashTable<u32>,
    hasher: std::hash::RandomState,
}

impl Index {
    fn hash(&self, id: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, id)
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn get(&self, objects: &[Object], id: &str) -> Option<u32> {
        self.table
            .find(self.hash(id), |&x| &*objects[x as usize].id == id)
            .copied()
    }

    /// Indexes slot `x` under the id it holds (not indexed yet).
    fn insert(&mut self, objects: &[Object], x: u32) {
        let hash = self.hash(&objects[x as usize].id);
        let hasher = &self.hasher;
        self.table.insert_unique(hash, x, |&y| {
            std::hash::BuildHasher::hash_one(hasher, &*objects[y as usize].id)
        });
    }

    /// Forgets slot `x` (its object still holds its id).
    fn remove(&mut self, objects: &[Object], x: u32) {
        let hash = self.hash(&objects[x as usize].id);
        if let Ok(entry) = self.table.find_entry(hash, |&y| y == x) {
            entry.remove();
        }
    }

    fn reserve(&mut self, additional: usize, objects: &[Object]) {
        let hasher = &self.hasher;
        self.table.reserve(additional, |&y| {
            std::hash::BuildHasher::hash_one(hasher, &*objects[y as usize].id)
        });
    }
}

/// Histories, allocated on first use.
#[derive(Default)]
struct Records {
    states: VecDeque<HistoryEntry>,
    infos: VecDeque<InfoEntry>,
}

struct Object {
    id: Box<str>,
    /// What it depends on (edges: index | kind bit).
    deps: Edges,
    /// What depends on it (edges: index | kind bit).
    dependents: Edges,
    /// (source, state) pairs, one per source.
    actual: Vec<(u32, u32)>,
    /// Effective state ids, sorted; empty = normal.
    effective: Box<[u32]>,
    records: Option<Box<Records>>,
    since_ms: u64,
    /// Topological rank: above the rank of everything it depends on.
    rank: u32,
    kind: u32,
    /// Interned `degraded` state of its redundancy group (meaningful when
    /// `at_least` > 0).
    degraded: u32,
    /// Parents of its redundancy group that must be up; 0 = `all` (the
    /// group's dependencies pass every fault on).
    at_least: u16,
    layer: Layer,
    flags: u8,
}

impl Object {
    fn new(id: Box<str>, layer: Layer, kind: u32) -> Self {
        Self {
            id,
            deps: Edges::new(),
            dependents: Edges::new(),
            actual: Vec::new(),
            effective: Box::default(),
            records: None,
            since_ms: 0,
            rank: 0,
            kind,
            degraded: 0,
            at_least: 0,
            layer,
            flags: ALIVE,
        }
    }

    fn depends_on(&self, on: u32) -> Option<usize> {
        self.deps.iter().position(|&e| edge_index(e) == on)
    }
}

/// The state model: objects, dependencies, states and histories.
pub struct Model {
    objects: Vec<Object>,
    index: Index,
    free: Vec<u32>,
    kinds: Interner,
    sources: Interner,
    states: Vec<State>,
    state_index: HashMap<State, u32>,
    state_limit: usize,
    info_limit: usize,
    /// The latest time given to [`Model::apply`]; used to stamp changes made
    /// by structural edits, which are not given a time.
    now_ms: u64,
    /// Objects recomputed so far (a cost figure for tests and benchmarks).
    recomputed: u64,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
    scratch: Vec<u32>,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("objects", &self.len())
            .finish_non_exhaustive()
    }
}

impl Model {
    /// An empty model keeping 32 state and 32 information records per object.
    pub fn new() -> Self {
        Self::with_history_limit(32, 32)
    }

    /// An empty model keeping at most `states` state changes and `infos`
    /// pieces of information per object (0 = none).
    pub fn with_history_limit(states: usize, infos: usize) -> Self {
        Self {
            objects: Vec::new(),
            index: Index::default(),
            free: Vec::new(),
            kinds: Interner::default(),
            sources: Interner::default(),
            states: Vec::new(),
            state_index: HashMap::new(),
            state_limit: states,
            info_limit: infos,
            now_ms: 0,
            recomputed: 0,
            heap: BinaryHeap::new(),
            scratch: Vec::new(),
        }
    }

    /// Reserves room for `additional` more objects.
    pub fn reserve(&mut self, additional: usize) {
        self.objects.reserve(additional);
        self.index.reserve(additional, &self.objects);
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True if there are no objects.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// True if an object with this id exists.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.index.get(&self.objects, &id.0).is_some()
    }

    /// Objects recomputed since the model was made (each recomputation merges
    /// one object's actual and logical states).
    pub fn recomputations(&self) -> u64 {
        self.recomputed
    }

    fn lookup(&self, id: &ObjectId) -> Result<u32, ModelError> {
        self.index
            .get(&self.objects, &id.0)
            .ok_or_else(|| ModelError::UnknownObject(id.clone()))
    }

    fn id_of(&self, x: u32) -> ObjectId {
        ObjectId(self.objects[x as usize].id.to_string())
    }

    /// Adds an object (normal, without dependencies). `kind` is free text:
    /// switch, port, link, lan-port, bond, bridge, vlan, ip-interface,
    /// gateway, neighbour, service, ...
    pub fn add_object(&mut self, id: ObjectId, layer: Layer, kind: &str) -> Result<(), ModelError> {
        if self.contains(&id) {
            return Err(ModelError::Duplicate(id));
        }
        let kind = self.kinds.intern(kind);
        let key: Box<str> = id.0.into_boxed_str();
        let object = Object::new(key, layer, kind);
        let x = match self.free.pop() {
            Some(x) => {
                self.objects[x as usize] = object;
                x
            }
            None => {
                let x = u32::try_from(self.objects.len())
                    .ok()
                    .filter(|&x| x < INDEX_MASK);
                let x = x.expect("the state model holds fewer than 2^30 objects");
                self.objects.push(object);
                x
            }
        };
        self.index.insert(&self.objects, x);
        Ok(())
    }

    /// Removes an object and its dependencies in both directions; what
    /// depended on it is recomputed. Returns the objects whose effective state
    /// changed (not the removed object itself).
    pub fn remove_object(&mut self, id: &ObjectId) -> Result<Vec<Change>, ModelError> {
        let x = self.lookup(id)?;
        let object = &mut self.objects[x as usize];
        let deps = std::mem::take(&mut object.deps);
        let dependents = std::mem::take(&mut object.dependents);
        for e in deps {
            self.objects[edge_index(e) as usize]
                .dependents
                .retain(|d| edge_index(*d) != x);
        }
        let mut starts = Vec::with_capacity(dependents.len());
        for e in dependents {
            let y = edge_index(e);
            self.objects[y as usize]
                .deps
                .retain(|d| edge_index(*d) != x);
            starts.push(y);
        }
        self.index.remove(&self.objects, x);
        self.objects[x as usize] = Object {
            flags: 0,
            ..Object::new(Box::default(), Layer::Physical, 0)
        };
        self.free.push(x);
        Ok(self.propagate(&starts))
    }

    /// `dependent` depends on `on` (e.g. `lan:a-c` maps-to-depends on
    /// `port:a-c`; `port:a-c` belongs-to-depends on `switch:A`). Rejects a
    /// dependency that would close a cycle (with the path), belongs-to
    /// across layers and maps-to not going up. Adding an existing dependency
    /// again only updates its kind. The dependent's state is recomputed (see
    /// [`Model::add_dependency_changes`] for the changes).
    pub fn add_dependency(
        &mut self,
        dependent: &ObjectId,
        on: &ObjectId,
        kind: Dependency,
    ) -> Result<(), ModelError> {
        self.add_dependency_changes(dependent, on, kind).map(drop)
    }

    /// [`Model::add_dependency`], returning the objects whose effective state
    /// changed (the dependent and what depends on it, if `on` is faulty).
    pub fn add_dependency_changes(
        &mut self,
        dependent: &ObjectId,
        on: &ObjectId,
        kind: Dependency,
    ) -> Result<Vec<Change>, ModelError> {
        self.add_edge(dependent, on, kind, false)
    }

    /// [`Model::add_dependency_changes`] for a dependency in the dependent's
    /// redundancy group: its faults pass on according to the dependent's
    /// [`Redundancy`] (see [`Model::set_redundancy`]). Adding an existing
    /// dependency again moves it into the group.
    pub fn add_group_dependency(
        &mut self,
        dependent: &ObjectId,
        on: &ObjectId,
        kind: Dependency,
    ) -> Result<Vec<Change>, ModelError> {
        self.add_edge(dependent, on, kind, true)
    }

    /// Sets how `id`'s redundancy group passes faults on, with the level of
    /// its `degraded` state (1 or more), and recomputes it. Returns the
    /// objects whose effective state changed.
    pub fn set_redundancy(
        &mut self,
        id: &ObjectId,
        policy: Redundancy,
        degraded_level: u8,
    ) -> Result<Vec<Change>, ModelError> {
        let x = self.lookup(id)?;
        let refuse = |reason: &str| {
            Err(ModelError::Redundancy {
                object: id.clone(),
                reason: reason.into(),
            })
        };
        if policy == Redundancy::AtLeast(0) {
            return refuse("at_least must be 1 or more");
        }
        if degraded_level == 0 {
            return refuse("the degraded level must be 1 or more (level 0 is not a fault)");
        }
        let degraded = self.intern_state(&State::fault(DEGRADED, degraded_level));
        let object = &mut self.objects[x as usize];
        object.at_least = policy.at_least();
        object.degraded = degraded;
        Ok(self.propagate(&[x]))
    }

    /// `id`'s redundancy policy and degraded level (`all` for an object
    /// without a group); `None` for an unknown id.
    pub fn redundancy_of(&self, id: &ObjectId) -> Option<(Redundancy, u8)> {
        let x = self.lookup(id).ok()?;
        let object = &self.objects[x as usize];
        Some(match object.at_least {
            0 => (Redundancy::All, DEFAULT_DEGRADED_LEVEL),
            1 => (
                Redundancy::Redundant,
                self.states[object.degraded as usize].level,
            ),
            n => (
                Redundancy::AtLeast(n),
                self.states[object.degraded as usize].level,
            ),
        })
    }

    /// The dependencies in `id`'s redundancy group; empty for an unknown id.
    pub fn group_of(&self, id: &ObjectId) -> Vec<ObjectId> {
        let Ok(x) = self.lookup(id) else {
            return Vec::new();
        };
        self.objects[x as usize]
            .deps
            .iter()
            .filter(|&&e| in_group(e))
            .map(|&e| self.id_of(edge_index(e)))
            .collect()
    }

    fn add_edge(
        &mut self,
        dependent: &ObjectId,
        on: &ObjectId,
        kind: Dependency,
        group: bool,
    ) -> Result<Vec<Change>, ModelError> {
        let group_bit = if group { GROUP_BIT } else { 0 };
        let d = self.lookup(dependent)?;
        let o = self.lookup(on)?;
        if d == o {
            return Err(ModelError::Cycle {
                path: vec![dependent.clone(), dependent.clone()],
            });
        }
        let (dependent_layer, on_layer) = (
            self.objects[d as usize].layer,
            self.objects[o as usize].layer,
        );
        let layers_ok = match kind {
            Dependency::BelongsTo => dependent_layer == on_layer,
            Dependency::MapsTo => on_layer < dependent_layer,
        };
        if !layers_ok {
            return Err(ModelError::LayerRule {
                dependent: dependent.clone(),
                dependent_layer,
                on: on.clone(),
                on_layer,
                kind,
            });
        }
        if let Some(i) = self.objects[d as usize].depends_on(o) {
            let before = self.objects[d as usize].deps[i];
            self.objects[d as usize].deps[i] = edge(o, kind) | group_bit;
            let back = &mut self.objects[o as usize].dependents;
            if let Some(j) = back.iter().position(|&e| edge_index(e) == d) {
                back[j] = edge(d, kind);
            }
            if in_group(before) != group {
                return Ok(self.propagate(&[d]));
            }
            return Ok(Vec::new());
        }
        if let Some(path) = self.path_down(o, d) {
            let mut ids = vec![dependent.clone()];
            ids.extend(path.into_iter().map(|x| self.id_of(x)));
            return Err(ModelError::Cycle { path: ids });
        }
        self.objects[d as usize]
            .deps
            .push(edge(o, kind) | group_bit);
        self.objects[o as usize].dependents.push(edge(d, kind));
        let min_rank = self.objects[o as usize].rank + 1;
        self.raise_rank(d, min_rank);
        Ok(self.propagate(&[d]))
    }

    /// Removes the dependency of `dependent` on `on` (nothing if there is
    /// none) and recomputes the dependent. Returns the objects whose
    /// effective state changed.
    pub fn remove_dependency(
        &mut self,
        dependent: &ObjectId,
        on: &ObjectId,
    ) -> Result<Vec<Change>, ModelError> {
        let d = self.lookup(dependent)?;
        let o = self.lookup(on)?;
        let Some(i) = self.objects[d as usize].depends_on(o) else {
            return Ok(Vec::new());
        };
        self.objects[d as usize].deps.swap_remove(i);
        self.objects[o as usize]
            .dependents
            .retain(|e| edge_index(*e) != d);
        Ok(self.propagate(&[d]))
    }

    /// A path `from -> ... -> to` following dependencies, if there is one.
    fn path_down(&mut self, from: u32, to: u32) -> Option<Vec<u32>> {
        let target_rank = self.objects[to as usize].rank;
        // Everything `from` reaches has a lower rank than `from`.
        if self.objects[from as usize].rank <= target_rank {
            return None;
        }
        let mut visited = vec![from];
        self.objects[from as usize].flags |= VISITED;
        let mut stack: Vec<(u32, usize)> = vec![(from, 0)];
        let mut found = None;
        while let Some(top) = stack.last_mut() {
            let (n, i) = (top.0, top.1);
            let deps = &self.objects[n as usize].deps;
            if i == deps.len() {
                stack.pop();
                continue;
            }
            top.1 += 1;
            let c = edge_index(deps[i]);
            if c == to {
                let mut path: Vec<u32> = stack.iter().map(|&(n, _)| n).collect();
                path.push(to);
                found = Some(path);
                break;
            }
            let child = &mut self.objects[c as usize];
            if child.flags & VISITED == 0 && child.rank > target_rank {
                child.flags |= VISITED;
                visited.push(c);
                stack.push((c, 0));
            }
        }
        for v in visited {
            self.objects[v as usize].flags &= !VISITED;
        }
        found
    }

    /// Raises `x`'s rank to at least `min` and what depends on it above that.
    fn raise_rank(&mut self, x: u32, min: u32) {
        if self.objects[x as usize].rank >= min {
            return;
        }
        self.objects[x as usize].rank = min;
        let mut stack = vec![x];
        while let Some(n) = stack.pop() {
            let rank = self.objects[n as usize].rank;
            for k in 0..self.objects[n as usize].dependents.len() {
                let y = edge_index(self.objects[n as usize].dependents[k]);
                let other = &mut self.objects[y as usize];
                if other.rank <= rank {
                    other.rank = rank + 1;
                    stack.push(y);
                }
            }
        }
    }

    fn intern_state(&mut self, state: &State) -> u32 {
        if let Some(&i) = self.state_index.get(state) {
            return i;
        }
        let i = u32::try_from(self.states.len()).expect("fewer than 2^32 distinct states");
        self.states.push(state.clone());
        self.state_index.insert(state.clone(), i);
        i
    }

    /// Records `info` about its object: the rules turn it into a state for
    /// the info's source (replacing that source's previous state) or clear
    /// the source's state; the info joins the object's information history;
    /// then everything depending on the object is recomputed incrementally.
    ///
    /// Unknown information (no rule) changes no state: the result has
    /// `known: false` and no changes, and the info is still recorded in the
    /// history, marked unknown. Information about an unknown object is an
    /// error ([`ModelError::UnknownObject`]) and is not recorded.
    pub fn apply(
        &mut self,
        info: Info,
        rules: &RuleTable,
        now_ms: u64,
    ) -> Result<Applied, ModelError> {
        let x = self.lookup(&info.object)?;
        self.now_ms = now_ms;
        let outcome = rules.lookup(&info.source, &info.message);
        let known = outcome.is_some();
        let mut changed = false;
        match outcome {
            None => {}
            Some(None) => {
                if let Some(source) = self.sources.get(&info.source) {
                    let actual = &mut self.objects[x as usize].actual;
                    let before = actual.len();
                    actual.retain(|&(s, _)| s != source);
                    changed = actual.len() != before;
                }
            }
            Some(Some(state)) => {
                let state = self.intern_state(state);
                let source = self.sources.intern(&info.source);
                let actual = &mut self.objects[x as usize].actual;
                match actual.iter_mut().find(|(s, _)| *s == source) {
                    Some(entry) => {
                        changed = entry.1 != state;
                        entry.1 = state;
                    }
                    None => {
                        actual.push((source, state));
                        changed = true;
                    }
                }
            }
        }
        if self.info_limit > 0 {
            let limit = self.info_limit;
            let infos = &mut self.records_mut(x).infos;
            if infos.len() >= limit {
                infos.pop_front();
            }
            infos.push_back(InfoEntry {
                at_ms: now_ms,
                source: info.source,
                message: info.message,
                known,
            });
        }
        let changes = if changed {
            self.propagate(&[x])
        } else {
            Vec::new()
        };
        Ok(Applied { known, changes })
    }

    fn records_mut(&mut self, x: u32) -> &mut Records {
        self.objects[x as usize]
            .records
            .get_or_insert_with(Box::default)
    }

    /// Recomputes the objects in `starts` and, in rank order, everything
    /// depending on an object whose effective state changed.
    fn propagate(&mut self, starts: &[u32]) -> Vec<Change> {
        let mut heap = std::mem::take(&mut self.heap);
        let mut scratch = std::mem::take(&mut self.scratch);
        heap.clear();
        for &s in starts {
            let object = &mut self.objects[s as usize];
            if object.flags & QUEUED == 0 {
                object.flags |= QUEUED;
                heap.push(Reverse((object.rank, s)));
            }
        }
        let mut changed: Vec<(u32, Box<[u32]>)> = Vec::new();
        while let Some(Reverse((_, x))) = heap.pop() {
            self.objects[x as usize].flags &= !QUEUED;
            self.recomputed += 1;
            self.merge(x, &mut scratch);
            if *scratch == *self.objects[x as usize].effective {
                continue;
            }
            let before = std::mem::replace(
                &mut self.objects[x as usize].effective,
                scratch.as_slice().into(),
            );
            changed.push((x, before));
            for k in 0..self.objects[x as usize].dependents.len() {
                let y = edge_index(self.objects[x as usize].dependents[k]);
                let other = &mut self.objects[y as usize];
                if other.flags & QUEUED == 0 {
                    other.flags |= QUEUED;
                    heap.push(Reverse((other.rank, y)));
                }
            }
        }
        self.heap = heap;
        self.scratch = scratch;
        changed
            .into_iter()
            .map(|(x, before)| {
                let now = self.now_ms;
                if self.state_limit > 0 {
                    let entry = HistoryEntry {
                        at_ms: now,
                        effective: self.effective_views(x),
                    };
                    let limit = self.state_limit;
                    let states = &mut self.records_mut(x).states;
                    if states.len() >= limit {
                        states.pop_front();
                    }
                    states.push_back(entry);
                }
                self.objects[x as usize].since_ms = now;
                Change {
                    object: self.id_of(x),
                    before: self.states_of(&before),
                    after: self.states_of(&self.objects[x as usize].effective),
                }
            })
            .collect()
    }

    /// The merge: `out` = the effective state ids of `x` from its actual
    /// states and its logical states.
    fn merge(&self, x: u32, out: &mut Vec<u32>) {
        out.clear();
        let object = &self.objects[x as usize];
        out.extend(object.actual.iter().map(|&(_, s)| s));
        self.for_each_logical(x, |_, s| out.push(s));
        let max = out
            .iter()
            .map(|&s| &self.states[s as usize])
            .filter(|s| s.is_fault())
            .map(|s| s.level)
            .max()
            .unwrap_or(0);
        if max > 0 {
            out.retain(|&s| {
                let s = &self.states[s as usize];
                s.is_fault() && s.level == max
            });
        } else {
            out.retain(|&s| self.states[s as usize].lost_contact);
        }
        out.sort_unstable();
        out.dedup();
    }

    /// Where a parent stands in its dependent's redundancy group: 0 = up, a
    /// fault level, or [`LOST`] (ranked below every fault: not counted as up).
    fn group_key(&self, parent: u32) -> u16 {
        match self.objects[parent as usize].effective.first() {
            None => 0,
            Some(&s) => {
                let s = &self.states[s as usize];
                if s.is_fault() {
                    u16::from(s.level)
                } else if s.lost_contact {
                    LOST
                } else {
                    0
                }
            }
        }
    }

    /// Calls `f(dependency, state)` for every logical state of `x`: the
    /// faults of its dependencies outside its redundancy group, and what
    /// its group passes on (see [`Redundancy`]).
    fn for_each_logical(&self, x: u32, mut f: impl FnMut(u32, u32)) {
        let object = &self.objects[x as usize];
        let grouped = object.at_least > 0;
        let mut size = 0u32;
        let mut up = 0u32;
        for &e in &object.deps {
            let dep = edge_index(e);
            if grouped && in_group(e) {
                size += 1;
                up += u32::from(self.group_key(dep) == 0);
                continue;
            }
            for &s in self.objects[dep as usize].effective.iter() {
                if self.states[s as usize].is_fault() {
                    f(dep, s);
                }
            }
        }
        if size == 0 {
            return;
        }
        let need = u32::from(object.at_least).min(size);
        let members = || {
            object
                .deps
                .iter()
                .filter(|&&e| in_group(e))
                .map(|&e| edge_index(e))
        };
        let degraded = object.degraded;
        let degraded_level = u16::from(self.states[degraded as usize].level);
        if up >= need {
            if up < size {
                for dep in members().filter(|&d| self.group_key(d) != 0) {
                    f(dep, degraded);
                }
            }
            return;
        }
        // Fewer than `need` parents are up: the `need`-th best one decides.
        let mut keys: Vec<u16> = members().map(|d| self.group_key(d)).collect();
        keys.sort_unstable();
        let mut decisive = keys[need as usize - 1];
        if decisive == LOST {
            decisive = keys
                .iter()
                .copied()
                .filter(|&k| k != LOST)
                .max()
                .unwrap_or(0);
            if decisive == 0 {
                // No fault among them: nothing is known but lost contact.
                for dep in members().filter(|&d| self.group_key(d) == LOST) {
                    for &s in self.objects[dep as usize].effective.iter() {
                        f(dep, s);
                    }
                }
                return;
            }
        }
        for dep in members().filter(|&d| self.group_key(d) == decisive) {
            for &s in self.objects[dep as usize].effective.iter() {
                f(dep, s);
            }
        }
        if degraded_level > decisive {
            for dep in members().filter(|&d| self.group_key(d) != 0) {
                f(dep, degraded);
            }
        }
    }

    fn states_of(&self, effective: &[u32]) -> Vec<State> {
        if effective.is_empty() {
            vec![State::normal()]
        } else {
            effective
                .iter()
                .map(|&s| self.states[s as usize].clone())
                .collect()
        }
    }

    fn view_of(&self, state: u32, source: String) -> StateView {
        let s = &self.states[state as usize];
        StateView {
            name: s.name.clone(),
            level: s.level,
            lost_contact: s.lost_contact,
            source,
        }
    }

    /// (dependency, state) pairs of `x`'s logical states.
    fn logical_of(&self, x: u32) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        self.for_each_logical(x, |dep, s| out.push((dep, s)));
        out
    }

    fn effective_views(&self, x: u32) -> Vec<StateView> {
        let object = &self.objects[x as usize];
        if object.effective.is_empty() {
            return vec![StateView {
                name: NORMAL.into(),
                level: 0,
                lost_contact: false,
                source: String::new(),
            }];
        }
        let logical = self.logical_of(x);
        object
            .effective
            .iter()
            .map(|&s| {
                let actual = object
                    .actual
                    .iter()
                    .filter(|a| a.1 == s)
                    .map(|a| self.sources.name(a.0));
                let logical = logical
                    .iter()
                    .filter(|l| l.1 == s)
                    .map(|l| &*self.objects[l.0 as usize].id);
                let sources: Vec<&str> = actual.chain(logical).collect();
                self.view_of(s, sources.join(","))
            })
            .collect()
    }

    fn object_view(&self, x: u32) -> ObjectView {
        let object = &self.objects[x as usize];
        let actual = object
            .actual
            .iter()
            .map(|&(src, s)| self.view_of(s, self.sources.name(src).to_string()))
            .collect();
        let logical = self
            .logical_of(x)
            .into_iter()
            .map(|(dep, s)| self.view_of(s, self.objects[dep as usize].id.to_string()))
            .collect();
        let fault_level = object
            .effective
            .iter()
            .map(|&s| self.states[s as usize].level)
            .max()
            .unwrap_or(0);
        let (state_history, info_history) = match &object.records {
            Some(r) => (
                r.states.iter().cloned().collect(),
                r.infos.iter().cloned().collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        ObjectView {
            id: self.id_of(x),
            layer: object.layer,
            kind: self.kinds.name(object.kind).to_string(),
            actual,
            logical,
            effective: self.effective_views(x),
            fault_level,
            since_ms: object.since_ms,
            state_history,
            info_history,
            group: self.group_view(x),
        }
    }

    fn group_view(&self, x: u32) -> Option<GroupView> {
        let object = &self.objects[x as usize];
        if object.at_least == 0 {
            return None;
        }
        let members: Vec<u32> = object
            .deps
            .iter()
            .filter(|&&e| in_group(e))
            .map(|&e| edge_index(e))
            .collect();
        let (redundancy, degraded_level) = self.redundancy_of(&self.id_of(x))?;
        Some(GroupView {
            redundancy,
            degraded_level,
            up: members.iter().filter(|&&m| self.group_key(m) == 0).count(),
            members: members.into_iter().map(|m| self.id_of(m)).collect(),
        })
    }

    /// Everything about one object.
    pub fn view(&self, id: &ObjectId) -> Option<ObjectView> {
        self.lookup(id).ok().map(|x| self.object_view(x))
    }

    /// Every object, in the order they were added (slots of removed objects
    /// are reused).
    pub fn views(&self) -> impl Iterator<Item = ObjectView> + '_ {
        (0..self.objects.len() as u32)
            .filter(|&x| self.objects[x as usize].flags & ALIVE != 0)
            .map(|x| self.object_view(x))
    }

    /// An object's fault level, without building its view.
    pub fn fault_level(&self, id: &ObjectId) -> Option<u8> {
        let x = self.lookup(id).ok()?;
        Some(
            self.objects[x as usize]
                .effective
                .iter()
                .map(|&s| self.states[s as usize].level)
                .max()
                .unwrap_or(0),
        )
    }

    /// An object's effective state (`[normal]` when nothing is above level 0
    /// and it is not in lost contact), without building its view.
    pub fn effective(&self, id: &ObjectId) -> Option<Vec<State>> {
        let x = self.lookup(id).ok()?;
        Some(self.states_of(&self.objects[x as usize].effective))
    }

    fn edges(&self, id: &ObjectId, down: bool) -> Vec<(ObjectId, Dependency)> {
        let Ok(x) = self.lookup(id) else {
            return Vec::new();
        };
        let object = &self.objects[x as usize];
        let edges = if down {
            &object.deps
        } else {
            &object.dependents
        };
        edges
            .iter()
            .map(|&e| (self.id_of(edge_index(e)), edge_kind(e)))
            .collect()
    }

    /// The most severe level among an object's actual states (what its
    /// sources said of it, not what was inferred), without building its view.
    pub fn actual_level(&self, id: &ObjectId) -> Option<u8> {
        let x = self.lookup(id).ok()?;
        Some(
            self.objects[x as usize]
                .actual
                .iter()
                .map(|&(_, s)| self.states[s as usize].level)
                .max()
                .unwrap_or(0),
        )
    }

    /// An object's effective state as operators see it (with sources),
    /// without building its whole view.
    pub fn effective_view(&self, id: &ObjectId) -> Option<Vec<StateView>> {
        let x = self.lookup(id).ok()?;
        Some(self.effective_views(x))
    }

    /// An object's kind (switch, port, gateway, ...), without building its view.
    pub fn kind_of(&self, id: &ObjectId) -> Option<&str> {
        let x = self.lookup(id).ok()?;
        Some(self.kinds.name(self.objects[x as usize].kind))
    }

    /// What `id` depends on directly (down the chain); empty for an unknown id.
    pub fn dependencies_of(&self, id: &ObjectId) -> Vec<(ObjectId, Dependency)> {
        self.edges(id, true)
    }

    /// What depends on `id` directly (up the chain); empty for an unknown id.
    pub fn dependents_of(&self, id: &ObjectId) -> Vec<(ObjectId, Dependency)> {
        self.edges(id, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::rules::Rule;

    fn id(s: &str) -> ObjectId {
        ObjectId::from(s)
    }

    /// The built-in rules plus `test <state>` messages for any state name:
    /// `critical` 3, `major` 2, `minor` 1, `other-major` 2, `fine` 0 (a named
    /// normal state).
    fn rules() -> RuleTable {
        RuleTable::with_rules(vec![
            Rule::fault("test", "critical", "critical", 3),
            Rule::fault("test", "major", "major", 2),
            Rule::fault("test", "minor", "minor", 1),
            Rule::fault("test2", "other-major", "other-major", 2),
            Rule::fault("test", "fine", "fine", 0),
            Rule::clears("test", "clear"),
        ])
    }

    fn say(m: &mut Model, object: &str, source: &str, message: &str) -> Applied {
        m.apply(Info::new(source, message, object), &rules(), 1000)
            .unwrap()
    }

    fn names(states: &[StateView]) -> Vec<(String, u8)> {
        states.iter().map(|s| (s.name.clone(), s.level)).collect()
    }

    fn effective(m: &Model, object: &str) -> Vec<(String, u8)> {
        names(&m.view(&id(object)).unwrap().effective)
    }

    fn logical(m: &Model, object: &str) -> Vec<(String, u8, String)> {
        m.view(&id(object))
            .unwrap()
            .logical
            .into_iter()
            .map(|s| (s.name, s.level, s.source))
            .collect()
    }

    fn s(name: &str, level: u8) -> (String, u8) {
        (name.to_string(), level)
    }

    fn changed(changes: &[Change]) -> Vec<&str> {
        let mut ids: Vec<&str> = changes.iter().map(|c| c.object.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    /// switch:A <-belongs- port:a-c <-maps- lan:a-c <-maps- ip:a-c
    fn three_layers() -> Model {
        let mut m = Model::new();
        m.add_object(id("switch:A"), Layer::Physical, "switch")
            .unwrap();
        m.add_object(id("port:a-c"), Layer::Physical, "port")
            .unwrap();
        m.add_object(id("lan:a-c"), Layer::L2, "lan-port").unwrap();
        m.add_object(id("ip:a-c"), Layer::L3, "ip-interface")
            .unwrap();
        m.add_dependency(&id("port:a-c"), &id("switch:A"), Dependency::BelongsTo)
            .unwrap();
        m.add_dependency(&id("lan:a-c"), &id("port:a-c"), Dependency::MapsTo)
            .unwrap();
        m.add_dependency(&id("ip:a-c"), &id("lan:a-c"), Dependency::MapsTo)
            .unwrap();
        m
    }

    /// `x` (L2) depends on `dep` (physical), so `dep`'s faults become `x`'s logical states.
    fn pair() -> Model {
        let mut m = Model::new();
        m.add_object(id("dep"), Layer::Physical, "port").unwrap();
        m.add_object(id("x"), Layer::L2, "lan-port").unwrap();
        m.add_dependency(&id("x"), &id("dep"), Dependency::MapsTo)
            .unwrap();
        m
    }

    // --- the merge decision table (SPEC 5.5) ---

    #[test]
    fn merge_all_normal_is_normal_with_no_actual_or_logical_states() {
        let m = pair();
        let v = m.view(&id("x")).unwrap();
        assert!(v.actual.is_empty() && v.logical.is_empty());
        assert_eq!(names(&v.effective), vec![s("normal", 0)]);
        assert_eq!(v.fault_level, 0);
    }

    #[test]
    fn merge_a_level_zero_actual_state_is_shown_as_actual_but_effective_stays_normal() {
        let mut m = pair();
        say(&mut m, "x", "test", "fine");
        let v = m.view(&id("x")).unwrap();
        assert_eq!(names(&v.actual), vec![s("fine", 0)]);
        assert_eq!(names(&v.effective), vec![s("normal", 0)]);
    }

    #[test]
    fn merge_actual_only_is_the_actual_state() {
        let mut m = pair();
        say(&mut m, "x", "test", "major");
        let v = m.view(&id("x")).unwrap();
        assert_eq!(names(&v.actual), vec![s("major", 2)]);
        assert!(v.logical.is_empty());
        assert_eq!(names(&v.effective), vec![s("major", 2)]);
        assert_eq!(v.effective[0].source, "test");
        assert_eq!(v.fault_level, 2);
    }

    #[test]
    fn merge_logical_only_is_the_logical_state_from_the_dependency() {
        let mut m = pair();
        say(&mut m, "dep", "test", "major");
        let v = m.view(&id("x")).unwrap();
        assert!(v.actual.is_empty());
        assert_eq!(logical(&m, "x"), vec![("major".into(), 2, "dep".into())]);
        assert_eq!(names(&v.effective), vec![s("major", 2)]);
        assert_eq!(v.effective[0].source, "dep");
    }

    #[test]
    fn merge_actual_more_severe_than_logical_keeps_the_actual() {
        let mut m = pair();
        say(&mut m, "dep", "test", "minor");
        say(&mut m, "x", "test", "critical");
        assert_eq!(
            logical(&m, "x").len(),
            1,
            "the logical state is still shown"
        );
        assert_eq!(effective(&m, "x"), vec![s("critical", 3)]);
    }

    #[test]
    fn merge_logical_more_severe_than_actual_keeps_the_logical() {
        let mut m = pair();
        say(&mut m, "dep", "test", "critical");
        say(&mut m, "x", "test", "minor");
        assert_eq!(effective(&m, "x"), vec![s("critical", 3)]);
        assert_eq!(m.view(&id("x")).unwrap().effective[0].source, "dep");
    }

    #[test]
    fn merge_tie_between_actual_and_logical_keeps_both() {
        let mut m = pair();
        say(&mut m, "dep", "test", "major");
        say(&mut m, "x", "test2", "other-major");
        let mut e = effective(&m, "x");
        e.sort();
        assert_eq!(e, vec![s("major", 2), s("other-major", 2)]);
        assert_eq!(m.view(&id("x")).unwrap().fault_level, 2);
    }

    #[test]
    fn merge_tie_on_the_same_state_shows_it_once_naming_every_source() {
        let mut m = pair();
        say(&mut m, "dep", "netlink", "link-down");
        say(&mut m, "x", "fabric", "port-down");
        let v = m.view(&id("x")).unwrap();
        assert_eq!(names(&v.effective), vec![s("down", 3)]);
        assert_eq!(v.effective[0].source, "fabric,dep");
    }

    #[test]
    fn merge_several_actual_states_keep_the_most_severe() {
        let mut m = pair();
        say(&mut m, "x", "netlink", "link-down");
        say(&mut m, "x", "agent", "unhealthy");
        assert_eq!(m.view(&id("x")).unwrap().actual.len(), 2);
        assert_eq!(effective(&m, "x"), vec![s("down", 3)]);
    }

    #[test]
    fn merge_several_actual_states_keep_both_on_a_tie() {
        let mut m = pair();
        say(&mut m, "x", "test", "major");
        say(&mut m, "x", "test2", "other-major");
        let mut e = effective(&m, "x");
        e.sort();
        assert_eq!(e, vec![s("major", 2), s("other-major", 2)]);
    }

    #[test]
    fn merge_several_logical_states_from_different_dependencies_keep_the_most_severe() {
        let mut m = pair();
        m.add_object(id("dep2"), Layer::Physical, "port").unwrap();
        m.add_dependency(&id("x"), &id("dep2"), Dependency::MapsTo)
            .unwrap();
        say(&mut m, "dep", "test", "minor");
        say(&mut m, "dep2", "test", "critical");
        assert_eq!(logical(&m, "x").len(), 2);
        assert_eq!(effective(&m, "x"), vec![s("critical", 3)]);
    }

    // --- actual states per source ---

    #[test]
    fn the_latest_information_from_a_source_replaces_its_previous_state() {
        let mut m = pair();
        say(&mut m, "x", "test", "critical");
        say(&mut m, "x", "test", "minor");
        assert_eq!(
            names(&m.view(&id("x")).unwrap().actual),
            vec![s("minor", 1)]
        );
        assert_eq!(effective(&m, "x"), vec![s("minor", 1)]);
    }

    #[test]
    fn clearing_information_removes_only_its_own_sources_state() {
        let mut m = pair();
        say(&mut m, "x", "netlink", "link-down");
        say(&mut m, "x", "fabric", "port-down");
        let applied = say(&mut m, "x", "netlink", "link-up");
        assert!(
            applied.known && applied.changes.is_empty(),
            "still down from the fabric"
        );
        assert_eq!(m.view(&id("x")).unwrap().actual[0].source, "fabric");
        let applied = say(&mut m, "x", "fabric", "port-up");
        assert_eq!(changed(&applied.changes), vec!["x"]);
        assert_eq!(effective(&m, "x"), vec![s("normal", 0)]);
    }

    #[test]
    fn equivalent_messages_from_different_sources_give_one_state_name() {
        let mut m = Model::new();
        for p in ["port:1", "port:2"] {
            m.add_object(id(p), Layer::Physical, "port").unwrap();
        }
        say(&mut m, "port:1", "netlink", "link-down");
        say(&mut m, "port:2", "fabric", "port-down");
        assert_eq!(effective(&m, "port:1"), effective(&m, "port:2"));
        assert_eq!(effective(&m, "port:1"), vec![s("down", 3)]);
    }

    #[test]
    fn repeating_the_same_information_changes_nothing() {
        let mut m = three_layers();
        assert_eq!(
            say(&mut m, "port:a-c", "netlink", "link-down")
                .changes
                .len(),
            3
        );
        assert!(
            say(&mut m, "port:a-c", "netlink", "link-down")
                .changes
                .is_empty()
        );
        assert!(
            say(&mut m, "port:a-c", "netlink", "carrier-lost")
                .changes
                .is_empty(),
            "same state"
        );
    }

    #[test]
    fn unknown_information_is_reported_unknown_changes_nothing_and_is_recorded() {
        let mut m = three_layers();
        let applied = say(&mut m, "port:a-c", "netlink", "frobnicated");
        assert!(!applied.known);
        assert!(applied.changes.is_empty());
        let v = m.view(&id("port:a-c")).unwrap();
        assert!(v.actual.is_empty());
        assert_eq!(v.fault_level, 0);
        assert_eq!(v.info_history.len(), 1);
        assert!(!v.info_history[0].known);
        assert_eq!(v.info_history[0].message, "frobnicated");
    }

    #[test]
    fn information_about_an_unknown_object_is_an_error() {
        let mut m = three_layers();
        let err = m
            .apply(Info::new("netlink", "link-down", "port:nope"), &rules(), 1)
            .unwrap_err();
        assert!(
            matches!(err, ModelError::UnknownObject(ref o) if o.as_str() == "port:nope"),
            "{err}"
        );
    }

    // --- inference (SPEC 5.4) ---

    #[test]
    fn a_port_fault_is_inferred_through_three_layers_and_clearing_clears_them() {
        let mut m = three_layers();
        let applied = say(&mut m, "port:a-c", "netlink", "link-down");
        assert_eq!(
            changed(&applied.changes),
            vec!["ip:a-c", "lan:a-c", "port:a-c"]
        );
        for c in &applied.changes {
            assert_eq!(c.before, vec![State::normal()]);
            assert_eq!(c.after, vec![State::fault("down", 3)]);
        }
        for object in ["lan:a-c", "ip:a-c"] {
            let v = m.view(&id(object)).unwrap();
            assert!(
                v.actual.is_empty(),
                "{object} has no information of its own"
            );
            assert_eq!(names(&v.logical), vec![s("down", 3)]);
            assert_eq!(names(&v.effective), vec![s("down", 3)]);
        }
        assert_eq!(
            logical(&m, "ip:a-c")[0].2,
            "lan:a-c",
            "inferred from the object below"
        );
        assert_eq!(
            effective(&m, "switch:A"),
            vec![s("normal", 0)],
            "nothing propagates down"
        );

        let applied = say(&mut m, "port:a-c", "netlink", "link-up");
        assert_eq!(
            changed(&applied.changes),
            vec!["ip:a-c", "lan:a-c", "port:a-c"]
        );
        for object in ["port:a-c", "lan:a-c", "ip:a-c"] {
            assert_eq!(effective(&m, object), vec![s("normal", 0)]);
            assert!(logical(&m, object).is_empty());
        }
    }

    #[test]
    fn a_switch_fault_reaches_every_layer_above_its_ports() {
        let mut m = three_layers();
        say(&mut m, "switch:A", "agent", "unhealthy");
        assert_eq!(effective(&m, "ip:a-c"), vec![s("degraded", 1)]);
        say(&mut m, "port:a-c", "netlink", "link-down");
        assert_eq!(
            effective(&m, "ip:a-c"),
            vec![s("down", 3)],
            "the more severe wins"
        );
        say(&mut m, "port:a-c", "netlink", "link-up");
        assert_eq!(
            effective(&m, "ip:a-c"),
            vec![s("degraded", 1)],
            "back to the switch's fault"
        );
    }

    #[test]
    fn propagation_stops_where_an_effective_state_does_not_change() {
        let mut m = three_layers();
        say(&mut m, "lan:a-c", "test", "critical");
        let before = m.recomputations();
        let applied = say(&mut m, "port:a-c", "test", "minor");
        assert_eq!(changed(&applied.changes), vec!["port:a-c"]);
        assert_eq!(m.recomputations() - before, 2, "port and lan, not ip");
    }

    /// A <- B, A <- C, B <- D, C <- D, and D also directly on A, with the
    /// dependencies added top-down so ranks have to be raised.
    fn diamond() -> Model {
        let mut m = Model::new();
        m.add_object(id("A"), Layer::Physical, "switch").unwrap();
        m.add_object(id("B"), Layer::L2, "bond").unwrap();
        m.add_object(id("C"), Layer::L2, "bond").unwrap();
        m.add_object(id("D"), Layer::L3, "ip-interface").unwrap();
        m.add_dependency(&id("D"), &id("B"), Dependency::MapsTo)
            .unwrap();
        m.add_dependency(&id("D"), &id("C"), Dependency::MapsTo)
            .unwrap();
        m.add_dependency(&id("D"), &id("A"), Dependency::MapsTo)
            .unwrap();
        m.add_dependency(&id("B"), &id("A"), Dependency::MapsTo)
            .unwrap();
        m.add_dependency(&id("C"), &id("A"), Dependency::MapsTo)
            .unwrap();
        m
    }

    #[test]
    fn diamond_dependencies_recompute_each_object_once_after_all_its_dependencies() {
        let mut m = diamond();
        let before = m.recomputations();
        let applied = say(&mut m, "A", "test", "critical");
        assert_eq!(changed(&applied.changes), vec!["A", "B", "C", "D"]);
        assert_eq!(m.recomputations() - before, 4, "each object once");
        let v = m.view(&id("D")).unwrap();
        assert_eq!(v.logical.len(), 3, "from A, B and C");
        assert_eq!(names(&v.effective), vec![s("critical", 3)]);
        assert_eq!(
            v.state_history.len(),
            1,
            "one change, no intermediate states"
        );
        let mut sources: Vec<&str> = v.effective[0].source.split(',').collect();
        sources.sort_unstable();
        assert_eq!(sources, vec!["A", "B", "C"]);

        let applied = say(&mut m, "A", "test", "clear");
        assert_eq!(changed(&applied.changes), vec!["A", "B", "C", "D"]);
        assert_eq!(effective(&m, "D"), vec![s("normal", 0)]);
    }

    #[test]
    fn diamond_with_one_side_worse_gives_the_worse_state_to_the_top() {
        let mut m = diamond();
        say(&mut m, "B", "test", "critical");
        say(&mut m, "A", "test", "minor");
        assert_eq!(effective(&m, "C"), vec![s("minor", 1)]);
        assert_eq!(effective(&m, "D"), vec![s("critical", 3)]);
        say(&mut m, "B", "test", "clear");
        assert_eq!(effective(&m, "D"), vec![s("minor", 1)]);
        say(&mut m, "A", "test", "clear");
        assert_eq!(effective(&m, "D"), vec![s("normal", 0)]);
    }

    #[test]
    fn adding_a_dependency_on_a_faulty_object_infers_its_fault_at_once() {
        let mut m = Model::new();
        m.add_object(id("port:1"), Layer::Physical, "port").unwrap();
        m.add_object(id("lan:1"), Layer::L2, "lan-port").unwrap();
        m.add_object(id("ip:1"), Layer::L3, "ip-interface").unwrap();
        m.add_dependency(&id("ip:1"), &id("lan:1"), Dependency::MapsTo)
            .unwrap();
        say(&mut m, "port:1", "netlink", "link-down");
        let changes = m
            .add_dependency_changes(&id("lan:1"), &id("port:1"), Dependency::MapsTo)
            .unwrap();
        assert_eq!(changed(&changes), vec!["ip:1", "lan:1"]);
        assert_eq!(effective(&m, "ip:1"), vec![s("down", 3)]);
    }

    // --- lost contact (SPEC 5.3) ---

    #[test]
    fn lost_contact_is_shown_but_never_propagates_to_dependents() {
        let mut m = three_layers();
        let applied = say(&mut m, "switch:A", "peer", "liveness-lost");
        assert_eq!(changed(&applied.changes), vec!["switch:A"]);
        let v = m.view(&id("switch:A")).unwrap();
        assert_eq!(v.fault_level, 0);
        assert_eq!(v.effective.len(), 1);
        assert!(v.effective[0].lost_contact);
        assert_eq!(v.effective[0].name, "lost-contact");
        for object in ["port:a-c", "lan:a-c", "ip:a-c"] {
            assert!(logical(&m, object).is_empty(), "{object}");
            assert_eq!(effective(&m, object), vec![s("normal", 0)], "{object}");
        }
        let applied = say(&mut m, "switch:A", "peer", "session-up");
        assert_eq!(changed(&applied.changes), vec!["switch:A"]);
        assert_eq!(effective(&m, "switch:A"), vec![s("normal", 0)]);
    }

    #[test]
    fn an_object_in_lost_contact_still_receives_logical_states() {
        let mut m = three_layers();
        say(&mut m, "port:a-c", "peer", "liveness-lost");
        say(&mut m, "switch:A", "agent", "unhealthy");
        let v = m.view(&id("port:a-c")).unwrap();
        assert!(v.actual[0].lost_contact);
        assert_eq!(names(&v.logical), vec![s("degraded", 1)]);
        assert_eq!(names(&v.effective), vec![s("degraded", 1)]);
        assert_eq!(
            effective(&m, "ip:a-c"),
            vec![s("degraded", 1)],
            "a real fault propagates through it"
        );
        say(&mut m, "switch:A", "agent", "healthy");
        let v = m.view(&id("port:a-c")).unwrap();
        assert!(v.effective[0].lost_contact, "lost contact is visible again");
        assert_eq!(effective(&m, "lan:a-c"), vec![s("normal", 0)]);
    }

    // --- redundancy groups ---

    /// A parent's condition in a redundancy test.
    #[derive(Clone, Copy, Debug)]
    enum P {
        Up,
        Down,
        Lost,
        Minor,
    }

    /// `svc` (service) depends on `p0`..`pN` (physical) in its group.
    fn group(policy: Redundancy, parents: usize, degraded_level: u8) -> Model {
        let mut m = Model::new();
        m.add_object(id("svc"), Layer::Service, "service").unwrap();
        m.set_redundancy(&id("svc"), policy, degraded_level)
            .unwrap();
        for i in 0..parents {
            let p = format!("p{i}");
            m.add_object(id(&p), Layer::Physical, "port").unwrap();
            if policy == Redundancy::All {
                m.add_dependency(&id("svc"), &id(&p), Dependency::MapsTo)
                    .unwrap();
            } else {
                m.add_group_dependency(&id("svc"), &id(&p), Dependency::MapsTo)
                    .unwrap();
            }
        }
        m
    }

    fn set(m: &mut Model, parent: usize, p: P) {
        let o = format!("p{parent}");
        for (source, message) in [("test", "clear"), ("peer", "liveness-ok")] {
            say(m, &o, source, message);
        }
        match p {
            P::Up => {}
            P::Down => drop(say(m, &o, "test", "critical")),
            P::Lost => drop(say(m, &o, "peer", "liveness-lost")),
            P::Minor => drop(say(m, &o, "test", "minor")),
        }
    }

    /// The child's effective state as `name(level)` names, sorted.
    fn child(m: &Model) -> Vec<String> {
        let mut v: Vec<String> = m
            .view(&id("svc"))
            .unwrap()
            .effective
            .iter()
            .map(|s| format!("{}({})", s.name, s.level))
            .collect();
        v.sort();
        v
    }

    fn check(policy: Redundancy, degraded_level: u8, cases: &[(&[P], &str)]) {
        for (parents, expected) in cases {
            let mut m = group(policy, parents.len(), degraded_level);
            for (i, &p) in parents.iter().enumerate() {
                set(&mut m, i, p);
            }
            assert_eq!(
                child(&m).join(","),
                *expected,
                "{policy} with parents {parents:?}"
            );
            // Clearing every parent restores the child.
            for i in 0..parents.len() {
                set(&mut m, i, P::Up);
            }
            assert_eq!(
                child(&m),
                vec!["normal(0)"],
                "{policy} with parents {parents:?}, cleared"
            );
        }
    }

    #[test]
    fn all_passes_any_parents_fault_on_and_never_lost_contact() {
        use P::*;
        check(
            Redundancy::All,
            1,
            &[
                (&[Up, Up], "normal(0)"),
                (&[Down, Up], "critical(3)"),
                (&[Up, Down], "critical(3)"),
                (&[Down, Down], "critical(3)"),
                (&[Lost, Up], "normal(0)"),
                (&[Lost, Lost], "normal(0)"),
                (&[Lost, Down], "critical(3)"),
                (&[Minor, Down], "critical(3)"),
            ],
        );
    }

    #[test]
    fn redundant_is_down_only_when_no_parent_is_up_and_degraded_in_between() {
        use P::*;
        check(
            Redundancy::Redundant,
            1,
            &[
                (&[Up, Up], "normal(0)"),
                (&[Down, Up], "degraded(1)"),
                (&[Up, Down], "degraded(1)"),
                (&[Down, Down], "critical(3)"),
                // Lost contact is not counted as up.
                (&[Lost, Up], "degraded(1)"),
                (&[Lost, Down], "critical(3)"),
                (&[Lost, Lost], "lost-contact(0)"),
                // The best parent decides: one leg down, the other only minor.
                (&[Minor, Down], "minor(1)"),
                (&[Minor, Up], "degraded(1)"),
                (&[Down, Down, Up], "degraded(1)"),
                (&[Down, Down, Lost], "critical(3)"),
            ],
        );
    }

    #[test]
    fn at_least_is_down_only_when_fewer_than_n_parents_are_up() {
        use P::*;
        check(
            Redundancy::AtLeast(2),
            1,
            &[
                (&[Up, Up, Up], "normal(0)"),
                (&[Down, Up, Up], "degraded(1)"),
                (&[Lost, Up, Up], "degraded(1)"),
                (&[Down, Down, Up], "critical(3)"),
                (&[Lost, Down, Up], "critical(3)"),
                (&[Lost, Lost, Up], "lost-contact(0)"),
                (&[Lost, Lost, Lost], "lost-contact(0)"),
                (&[Down, Down, Down], "critical(3)"),
                // The second best parent decides.
                (&[Minor, Down, Up], "minor(1)"),
                (&[Minor, Minor, Up], "minor(1)"),
                (&[Minor, Up, Up], "degraded(1)"),
            ],
        );
        // N above the group's size counts as the group's size (all needed).
        check(
            Redundancy::AtLeast(5),
            1,
            &[
                (&[Up, Up], "normal(0)"),
                (&[Down, Up], "critical(3)"),
                (&[Lost, Up], "lost-contact(0)"),
            ],
        );
    }

    #[test]
    fn the_degraded_level_is_configurable_and_never_hides_a_worse_fault() {
        use P::*;
        check(
            Redundancy::Redundant,
            2,
            &[
                (&[Down, Up], "degraded(2)"),
                (&[Lost, Up], "degraded(2)"),
                (&[Minor, Down], "degraded(2)"),
                (&[Down, Down], "critical(3)"),
            ],
        );
        let mut m = Model::new();
        m.add_object(id("svc"), Layer::Service, "service").unwrap();
        for (policy, level, reason) in [
            (Redundancy::Redundant, 0, "level 0 is not a fault"),
            (Redundancy::AtLeast(0), 1, "at_least must be 1 or more"),
        ] {
            let err = m.set_redundancy(&id("svc"), policy, level).unwrap_err();
            assert!(
                err.to_string().contains("svc") && err.to_string().contains(reason),
                "{err}"
            );
        }
    }

    #[test]
    fn a_group_names_the_parents_behind_its_state_and_reports_itself() {
        let mut m = group(Redundancy::Redundant, 2, 1);
        let applied = say(&mut m, "p1", "netlink", "link-down");
        assert_eq!(changed(&applied.changes), vec!["p1", "svc"]);
        let v = m.view(&id("svc")).unwrap();
        assert_eq!(names(&v.effective), vec![s("degraded", 1)]);
        assert_eq!(v.effective[0].source, "p1");
        assert_eq!(
            logical(&m, "svc"),
            vec![("degraded".into(), 1, "p1".into())]
        );
        let g = v.group.unwrap();
        assert_eq!(g.redundancy, Redundancy::Redundant);
        assert_eq!(g.members, vec![id("p0"), id("p1")]);
        assert_eq!((g.up, g.degraded_level), (1, 1));
        assert!(m.view(&id("p0")).unwrap().group.is_none());
        let json = serde_json::to_value(m.view(&id("svc")).unwrap()).unwrap();
        assert_eq!(json["group"]["redundancy"], "redundant");
        assert!(
            serde_json::to_value(m.view(&id("p0")).unwrap())
                .unwrap()
                .get("group")
                .is_none()
        );
        // Both down: down, from both parents.
        say(&mut m, "p0", "netlink", "link-down");
        let v = m.view(&id("svc")).unwrap();
        assert_eq!(names(&v.effective), vec![s("down", 3)]);
        assert_eq!(v.effective[0].source, "p0,p1");
        // One back: degraded again, from the other.
        let applied = say(&mut m, "p1", "netlink", "link-up");
        assert_eq!(changed(&applied.changes), vec!["p1", "svc"]);
        assert_eq!(effective(&m, "svc"), vec![s("degraded", 1)]);
        assert_eq!(m.view(&id("svc")).unwrap().effective[0].source, "p0");
    }

    #[test]
    fn a_redundancy_group_costs_an_object_no_memory() {
        // 130 bytes of fields before groups, padded to 136: the group's
        // policy and degraded state fill the padding.
        assert_eq!(std::mem::size_of::<Object>(), 136);
    }

    #[test]
    fn dependencies_outside_the_group_still_pass_every_fault_on() {
        let mut m = group(Redundancy::Redundant, 2, 1);
        m.add_object(id("sw"), Layer::Physical, "switch").unwrap();
        m.add_dependency(&id("svc"), &id("sw"), Dependency::MapsTo)
            .unwrap();
        say(&mut m, "sw", "agent", "unhealthy");
        assert_eq!(effective(&m, "svc"), vec![s("degraded", 1)]);
        assert_eq!(m.view(&id("svc")).unwrap().effective[0].source, "sw");
        say(&mut m, "p0", "netlink", "link-down");
        say(&mut m, "sw", "agent", "healthy");
        assert_eq!(m.view(&id("svc")).unwrap().effective[0].source, "p0");
        say(&mut m, "sw", "netlink", "link-down");
        assert_eq!(
            effective(&m, "svc"),
            vec![s("down", 3)],
            "required and down"
        );
        assert_eq!(m.group_of(&id("svc")), vec![id("p0"), id("p1")]);
        assert_eq!(
            m.redundancy_of(&id("svc")),
            Some((Redundancy::Redundant, 1))
        );
    }

    #[test]
    fn a_degraded_redundant_parent_is_not_up_for_a_redundant_child() {
        // Two MLAG interfaces, each redundant over two twins, and a service
        // redundant over the two MLAG interfaces.
        let mut m = Model::new();
        m.add_object(id("svc"), Layer::Service, "service").unwrap();
        m.set_redundancy(&id("svc"), Redundancy::Redundant, 1)
            .unwrap();
        for g in ["a", "b"] {
            let mlag = format!("mlag:{g}");
            m.add_object(id(&mlag), Layer::L2, "mlag-interface")
                .unwrap();
            m.set_redundancy(&id(&mlag), Redundancy::Redundant, 1)
                .unwrap();
            for t in ["1", "2"] {
                let port = format!("port:{g}{t}");
                m.add_object(id(&port), Layer::Physical, "port").unwrap();
                m.add_group_dependency(&id(&mlag), &id(&port), Dependency::MapsTo)
                    .unwrap();
            }
            m.add_group_dependency(&id("svc"), &id(&mlag), Dependency::MapsTo)
                .unwrap();
        }
        say(&mut m, "port:a1", "netlink", "link-down");
        assert_eq!(effective(&m, "mlag:a"), vec![s("degraded", 1)]);
        assert_eq!(effective(&m, "svc"), vec![s("degraded", 1)]);
        say(&mut m, "port:a2", "netlink", "link-down");
        assert_eq!(effective(&m, "mlag:a"), vec![s("down", 3)]);
        assert_eq!(
            effective(&m, "svc"),
            vec![s("degraded", 1)],
            "mlag:b carries it"
        );
        say(&mut m, "port:b1", "netlink", "link-down");
        assert_eq!(
            effective(&m, "svc"),
            vec![s("degraded", 1)],
            "the best leg is degraded, not down"
        );
        say(&mut m, "port:b2", "netlink", "link-down");
        assert_eq!(effective(&m, "svc"), vec![s("down", 3)]);
        for p in ["port:a1", "port:a2", "port:b1", "port:b2"] {
            say(&mut m, p, "netlink", "link-up");
        }
        assert_eq!(effective(&m, "svc"), vec![s("normal", 0)]);
    }

    #[test]
    fn moving_a_faulty_dependency_into_the_group_or_setting_the_policy_recomputes() {
        let mut m = Model::new();
        m.add_object(id("svc"), Layer::Service, "service").unwrap();
        for p in ["p0", "p1"] {
            m.add_object(id(p), Layer::Physical, "port").unwrap();
            m.add_dependency(&id("svc"), &id(p), Dependency::MapsTo)
                .unwrap();
        }
        say(&mut m, "p0", "netlink", "link-down");
        assert_eq!(effective(&m, "svc"), vec![s("down", 3)]);
        let changes = m
            .set_redundancy(&id("svc"), Redundancy::Redundant, 1)
            .unwrap();
        assert!(changes.is_empty(), "no dependency in the group yet");
        for p in ["p0", "p1"] {
            m.add_group_dependency(&id("svc"), &id(p), Dependency::MapsTo)
                .unwrap();
        }
        assert_eq!(effective(&m, "svc"), vec![s("degraded", 1)]);
        let changes = m.set_redundancy(&id("svc"), Redundancy::All, 1).unwrap();
        assert_eq!(changed(&changes), vec!["svc"]);
        assert_eq!(effective(&m, "svc"), vec![s("down", 3)]);
        assert!(m.view(&id("svc")).unwrap().group.is_none());
    }

    // --- structure ---

    #[test]
    fn a_self_dependency_is_a_cycle() {
        let mut m = Model::new();
        m.add_object(id("svc:a"), Layer::Service, "service")
            .unwrap();
        let err = m
            .add_dependency(&id("svc:a"), &id("svc:a"), Dependency::BelongsTo)
            .unwrap_err();
        let ModelError::Cycle { path } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, &vec![id("svc:a"), id("svc:a")]);
        assert_eq!(
            err.to_string(),
            "dependency would close a cycle: svc:a -> svc:a"
        );
    }

    #[test]
    fn a_two_cycle_is_rejected_naming_the_path() {
        let mut m = Model::new();
        m.add_object(id("svc:a"), Layer::Service, "service")
            .unwrap();
        m.add_object(id("svc:b"), Layer::Service, "service")
            .unwrap();
        m.add_dependency(&id("svc:a"), &id("svc:b"), Dependency::BelongsTo)
            .unwrap();
        let err = m
            .add_dependency(&id("svc:b"), &id("svc:a"), Dependency::BelongsTo)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "dependency would close a cycle: svc:b -> svc:a -> svc:b"
        );
    }

    #[test]
    fn a_three_cycle_is_rejected_naming_the_path_and_leaves_the_model_unchanged() {
        let mut m = Model::new();
        for o in ["a", "b", "c", "z"] {
            m.add_object(id(o), Layer::L2, "vlan").unwrap();
        }
        m.add_dependency(&id("a"), &id("b"), Dependency::BelongsTo)
            .unwrap();
        m.add_dependency(&id("b"), &id("z"), Dependency::BelongsTo)
            .unwrap();
        m.add_dependency(&id("b"), &id("c"), Dependency::BelongsTo)
            .unwrap();
        let err = m
            .add_dependency(&id("c"), &id("a"), Dependency::BelongsTo)
            .unwrap_err();
        let ModelError::Cycle { path } = &err else {
            panic!("{err}")
        };
        assert_eq!(path, &vec![id("c"), id("a"), id("b"), id("c")]);
        assert_eq!(
            err.to_string(),
            "dependency would close a cycle: c -> a -> b -> c"
        );
        assert!(m.dependencies_of(&id("c")).is_empty());
        assert!(m.dependents_of(&id("a")).is_empty());
        // A dependency that only looks like one is fine.
        m.add_dependency(&id("z"), &id("c"), Dependency::BelongsTo)
            .unwrap();
        say(&mut m, "c", "test", "major");
        assert_eq!(effective(&m, "a"), vec![s("major", 2)]);
    }

    #[test]
    fn belongs_to_across_layers_and_maps_to_not_going_up_are_rejected() {
        let mut m = three_layers();
        let err = m
            .add_dependency(&id("lan:a-c"), &id("switch:A"), Dependency::BelongsTo)
            .unwrap_err();
        assert!(matches!(err, ModelError::LayerRule { .. }));
        assert!(err.to_string().contains("same layer"), "{err}");
        let err = m
            .add_dependency(&id("port:a-c"), &id("lan:a-c"), Dependency::MapsTo)
            .unwrap_err();
        assert!(err.to_string().contains("lower layer"), "{err}");
        let err = m
            .add_dependency(&id("port:a-c"), &id("switch:A"), Dependency::MapsTo)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::LayerRule {
                    kind: Dependency::MapsTo,
                    ..
                }
            ),
            "same layer: {err}"
        );
        m.add_object(id("svc:web"), Layer::Service, "service")
            .unwrap();
        m.add_dependency(&id("svc:web"), &id("port:a-c"), Dependency::MapsTo)
            .unwrap();
    }

    #[test]
    fn adding_an_existing_dependency_again_only_updates_its_kind() {
        let mut m = Model::new();
        m.add_object(id("gw:1"), Layer::L3, "gateway").unwrap();
        m.add_object(id("ip:1"), Layer::L3, "ip-interface").unwrap();
        m.add_dependency(&id("gw:1"), &id("ip:1"), Dependency::BelongsTo)
            .unwrap();
        m.add_dependency(&id("gw:1"), &id("ip:1"), Dependency::BelongsTo)
            .unwrap();
        assert_eq!(
            m.dependencies_of(&id("gw:1")),
            vec![(id("ip:1"), Dependency::BelongsTo)]
        );
        assert_eq!(
            m.dependents_of(&id("ip:1")),
            vec![(id("gw:1"), Dependency::BelongsTo)]
        );
    }

    #[test]
    fn duplicate_objects_and_unknown_ids_are_errors() {
        let mut m = three_layers();
        assert!(matches!(
            m.add_object(id("port:a-c"), Layer::Physical, "port"),
            Err(ModelError::Duplicate(_))
        ));
        assert!(matches!(
            m.add_dependency(&id("ip:x"), &id("lan:a-c"), Dependency::MapsTo),
            Err(ModelError::UnknownObject(o)) if o.as_str() == "ip:x"
        ));
        assert!(matches!(
            m.remove_object(&id("nope")),
            Err(ModelError::UnknownObject(_))
        ));
        assert!(m.view(&id("nope")).is_none());
        assert!(m.dependencies_of(&id("nope")).is_empty());
    }

    #[test]
    fn dependency_chains_can_be_walked_both_ways() {
        let m = three_layers();
        assert_eq!(
            m.dependencies_of(&id("lan:a-c")),
            vec![(id("port:a-c"), Dependency::MapsTo)]
        );
        assert_eq!(
            m.dependents_of(&id("port:a-c")),
            vec![(id("lan:a-c"), Dependency::MapsTo)]
        );
        assert_eq!(
            m.dependencies_of(&id("port:a-c")),
            vec![(id("switch:A"), Dependency::BelongsTo)]
        );
        assert_eq!(m.dependents_of(&id("ip:a-c")), vec![]);
    }

    #[test]
    fn removing_a_dependency_recomputes_the_dependents() {
        let mut m = three_layers();
        say(&mut m, "port:a-c", "netlink", "link-down");
        let changes = m
            .remove_dependency(&id("lan:a-c"), &id("port:a-c"))
            .unwrap();
        assert_eq!(changed(&changes), vec!["ip:a-c", "lan:a-c"]);
        assert_eq!(effective(&m, "ip:a-c"), vec![s("normal", 0)]);
        assert_eq!(effective(&m, "port:a-c"), vec![s("down", 3)]);
        assert!(
            m.remove_dependency(&id("lan:a-c"), &id("port:a-c"))
                .unwrap()
                .is_empty(),
            "idempotent"
        );
    }

    #[test]
    fn removing_an_object_recomputes_its_dependents_and_frees_its_id() {
        let mut m = three_layers();
        say(&mut m, "port:a-c", "netlink", "link-down");
        let changes = m.remove_object(&id("port:a-c")).unwrap();
        assert_eq!(changed(&changes), vec!["ip:a-c", "lan:a-c"]);
        assert!(!m.contains(&id("port:a-c")));
        assert_eq!(m.len(), 3);
        assert!(m.dependencies_of(&id("lan:a-c")).is_empty());
        assert!(m.dependents_of(&id("switch:A")).is_empty());
        assert_eq!(m.views().count(), 3);
        // The id (and its slot) can be used again, starting normal.
        m.add_object(id("port:a-c"), Layer::Physical, "port")
            .unwrap();
        assert_eq!(effective(&m, "port:a-c"), vec![s("normal", 0)]);
        assert!(m.view(&id("port:a-c")).unwrap().info_history.is_empty());
        m.add_dependency(&id("lan:a-c"), &id("port:a-c"), Dependency::MapsTo)
            .unwrap();
        say(&mut m, "port:a-c", "fabric", "port-down");
        assert_eq!(effective(&m, "ip:a-c"), vec![s("down", 3)]);
    }

    // --- records (SPEC 5.6) ---

    #[test]
    fn histories_record_changes_and_information_within_their_bounds() {
        let mut m = Model::with_history_limit(3, 2);
        m.add_object(id("p"), Layer::Physical, "port").unwrap();
        for (t, message) in [
            (1, "link-down"),
            (2, "link-up"),
            (3, "link-down"),
            (4, "link-up"),
            (5, "link-down"),
        ] {
            m.apply(Info::new("netlink", message, "p"), &rules(), t)
                .unwrap();
        }
        m.apply(Info::new("netlink", "bogus", "p"), &rules(), 6)
            .unwrap();
        let v = m.view(&id("p")).unwrap();
        let states: Vec<(u64, String)> = v
            .state_history
            .iter()
            .map(|h| (h.at_ms, h.effective[0].name.clone()))
            .collect();
        assert_eq!(
            states,
            vec![(3, "down".into()), (4, "normal".into()), (5, "down".into())],
            "newest last"
        );
        let infos: Vec<(u64, &str, bool)> = v
            .info_history
            .iter()
            .map(|i| (i.at_ms, i.message.as_str(), i.known))
            .collect();
        assert_eq!(infos, vec![(5, "link-down", true), (6, "bogus", false)]);
        assert_eq!(v.since_ms, 5);
        assert_eq!(v.state_history[2].effective[0].source, "netlink");
    }

    #[test]
    fn a_zero_history_limit_keeps_no_records() {
        let mut m = Model::with_history_limit(0, 0);
        m.add_object(id("p"), Layer::Physical, "port").unwrap();
        m.apply(Info::new("netlink", "link-down", "p"), &rules(), 1)
            .unwrap();
        let v = m.view(&id("p")).unwrap();
        assert!(v.state_history.is_empty() && v.info_history.is_empty());
        assert_eq!(v.fault_level, 3);
    }

    #[test]
    fn views_serialise_with_lowercase_layers_and_kebab_case_dependencies() {
        let mut m = three_layers();
        say(&mut m, "port:a-c", "netlink", "link-down");
        let v = serde_json::to_value(m.view(&id("lan:a-c")).unwrap()).unwrap();
        assert_eq!(v["layer"], "l2");
        assert_eq!(v["kind"], "lan-port");
        assert_eq!(v["logical"][0]["source"], "port:a-c");
        assert_eq!(v["effective"][0]["name"], "down");
        assert_eq!(v["fault_level"], 3);
        assert_eq!(serde_json::to_value(Dependency::MapsTo).unwrap(), "maps-to");
        assert_eq!(
            serde_json::from_str::<Layer>("\"service\"").unwrap(),
            Layer::Service
        );
        let back: ObjectView = serde_json::from_value(v).unwrap();
        assert_eq!(back.id, id("lan:a-c"));
        assert_eq!(
            m.views().map(|v| v.id.0).collect::<Vec<_>>(),
            vec!["switch:A", "port:a-c", "lan:a-c", "ip:a-c"]
        );
    }
}
