//! The rules in real namespaces, with the real nft (root).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};

use super::support::{TestNetns, root_or_skip};
use crate::node_agent::{Nft, Redirection, ZTUNNEL_MARK, remove_at};

const CONNECT: Duration = Duration::from_secs(1);

fn original_dst(stream: &TcpStream) -> SocketAddr {
    SockRef::from(stream)
        .original_dst_v4()
        .expect("SO_ORIGINAL_DST")
        .as_socket()
        .expect("an IP address")
}

/// Connects from a socket carrying `mark`, if any.
fn connect(to: SocketAddrV4, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.connect_timeout(&SocketAddr::V4(to).into(), CONNECT)?;
    Ok(socket.into())
}

#[test]
fn rules_install_idempotently_and_remove_to_nothing() {
    if !root_or_skip("rules_install_idempotently_and_remove_to_nothing") {
        return;
    }
    let netns = TestNetns::create("rules");
    let nft = Nft::default();
    let fd = netns.open();
    nft.install(fd.as_fd()).expect("install");
    nft.install(fd.as_fd()).expect("install again");
    let listed = netns
        .nft(&["list", "table", "ip", "ztunnel"])
        .expect("the table is there");
    assert!(listed.contains("redirect to :15006"), "{listed}");
    assert!(listed.contains("redirect to :15001"), "{listed}");
    assert!(listed.contains("tcp dport 15008 accept"), "{listed}");
    assert!(listed.contains("meta mark 0x00000539 accept"), "{listed}");
    // Installed twice, there once.
    assert_eq!(listed.matches("redirect to :15001").count(), 1, "{listed}");
    let tables = netns.nft(&["list", "tables"]).expect("list tables");
    assert_eq!(tables.trim(), "table ip ztunnel");
    // The replies' policy routing, once too.
    let rules = netns.ip_output(&["rule"]);
    assert_eq!(
        rules.matches("fwmark 0x111 lookup 100").count(),
        1,
        "{rules}"
    );
    let table = netns.ip_output(&["route", "show", "table", "100"]);
    assert!(table.contains("local default dev lo"), "{table}");

    nft.remove(fd.as_fd()).expect("remove");
    assert!(!netns.has_table());
    assert!(!netns.ip_output(&["rule"]).contains("fwmark 0x111"));
    assert!(
        netns
            .ip_output(&["route", "show", "table", "100"])
            .is_empty()
    );
    nft.remove(fd.as_fd()).expect("removing again is fine");
    remove_at(&nft, netns.path()).expect("by path too");

    // A namespace that is gone has no rules left.
    let gone = netns.path().to_path_buf();
    drop(netns);
    remove_at(&nft, &gone).expect("a removed namespace is a success");
}

#[test]
fn nft_failures_carry_its_stderr() {
    if !root_or_skip("nft_failures_carry_its_stderr") {
        return;
    }
    let netns = TestNetns::create("stderr");
    let err = Nft::default()
        .run(
            netns.open().as_fd(),
            &["-f", "-"],
            "table ip ztunnel { nonsense }\n",
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("nft -f -"), "{text}");
    assert!(text.contains("Error"), "nft's own words: {text}");
}

#[test]
fn outbound_goes_to_15001_with_its_original_destination_unless_marked() {
    if !root_or_skip("outbound_goes_to_15001_with_its_original_destination_unless_marked") {
        return;
    }
    let netns = TestNetns::create("outbound");
    // A pod's interface: a veth pair with both ends inside (a dummy would do, but not every
    // kernel has the module).
    netns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    netns.ip(&["addr", "add", "10.99.0.1/24", "dev", "v0"]);
    netns.ip(&["link", "set", "v0", "up"]);
    netns.ip(&["link", "set", "v1", "up"]);
    Nft::default()
        .install(netns.open().as_fd())
        .expect("install");
    netns.within(|| {
        let outbound = TcpListener::bind("0.0.0.0:15001").expect("bind 15001");
        // Any TCP destination lands on 15001, which learns where it was going.
        let away = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 7), 80);
        let _client = connect(away, None).expect("captured, so accepted");
        let (accepted, _) = outbound.accept().expect("on 15001");
        assert_eq!(original_dst(&accepted), SocketAddr::V4(away));
        // The pod calling its own address is not captured (it leaves by lo, as upstream's
        // `-o lo` rule has it): the closed port refuses.
        let closed = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 9);
        let err = connect(closed, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        // ztunnel's own sockets are left alone.
        let err = connect(away, Some(ZTUNNEL_MARK)).unwrap_err();
        assert_ne!(
            err.kind(),
            ErrorKind::ConnectionRefused,
            "not redirected: {err}"
        );
        // So is loopback.
        let err = connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        outbound.set_nonblocking(true).expect("nonblocking");
        assert_eq!(
            outbound.accept().map(drop).unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "nothing else reached 15001"
        );
    });
}

