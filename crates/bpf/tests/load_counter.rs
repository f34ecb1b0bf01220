//! The load counter (`c/lib/load.h`): connections of this namespace on the service address and
//! port are counted as they enter and leave ESTABLISHED, others are not; listeners on the service
//! port are counted as they open and close.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use baton_bpf::{Datapath, NodeConfig, Stat, current_netns_inum};

fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn service_connections_of_this_namespace_are_counted_in_and_out() {
    // A port to serve on: taken, freed, then listened on again once the counter runs.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut datapath = Datapath::load().expect("load the datapath (needs root and eBPF)");
    let mut config = NodeConfig::new(Ipv4Addr::LOCALHOST, &[port], true);
    config.netns_inum = current_netns_inum().unwrap();
    datapath.set_node_config(&config).unwrap();
    datapath.attach_tcp_state().unwrap();
    let counters = datapath.take_counters().unwrap();
    let count = |stat| counters.stat(stat).unwrap();
    assert_eq!(
        (count(Stat::ServingOpened), count(Stat::ServingClosed)),
        (0, 0)
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    wait_for(|| count(Stat::ListenOpened) == 1, "the listener counted");

    // Three connections to the service port: counted once each, at the serving end only.
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap())
        .collect();
    let served: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
    // Another port is not a service port.
    let _elsewhere = TcpStream::connect(other.local_addr().unwrap()).unwrap();
    wait_for(|| count(Stat::ServingOpened) == 3, "three opened");
    drop(clients);
    drop(served);
    assert_eq!(count(Stat::ListenClosed), 0, "accepting is not closing");
    wait_for(|| count(Stat::ServingClosed) == 3, "three closed");
    assert_eq!(
        count(Stat::ServingOpened),
        3,
        "the other port never counted"
    );
    assert_eq!(count(Stat::ListenOpened), 1, "nor its listener");

    // The listener closes.
    drop(listener);
    wait_for(
        || count(Stat::ListenClosed) == 1,
        "the listener's close counted",
    );

    // In another namespace the same address and port are another node's.
    config.netns_inum ^= 1;
    datapath.set_node_config(&config).unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    let _c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let _s = listener.accept().unwrap();
    drop(listener);
    std::thread::sleep(Duration::from_millis(50));
    let all = [
        Stat::ServingOpened,
        Stat::ServingClosed,
        Stat::ListenOpened,
        Stat::ListenClosed,
    ];
    assert_eq!(all.map(count), [3, 3, 1, 1]);
}
