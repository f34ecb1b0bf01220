//! Loading, configuring and attaching the programs; handing out their maps.
//!
//! Contract: [`Datapath::load`] gets both programs through the verifier and the maps created, but
//! attaches nothing. [`Datapath::attach`] attaches ingress and egress to one interface with TCX
//! links owned by this process: when the `Datapath` is dropped (clean stop or crash) the kernel
//! detaches them, leaving no qdisc, filter or pinned object behind. The maps are taken out by
//! their single owners (`take_*`): the agent's engine owns the conn table and the configuration,
//! its event loop the ring, its metrics the counters.

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, TracePoint};

use crate::{
    AGENT_INJECTING_MAP, CONFIG_MAP, CONNS_MAP, Conn, ConnKey, DROPS_MAP, DropReason,
    EGRESS_PROGRAM, EVENTS_MAP, INGRESS_PROGRAM, LOAD_PROGRAM, NodeConfig, OBJECT, STATS_MAP, Stat,
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
}

pub type ConnTable = HashMap<MapData, ConnKey, Conn>;
pub type ConfigMap = Array<MapData, NodeConfig>;
pub type EventRing = RingBuf<MapData>;

/// The agent's "I am injecting" mark (`agent_injecting`), in the map's memory mapped into this
/// process: set and cleared around each injection without a syscall. Events the datapath writes
/// meanwhile, in this process's context, do not wake the ring's reader: the caller must read the
/// ring after the injection returns.
pub struct InjectingMark {
    /// Keeps the map (and so the mapping's object) alive.
    _map: MapData,
    word: std::ptr::NonNull<std::sync::atomic::AtomicU32>,
    len: usize,
    pid: u32,
}

// SAFETY: the mapping is shared memory owned by this value; the word is only touched atomically.
unsafe impl Send for InjectingMark {}

impl InjectingMark {
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
        let word = std::ptr::NonNull::new(ptr.cast()).ok_or(std::io::Error::other("mmap: null"))?;
        Ok(InjectingMark {
            _map: map,
            word,
            len,
            pid: std::process::id(),
        })
    }

    /// Runs `inject` marked as injecting.
    pub fn around<T>(&self, inject: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering;
        // SAFETY: the mapping lives as long as self.
        let word = unsafe { self.word.as_ref() };
        word.store(self.pid, Ordering::SeqCst);
        let result = inject();
        word.store(0, Ordering::SeqCst);
        result
    }
}

impl Drop for InjectingMark {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new() mapped; nothing refers to it any more.
        unsafe { libc::munmap(self.word.as_ptr().cast(), self.len) };
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
    /// are resolved against the running kernel's BTF).
    pub fn load() -> Result<Self, DatapathError> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(DatapathError::MissingProgram(name))?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let load: &mut TracePoint = ebpf
            .program_mut(LOAD_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::MissingProgram(LOAD_PROGRAM))?;
        load.load().map_err(|source| DatapathError::Program {
            name: LOAD_PROGRAM,
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

    /// The id of a baton ingress program already attached to `interface` (another agent's), if
    /// any. Another agent's programs beside ours would hold and rewrite the same packets twice.
    pub fn attached_elsewhere(interface: &str) -> Result<Option<u32>, DatapathError> {
        let (_, programs) =
            SchedClassifier::query_tcx(interface, TcAttachType::Ingress).map_err(|source| {
                DatapathError::Program {
                    name: INGRESS_PROGRAM,
                    source,
                }
            })?;
        Ok(programs
            .iter()
            .find(|p| p.name_as_str() == Some(INGRESS_PROGRAM))
            .map(|p| p.id()))
    }

    /// Attaches ingress and egress to `interface` (TCX links) and the load counter to its
    /// tracepoint; all are detached when `self` drops.
    pub fn attach(&mut self, interface: &str) -> Result<(), DatapathError> {
        self.attach_load_counter()?;
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

    /// Attaches the load counter (`c/lib/load.h`) to the TCP state-change tracepoint.
    pub fn attach_load_counter(&mut self) -> Result<(), DatapathError> {
        let load: &mut TracePoint = self
            .ebpf
            .program_mut(LOAD_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(DatapathError::MissingProgram(LOAD_PROGRAM))?;
        load.attach("sock", "inet_sock_set_state")
            .map_err(|source| DatapathError::Program {
                name: LOAD_PROGRAM,
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

    /// The node configuration map, for an owner that rewrites it as the cluster changes.
    pub fn take_config(&mut self) -> Result<ConfigMap, DatapathError> {
        self.take(CONFIG_MAP)
    }

    /// The agent's injecting mark (see [`InjectingMark`]).
    pub fn take_injecting_mark(&mut self) -> Result<InjectingMark, DatapathError> {
        let map = self
            .ebpf
            .take_map(AGENT_INJECTING_MAP)
            .ok_or(DatapathError::MissingMap(AGENT_INJECTING_MAP))?;
        let data = match map {
            aya::maps::Map::Array(data) => data,
            _ => return Err(DatapathError::MissingMap(AGENT_INJECTING_MAP)),
        };
        InjectingMark::new(data).map_err(|source| DatapathError::Mmap {
            name: AGENT_INJECTING_MAP,
            source,
        })
    }

    pub fn take_events(&mut self) -> Result<EventRing, DatapathError> {
        self.take(EVENTS_MAP)
    }

    pub fn take_counters(&mut self) -> Result<Counters, DatapathError> {
        Ok(Counters {
            stats: self.take(STATS_MAP)?,
            drops: self.take(DROPS_MAP)?,
        })
    }
}