#[test]
fn inbound_goes_to_15006_and_hbone_to_15008() {
    if !root_or_skip("inbound_goes_to_15006_and_hbone_to_15008") {
        return;
    }
    let pod = TestNetns::create("pod");
    let peer = TestNetns::create("peer");
    pod.ip(&[
        "link",
        "add",
        "va",
        "type",
        "veth",
        "peer",
        "name",
        "vb",
        "netns",
        peer.name(),
    ]);
    pod.ip(&["addr", "add", "10.98.0.1/24", "dev", "va"]);
    pod.ip(&["link", "set", "va", "up"]);
    peer.ip(&["addr", "add", "10.98.0.2/24", "dev", "vb"]);
    peer.ip(&["link", "set", "vb", "up"]);
    Nft::default().install(pod.open().as_fd()).expect("install");
    let (plaintext, hbone) = pod.within(|| {
        (
            TcpListener::bind("0.0.0.0:15006").expect("bind 15006"),
            TcpListener::bind("0.0.0.0:15008").expect("bind 15008"),
        )
    });
    let app = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 1), 80);
    let tunnel = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 1), 15008);
    peer.within(move || {
        let _a = connect(app, None).expect("captured, so accepted");
        let (accepted, from) = plaintext.accept().expect("on 15006");
        assert_eq!(original_dst(&accepted), SocketAddr::V4(app));
        assert_eq!(
            from.ip(),
            Ipv4Addr::new(10, 98, 0, 2),
            "the peer's own address"
        );
        let _b = connect(tunnel, None).expect("HBONE is taken as addressed");
        let (accepted, _) = hbone.accept().expect("on 15008");
        assert_eq!(
            accepted.local_addr().expect("local"),
            SocketAddr::V4(tunnel)
        );
    });
}

#[test]
fn delivery_from_the_clients_address_gets_its_replies_back() {
    if !root_or_skip("delivery_from_the_clients_address_gets_its_replies_back") {
        return;
    }
    let netns = TestNetns::create("deliver");
    netns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    netns.ip(&["addr", "add", "10.99.0.1/24", "dev", "v0"]);
    netns.ip(&["link", "set", "v0", "up"]);
    netns.ip(&["link", "set", "v1", "up"]);
    netns.ip(&["link", "set", "lo", "up"]);
    // The client is elsewhere: its address is routed out of the pod.
    netns.ip(&["route", "add", "default", "dev", "v0"]);
    Nft::default()
        .install(netns.open().as_fd())
        .expect("install");
    netns.within(|| {
        use std::io::{Read, Write};
        let app = TcpListener::bind("10.99.0.1:8080").expect("the app");
        // What ztunnel does: a marked socket bound to the client's address.
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 7), 0);
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_mark(ZTUNNEL_MARK).expect("mark");
        socket.set_ip_transparent_v4(true).expect("IP_TRANSPARENT");
        socket.bind(&SocketAddr::V4(client).into()).expect("bind");
        socket
            .connect_timeout(
                &"10.99.0.1:8080".parse::<SocketAddr>().expect("addr").into(),
                CONNECT,
            )
            .expect("the app's SYN-ACK came back to the delivering socket");
        let mut delivered: TcpStream = socket.into();
        let (mut accepted, peer) = app.accept().expect("accepted");
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(*client.ip()),
            "the app sees the client"
        );
        accepted.write_all(b"reply").expect("write");
        let mut reply = [0u8; 5];
        delivered.set_read_timeout(Some(CONNECT)).expect("timeout");
        delivered
            .read_exact(&mut reply)
            .expect("the reply came back");
        assert_eq!(&reply, b"reply");
    });
}
