//! A handed-in connection's close is reported by our TCP (`be_socket_closed` and
//! `be_after_socket` in `c/lib/be.h`): real sockets on the loopback of a namespace of the test's
//! own, the datapath on that loopback with a BE entry for their tuple (replayed, translation at
//! offset zero), closed every way a server and a client close. The notice says what is left on
//! the tuple, names the server's socket by its cookie and the connection by its handoff and FE,
//! comes once, and never before TCP lets go.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use baton_bpf::datapath::{ConnTable, EventRing};
use baton_bpf::{
    CloseCode, Conn, ConnKey, ConnRole, ConnState, Datapath, Event, EventKind, NodeConfig,
    conn_flags, current_netns_inum,
};

struct Node {
    datapath: Datapath,
    conns: ConnTable,
    events: EventRing,
    listener: TcpListener,
    /// The cookie of the last connection's server socket.
    cookie: u64,
    /// The last connection's handoff id (one per connection).
    handoff_id: u64,
}

impl Node {
    /// This thread's own namespace, a server listening on loopback, the datapath attached there.
    fn new() -> Node {
        baton_bpf::cases::own_network_namespace().expect("a network namespace of its own");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 80)).unwrap();
        let mut datapath = Datapath::load().expect("load the datapath (needs root and eBPF)");
        let mut config = NodeConfig::new(Ipv4Addr::LOCALHOST, &[80], true);
        config.netns_inum = current_netns_inum().unwrap();
        datapath.set_node_config(&config).unwrap();
        datapath.attach("lo").unwrap();
        Node {
            conns: datapath.take_conns().unwrap(),
            events: datapath.take_events().unwrap(),
            datapath,
            listener,
            cookie: 0,
            handoff_id: 0,
        }
    }

    /// A connection to the server with a BE entry (`flags` set) for its tuple, as if another node
    /// had handed it in, live (the server's first byte went through): (client, server, key).
    fn handed_in(&mut self, flags: u32) -> (TcpStream, TcpStream, ConnKey) {
        let client = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        let (server, _) = self.listener.accept().unwrap();
        let v4 = |a| match a {
            SocketAddr::V4(a) => a,
            other => panic!("not IPv4: {other}"),
        };
        let key = ConnKey::new(
            v4(client.local_addr().unwrap()),
            v4(server.local_addr().unwrap()),
        );
        self.handoff_id += 1;
        let entry = Conn {
            role: ConnRole::Be as u8,
            state: ConnState::BeReplayed as u8,
            flags,
            peer_addr: Ipv4Addr::LOCALHOST.octets(),
            handoff_id: self.handoff_id,
            live_deadline_ns: u64::MAX,
            ..Conn::default()
        };
        self.conns.insert(key, entry, 0).unwrap();
        (&server).write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        (&client).read_exact(&mut byte).unwrap();
        let live = self.conns.get(&key, 0).unwrap();
        assert_eq!(live.state(), Some(ConnState::BeEstablished));
        assert_eq!(
            live.sock_cookie,
            baton_bpf::cases::socket_cookie(&server).unwrap(),
            "the server socket named"
        );
        self.cookie = live.sock_cookie;
        (client, server, key)
    }

    /// The close notices of `key` that come within a while.
    fn closes(&mut self, key: ConnKey) -> Vec<Option<CloseCode>> {
        let deadline = Instant::now() + Duration::from_millis(300);
        let mut found = Vec::new();
        while Instant::now() < deadline {
            while let Some(record) = self.events.next() {
                let event = Event::parse(&record).unwrap();
                if event.kind == EventKind::Closed && event.key == key {
                    assert_eq!(
                        event.sock_cookie, self.cookie,
                        "the notice names the socket"
                    );
                    assert_eq!(
                        (event.handoff_id, event.peer),
                        (self.handoff_id, Ipv4Addr::LOCALHOST),
                        "the notice names the connection"
                    );
                    found.push(CloseCode::from_detail(event.detail));
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        found
    }
}

fn read_to_end(mut s: &TcpStream) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
}

/// Closes `s` with a RST (SO_LINGER 0).
fn abort(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size given.
    let set = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER");
}

#[test]
fn our_tcp_reports_each_close_once_with_what_holds_the_tuple() {
    std::thread::spawn(|| {
        let mut node = Node::new();
        const NOTHING: [Option<CloseCode>; 0] = [];
        let time_wait = [Some(CloseCode::TimeWait)];
        let gone = [Some(CloseCode::Gone)];

        // Passive close: the client's FIN first, then the server's, acknowledged: nothing left.
        let (client, server, key) = node.handed_in(0);
        client.shutdown(Shutdown::Write).unwrap();
        read_to_end(&server);
        assert_eq!(node.closes(key), NOTHING, "half closed by the client");
        drop(server);
        read_to_end(&client);
        assert_eq!(node.closes(key), gone, "passive close");
        drop(client);

        // Active close by a server that keeps its socket: FIN_WAIT2 takes the client's FIN.
        let (client, server, key) = node.handed_in(0);
        server.shutdown(Shutdown::Write).unwrap();
        read_to_end(&client);
        assert_eq!(node.closes(key), NOTHING, "half closed by the server");
        drop(client);
        assert_eq!(node.closes(key), time_wait, "active close");
        drop(server);

        // A server that closes its socket before the client's FIN (nginx after its response):
        // the socket is gone once its FIN is acknowledged, its timewait socket waits in FIN_WAIT2
        // for the client's FIN, and its ACK of that FIN reports.
        let (client, server, key) = node.handed_in(0);
        drop(server);
        read_to_end(&client);
        assert_eq!(
            node.closes(key),
            NOTHING,
            "orphaned, waiting for the client's FIN"
        );
        let flags = node.conns.get(&key, 0).unwrap().flags;
        assert_ne!(flags & conn_flags::TCP_CLOSED, 0, "{flags:#x}");
        drop(client);
        assert_eq!(node.closes(key), time_wait, "the timewait socket's ACK");

        // The same, had the datapath seen a FIN that the socket did not take as it closed (the
        // client's, on its way to the timewait socket): our TCP is to be asked.
        let (client, server, key) = node.handed_in(conn_flags::CLIENT_FIN);
        drop(server);
        read_to_end(&client);
        assert_eq!(
            node.closes(key),
            [Some(CloseCode::Unsure)],
            "a FIN in flight"
        );
        drop(client);

        // A server's abort: nothing left.
        let (client, server, key) = node.handed_in(0);
        abort(server);
        assert!(read_to_end_fails(&client), "the client sees the RST");
        assert_eq!(node.closes(key), gone, "server's abort");

        // The client's RST while the server's socket waits in FIN_WAIT2: a RST the datapath saw
        // may be one our TCP ignored, so what is left is for our TCP to say.
        let (client, server, key) = node.handed_in(0);
        server.shutdown(Shutdown::Write).unwrap();
        read_to_end(&client);
        std::thread::sleep(Duration::from_millis(100)); // the client's ACK of the FIN, delayed
        abort(client);
        assert_eq!(node.closes(key), [Some(CloseCode::Unsure)], "client's RST");
        drop(server);
    })
    .join()
    .expect("every close reported as it happened");
}

fn read_to_end_fails(mut s: &TcpStream) -> bool {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).is_err()
}

/// The same server on the same address and port in another network namespace is another node's.
#[test]
fn sockets_of_another_namespace_are_not_ours() {
    std::thread::spawn(|| {
        let mut node = Node::new();
        let mut config = NodeConfig::new(Ipv4Addr::LOCALHOST, &[80], true);
        config.netns_inum = current_netns_inum().unwrap() ^ 1;
        node.datapath.set_node_config(&config).unwrap();
        let (client, server, key) = node.handed_in(0);
        abort(server);
        drop(client);
        assert_eq!(node.closes(key), []);
    })
    .join()
    .expect("nothing reported");
}
