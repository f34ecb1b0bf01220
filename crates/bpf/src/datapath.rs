//! Loading, configuring and attaching the programs; handing out their maps.
//!
//! Contract: [`Datapath::load`] gets the programs through the verifier and the maps created, but
//! attaches nothing; its maps and links belong to this process and go with it (tests, tables).
//! [`Datapath::load_pinned`] does the same with the maps that carry connections ([`PINNED_MAPS`])
//! pinned in a pin directory (`crate::pins`), reused when they are already there and of this
//! build's layout, refused loudly otherwise. [`Datapath::attach_pinned`] then attaches ingress
//! and egress to the interface with TCX links pinned beside them, or, when the links are already
//! pinned (a previous agent's), replaces their programs atomically (`bpf_link_update`): the
//! interface is never without a program, and the datapath outlives the process. Removing the
//! pins ends it ([`crate::pins::remove_dir`]); a link pin whose interface is gone is replaced. The maps are taken out by their single owners
//! (`take_*`): the agent's engine owns the conn table, the watch and responses tables and the
//! configuration, its event loop the ring, its metrics the counters.

use std::path::Path;

use aya::maps::{Array, HashMap, MapData, MapError, MapInfo, MapType, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType, TracePoint};
use aya::{Ebpf, EbpfLoader};

use crate::{
    AGENT_MAP, CONFIG_MAP, CONNS_MAP, Conn, ConnKey, DROPS_MAP, DropReason, EGRESS_PROGRAM,
    EVENTS_MAP, INGRESS_PROGRAM, NodeConfig, OBJECT, REFUSED_OFFERS_MAP, RESPONSES_MAP, Responses,
    STATS_MAP, Stat, TCP_STATE_PROGRAM, WATCH_MAP, Watch,
};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object (bpf(BPF_MAP_CREATE/BTF_LOAD)): {0}")]
    Object(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("program {0} missing from the object or not a TC classifier")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the object, already taken, or of the wrong layout")]
    MissingMap(&'static str),
    #[error("map {name} (bpf(BPF_MAP_*)): {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("map {name} (mmap): {source}")]
    Mmap {
        name: &'static str,
        source: std::io::Error,
    },
    #[error(
        "pinned map {path} has another layout ({found}; this build wants {want}): it was left by \
         another build of baton; stop that one or remove its pins (baton node cleanup)"
    )]
    PinnedLayout {
        path: String,
        found: String,
        want: String,
    },
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: String,
        source: std::io::Error,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: String,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning link {path}: {source}")]
    PinLink {
        path: String,
        source: aya::pin::PinError,
    },
}

/// The shape of a map, as the kernel reports it for a pinned one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapShape {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// The maps that outlive the agent, pinned by name in the pin directory, with the shape this
/// build gives them: the connections, the configuration the programs run by, the agent's word
/// (its heartbeat: a dead agent's programs must see it stop), the counters, and what follows
/// placed connections (the watch and responses tables: holds and freezes must outlive an agent,
/// and so must what the programs learnt of the responses). The event ring and the scratch maps
/// are each agent's own.
pub const PINNED_MAPS: [(&str, MapShape); 8] = [
    (
        CONNS_MAP,
        MapShape {
            map_type: MapType::Hash,
            key_size: size_of::<ConnKey>() as u32,
            value_size: size_of::<Conn>() as u32,
            max_entries: crate::sizes::CONNS_MAX,
        },
    ),
    (
        CONFIG_MAP,
        MapShape {
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<NodeConfig>() as u32,
            max_entries: 1,
        },
    ),
    (
        AGENT_MAP,
        MapShape {
            map_type: MapType::Array,
            key_size: 4,
            value_size: 16,
            max_entries: 1,
        },
    ),
    (
        STATS_MAP,
        MapShape {
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: Stat::COUNT,
        },
    ),
    (
        DROPS_MAP,
        MapShape {
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: DropReason::ALL.len() as u32 + 1,
        },
    ),
    (
        WATCH_MAP,
        MapShape {
            map_type: MapType::Hash,
            key_size: size_of::<ConnKey>() as u32,
            value_size: size_of::<Watch>() as u32,
            max_entries: crate::sizes::CONNS_MAX,
        },
    ),
    (
        RESPONSES_MAP,
        MapShape {
            map_type: MapType::Hash,
            key_size: size_of::<ConnKey>() as u32,
            value_size: size_of::<Responses>() as u32,
            max_entries: crate::sizes::CONNS_MAX,
        },
    ),
    (
        REFUSED_OFFERS_MAP,
        MapShape {
            map_type: MapType::LruHash,
            key_size: size_of::<crate::RefusedOfferKey>() as u32,
            value_size: size_of::<crate::RefusedOffer>() as u32,
            max_entries: crate::sizes::REFUSED_OFFERS_MAX,
        },
    ),
];

