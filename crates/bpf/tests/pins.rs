//! The pinned datapath: maps that outlive their loader are reused by the next one, and only when
//! their shape is this build's; the shapes this build expects are the object's own.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use baton_bpf::datapath::{PINNED_MAPS, pinned_shape};
use baton_bpf::{Conn, ConnKey, ConnState, Datapath, DatapathError, Responses, Watch, pins};

/// A pin directory of its own for one test, removed when dropped.
struct PinDir(PathBuf);

impl PinDir {
    fn new(name: &str) -> Self {
        pins::ensure_bpffs().expect("bpffs (needs root)");
        let dir = PathBuf::from(pins::ROOT).join(format!("test-{name}-{}", std::process::id()));
        let _ = pins::remove_dir(&dir);
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = pins::remove_dir(&self.0);
    }
}

#[test]
fn pinned_maps_have_the_shapes_of_the_object() {
    let dir = PinDir::new("shapes");
    let _datapath = Datapath::load_pinned(&dir.0).expect("load with pins");
    for (name, want) in PINNED_MAPS {
        let found = pinned_shape(&dir.0.join(name))
            .expect("read the pin")
            .unwrap_or_else(|| panic!("{name} is pinned"));
        assert_eq!(found, want, "{name}");
    }
}

#[test]
fn a_second_load_reuses_the_pinned_connections() {
    let dir = PinDir::new("reuse");
    let key = ConnKey::new(
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 254), 40000),
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 80),
    );
    let entry = Conn::new_be(Ipv4Addr::new(198, 18, 0, 1), 7, 1);
    {
        let mut first = Datapath::load_pinned(&dir.0).unwrap();
        let mut conns = first.take_conns().unwrap();
        conns.insert(key, entry, 0).unwrap();
        first
            .take_watch()
            .unwrap()
            .insert(key, Watch::heads(1000), 0)
            .unwrap();
        first
            .take_responses()
            .unwrap()
            .insert(key, Responses::new(2000), 0)
            .unwrap();
        let agent = first.take_agent_map().unwrap();
        agent.heartbeat(42);
    }
    // The first loader is gone; its maps are not.
    let mut second = Datapath::load_pinned(&dir.0).unwrap();
    let conns = second.take_conns().unwrap();
    let found = conns.get(&key, 0).expect("the entry outlived its loader");
    assert_eq!(found.state(), Some(ConnState::BeSynSent));
    let watch = second.take_watch().unwrap();
    assert_eq!(
        watch.get(&key, 0).unwrap(),
        Watch::heads(1000),
        "a watch outlives its agent"
    );
    let responses = second.take_responses().unwrap();
    assert_eq!(responses.get(&key, 0).unwrap(), Responses::new(2000));
    let record = second.take_agent_map().unwrap().record();
    assert_eq!(record.alive_until_ns, 42);
    assert_eq!(record.pid, std::process::id());
}

#[test]
fn a_pinned_map_of_another_shape_is_refused() {
    let dir = PinDir::new("shape");
    // Another build's conn table: the same name, another value size.
    {
        let loaded = Datapath::load_pinned(&dir.0).unwrap();
        drop(loaded);
        std::fs::remove_file(dir.0.join("conns")).unwrap();
        let stats = aya::maps::MapData::from_pin(dir.0.join("stats")).unwrap();
        stats.pin(dir.0.join("conns")).unwrap();
    }
    match Datapath::load_pinned(&dir.0) {
        Err(DatapathError::PinnedLayout { path, .. }) => assert!(path.ends_with("conns")),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a conn table of another shape was reused"),
    }
}