/// The shape of the map pinned at `path`, or `None` if nothing is pinned there.
pub fn pinned_shape(path: &Path) -> Result<Option<MapShape>, DatapathError> {
    if !path.exists() {
        return Ok(None);
    }
    let info = MapInfo::from_pin(path).map_err(|source| DatapathError::Map {
        name: "pinned",
        source,
    })?;
    Ok(Some(shape_of(&info)?))
}

pub fn shape_of(info: &MapInfo) -> Result<MapShape, DatapathError> {
    Ok(MapShape {
        map_type: info.map_type().map_err(|source| DatapathError::Map {
            name: "pinned",
            source,
        })?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

/// How [`Datapath::attach_pinned`] found the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// No links were pinned: new ones were attached and pinned.
    Fresh,
    /// Pinned links were there: their programs were replaced by ours, atomically.
    Adopted,
}

pub type ConnTable = HashMap<MapData, ConnKey, Conn>;
/// The agent writes it, the programs read it (`c/lib/follow.h`).
pub type WatchTable = HashMap<MapData, ConnKey, Watch>;
/// The programs write it once the agent created an entry; the agent reads and deletes
/// (`c/lib/response.h`).
pub type ResponsesTable = HashMap<MapData, ConnKey, Responses>;
pub type ConfigMap = Array<MapData, NodeConfig>;
/// The agent writes it, the programs read it (`c/lib/decide.h`).
pub type BoundedViewMap = Array<MapData, crate::BoundedView>;
/// The programs count in it, the agent reads it.
pub type BoundedCountsMap = Array<MapData, crate::BoundedCounts>;
pub type RefusedOffers = HashMap<MapData, crate::RefusedOfferKey, crate::RefusedOffer>;
pub type EventRing = RingBuf<MapData>;

/// The agent's word to the datapath (`struct agent_state` in the `agent` map), in the map's memory
/// mapped into this process: written without a syscall. Shared by the injector (the injecting
/// mark) and the engine (the heartbeat); every field is touched atomically.
///
/// - While `alive_until_ns` (CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`) is in the future,
///   the datapath holds new connections for the agent; after it, it fails open.
/// - `pid` names the agent that last beat, so a new agent can tell it to hand over.
/// - `injecting_pid`: events the datapath writes in this process's context while it is set do
///   not wake the ring's reader, so the caller must read the ring after the injection returns.
pub struct AgentMap {
    /// Keeps the map (and so the mapping's object) alive.
    _map: MapData,
    base: std::ptr::NonNull<u8>,
    len: usize,
    pid: u32,
}

// SAFETY: the mapping is shared memory owned by this value; its words are only touched atomically.
unsafe impl Send for AgentMap {}
// SAFETY: as for Send: shared use goes through atomic operations only.
unsafe impl Sync for AgentMap {}

/// What an `agent` map says of the agent that wrote it last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    pub pid: u32,
    pub alive_until_ns: u64,
}

impl AgentMap {
    fn new(map: MapData) -> std::io::Result<Self> {
        use std::os::fd::{AsFd, AsRawFd};
        // SAFETY: sysconf has no preconditions.
        let len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the map's one page of values (BPF_F_MMAPABLE), checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(ptr.cast()).ok_or(std::io::Error::other("mmap: null"))?;
        Ok(AgentMap {
            _map: map,
            base,
            len,
            pid: std::process::id(),
        })
    }

    /// The `agent` map pinned at `path` (another agent's, or a dead one's), to read its record.
    pub fn from_pin(path: &Path) -> Result<Self, DatapathError> {
        let map = MapData::from_pin(path).map_err(|source| DatapathError::Map {
            name: AGENT_MAP,
            source,
        })?;
        AgentMap::new(map).map_err(|source| DatapathError::Mmap {
            name: AGENT_MAP,
            source,
        })
    }

    fn u32_at(&self, offset: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: offsets 0 and 4 of the page-aligned mapping: aligned, inside it, alive as long
        // as self.
        unsafe { &*self.base.as_ptr().add(offset).cast() }
    }

    fn alive_word(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: offset 8 of the page-aligned mapping, as u32_at.
        unsafe { &*self.base.as_ptr().add(8).cast() }
    }

    /// Runs `inject` marked as injecting.
    pub fn around<T>(&self, inject: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering;
        let word = self.u32_at(0);
        word.store(self.pid, Ordering::SeqCst);
        let result = inject();
        word.store(0, Ordering::SeqCst);
        result
    }

    /// This agent is alive until `alive_until_ns`: the datapath holds connections for it.
    pub fn heartbeat(&self, alive_until_ns: u64) {
        use std::sync::atomic::Ordering;
        self.u32_at(4).store(self.pid, Ordering::SeqCst);
        self.alive_word().store(alive_until_ns, Ordering::SeqCst);
    }

    /// This agent holds nothing new from now on: the datapath fails open at once.
    pub fn stand_down(&self) {
        self.alive_word()
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// The agent that beat last, and until when it said it was alive.
    pub fn record(&self) -> AgentRecord {
        use std::sync::atomic::Ordering;
        AgentRecord {
            pid: self.u32_at(4).load(Ordering::SeqCst),
            alive_until_ns: self.alive_word().load(Ordering::SeqCst),
        }
    }
}

impl Drop for AgentMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new() mapped; nothing refers to it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The programs' counters, summed over CPUs on read.
pub struct Counters {
    stats: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
}

impl Counters {
    pub fn stat(&self, stat: Stat) -> Result<u64, MapError> {
        Ok(self.stats.get(&(stat as u32), 0)?.iter().sum())
    }
    pub fn dropped(&self, reason: DropReason) -> Result<u64, MapError> {
        Ok(self.drops.get(&(reason as u32), 0)?.iter().sum())
    }
}

pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the object and its programs into the kernel (runs the verifier; CO-RE relocations
    /// are resolved against the running kernel's BTF). Every map is this process's own.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_programs(Ebpf::load(OBJECT)?)
    }

    /// Loads as [`Datapath::load`], with the [`PINNED_MAPS`] pinned in `dir`: reused if they are
    /// there (after checking that their shape is this build's), created and pinned if not.
    pub fn load_pinned(dir: &Path) -> Result<Self, DatapathError> {
        std::fs::create_dir_all(dir).map_err(|source| DatapathError::PinDir {
            path: dir.display().to_string(),
            source,
        })?;
        let mut loader = EbpfLoader::new();
        for (name, want) in PINNED_MAPS {
            let path = dir.join(name);
            if let Some(found) = pinned_shape(&path)?
                && found != want
            {
                return Err(DatapathError::PinnedLayout {
                    path: path.display().to_string(),
                    found: found.to_string(),
                    want: want.to_string(),
                });
            }
            loader.map_pin_path(name, path);
        }
        Self::load_programs(loader.load(OBJECT)?)
    }

    fn load_programs(mut ebpf: Ebpf) -> Result<Self, DatapathError> {
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(DatapathError::MissingProgram(name))?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let load: &mut TracePoint = ebpf
            .program_mut(TCP_STATE_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::MissingProgram(TCP_STATE_PROGRAM))?;
        load.load().map_err(|source| DatapathError::Program {
            name: TCP_STATE_PROGRAM,
            source,
        })?;
        Ok(Datapath { ebpf })
    }

    pub fn program(&self, name: &'static str) -> Result<&SchedClassifier, DatapathError> {
        self.ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::MissingProgram(name))
    }

    fn program_mut(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::MissingProgram(name))
    }

    /// The node configuration the programs run by (a pinned one: what the previous agent wrote).
    pub fn node_config(&self) -> Result<NodeConfig, DatapathError> {
        let map = self
            .ebpf
            .map(CONFIG_MAP)
            .ok_or(DatapathError::MissingMap(CONFIG_MAP))?;
        let array: Array<&MapData, NodeConfig> =
            Array::try_from(map).map_err(|source| DatapathError::Map {
                name: CONFIG_MAP,
                source,
            })?;
        array.get(&0, 0).map_err(|source| DatapathError::Map {
            name: CONFIG_MAP,
            source,
        })
    }

    /// Writes this node's service address, ports and whether to distribute.
    pub fn set_node_config(&mut self, config: &NodeConfig) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(CONFIG_MAP)
            .ok_or(DatapathError::MissingMap(CONFIG_MAP))?;
        let mut array: Array<&mut MapData, NodeConfig> =
            Array::try_from(map).map_err(|source| DatapathError::Map {
                name: CONFIG_MAP,
                source,
            })?;
        array
            .set(0, config, 0)
            .map_err(|source| DatapathError::Map {
                name: CONFIG_MAP,
                source,
            })
    }

    /// Whether the ingress link pinned in `dir` is attached to `interface` now. A pin directory
    /// whose link is not (its interface was deleted, perhaps in a namespace that is gone and
    /// whose inode number a new one reuses) is stale: nothing in it belongs to this interface.
    pub fn pinned_link_is_attached(interface: &str, dir: &Path) -> Result<bool, DatapathError> {
        let path = dir.join(crate::pins::LINK_INGRESS);
        let link_error = |source| DatapathError::Link {
            path: path.display().to_string(),
            source,
        };
        let link = FdLink::from(PinnedLink::from_pin(&path).map_err(link_error)?);
        let program_id = link.info().map_err(link_error)?.program_id();
        let programs = Self::ingress_programs(interface)?;
        Ok(programs.iter().any(|p| p.id() == program_id))
    }

    /// Every program attached (TCX) to `interface`'s ingress.
    fn ingress_programs(interface: &str) -> Result<Vec<aya::programs::ProgramInfo>, DatapathError> {
        let (_, programs) =
            SchedClassifier::query_tcx(interface, TcAttachType::Ingress).map_err(|source| {
                DatapathError::Program {
                    name: INGRESS_PROGRAM,
                    source,
                }
            })?;
        Ok(programs)
    }

    /// The id of a baton ingress program already attached to `interface` (another agent's), if
    /// any. Another agent's programs beside ours would hold and rewrite the same packets twice.
    pub fn attached_elsewhere(interface: &str) -> Result<Option<u32>, DatapathError> {
        let programs = Self::ingress_programs(interface)?;
        Ok(programs
            .iter()
            .find(|p| p.name_as_str() == Some(INGRESS_PROGRAM))
            .map(|p| p.id()))
    }

    /// Attaches ingress and egress to `interface` through the TCX links pinned in `dir`: a pinned
    /// link gets our program in place of its own in one step; without one, a new link is
    /// attached and pinned. A pinned link whose interface is gone (the interface was deleted and
    /// made again) is replaced by a new one. The TCP state tracepoint's link is this process's own
    /// (the counters it feeds are pinned, a new agent re-anchors its count; closes while no agent
    /// runs are found by the next one's liveness checks).
    pub fn attach_pinned(
        &mut self,
        interface: &str,
        dir: &Path,
    ) -> Result<Attachment, DatapathError> {
        self.attach_tcp_state()?;
        let mut attachment = Attachment::Fresh;
        for (name, kind, pin) in [
            (
                INGRESS_PROGRAM,
                TcAttachType::Ingress,
                crate::pins::LINK_INGRESS,
            ),
            (
                EGRESS_PROGRAM,
                TcAttachType::Egress,
                crate::pins::LINK_EGRESS,
            ),
        ] {
            let path = dir.join(pin);
            let program = self.program_mut(name)?;
            if path.exists() {
                let link_error = |source| DatapathError::Link {
                    path: path.display().to_string(),
                    source,
                };
                let pinned = PinnedLink::from_pin(&path).map_err(link_error)?;
                let link =
                    SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(link_error)?;
                match program.attach_to_link(link) {
                    Ok(_) => {
                        attachment = Attachment::Adopted;
                        continue;
                    }
                    // The link's interface is gone: nothing runs through it any more.
                    Err(_) if Self::attached_elsewhere(interface)?.is_none() => {
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(source) => return Err(DatapathError::Program { name, source }),
                }
            }
            let id = program
                .attach_with_options(
                    interface,
                    kind,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|source| DatapathError::Program { name, source })?;
            let link = program
                .take_link(id)
                .map_err(|source| DatapathError::Program { name, source })?;
            let link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
                path: path.display().to_string(),
                source,
            })?;
            link.pin(&path).map_err(|source| DatapathError::PinLink {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(attachment)
    }

    /// Attaches ingress and egress to `interface` (TCX links) and the TCP state tracepoint; all
    /// are detached when `self` drops.
    pub fn attach(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.attach_tcp_state()?;
        for (name, kind) in [
            (INGRESS_PROGRAM, TcAttachType::Ingress),
            (EGRESS_PROGRAM, TcAttachType::Egress),
        ] {
            self.program_mut(name)?
                .attach(interface, kind)
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        Ok(())
    }

    /// Attaches the TCP state-change tracepoint: the load counter (`c/lib/load.h`) and the close
    /// of handed-in connections as their server's TCP lets go of them (`be_socket_closed`).
    pub fn attach_tcp_state(&mut self) -> Result<(), DatapathError> {
        let load: &mut TracePoint = self
            .ebpf
            .program_mut(TCP_STATE_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::MissingProgram(TCP_STATE_PROGRAM))?;
        load.attach("sock", "inet_sock_set_state")
            .map_err(|source| DatapathError::Program {
                name: TCP_STATE_PROGRAM,
                source,
            })?;
        Ok(())
    }

    /// Takes map `name` out of the object as a `T` (its single owner from then on).
    fn take<T>(&mut self, name: &'static str) -> Result<T, DatapathError>
    where
        T: TryFrom<aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap(name))?;
        T::try_from(map).map_err(|source| DatapathError::Map { name, source })
    }

    pub fn take_conns(&mut self) -> Result<ConnTable, DatapathError> {
        self.take(CONNS_MAP)
    }

    /// What the agent asks of the programs about placed connections (see [`Watch`]).
    pub fn take_watch(&mut self) -> Result<WatchTable, DatapathError> {
        self.take(WATCH_MAP)
    }

    /// Where each followed connection's responses stand (see [`Responses`]).
    pub fn take_responses(&mut self) -> Result<ResponsesTable, DatapathError> {
        self.take(RESPONSES_MAP)
    }

    /// The node configuration map, for an owner that rewrites it as the cluster changes.
    /// The refused offers' tombstones (the programs alone write them; tests clear them).
    pub fn take_refused_offers(&mut self) -> Result<RefusedOffers, DatapathError> {
        self.take(REFUSED_OFFERS_MAP)
    }

    pub fn take_config(&mut self) -> Result<ConfigMap, DatapathError> {
        self.take(CONFIG_MAP)
    }

    /// What bounded-load hashing decides by, and what the datapath decided by it (each agent's
    /// own: a new agent writes its view before it attaches).
    pub fn take_bounded(&mut self) -> Result<(BoundedViewMap, BoundedCountsMap), DatapathError> {
        Ok((
            self.take(crate::BOUNDED_MAP)?,
            self.take(crate::BOUNDED_COUNTS_MAP)?,
        ))
    }

    /// The agent's word to the datapath (see [`AgentMap`]).
    pub fn take_agent_map(&mut self) -> Result<AgentMap, DatapathError> {
        let map = self
            .ebpf
            .take_map(AGENT_MAP)
            .ok_or(DatapathError::MissingMap(AGENT_MAP))?;
        let data = match map {
            aya::maps::Map::Array(data) => data,
            _ => return Err(DatapathError::MissingMap(AGENT_MAP)),
        };
        AgentMap::new(data).map_err(|source| DatapathError::Mmap {
            name: AGENT_MAP,
            source,
        })
    }

    pub fn take_events(&mut self) -> Result<EventRing, DatapathError> {
        self.take(EVENTS_MAP)
    }

    /// The ring of quiet notices: nothing wakes its reader, who reads it before every input.
    pub fn take_quiet_events(&mut self) -> Result<EventRing, DatapathError> {
        self.take(crate::QUIET_EVENTS_MAP)
    }

    pub fn take_counters(&mut self) -> Result<Counters, DatapathError> {
        Ok(Counters {
            stats: self.take(STATS_MAP)?,
            drops: self.take(DROPS_MAP)?,
        })
    }
}
