//! SOCKS5 abuse on node-a's 15080: requests that are not SOCKS5 or ask for what the proxy
//! does not do, and CONNECTs to the ztunnel's own listeners by every spelling an address can
//! have. None may succeed; canaries on 127.0.0.1 catch a proxy that connects anyway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::junk::noise;
use super::{Ctx, Findings};
use crate::canary::Canaries;
use crate::mesh::ports;
use crate::wire::socks5::{self, Destination};
use crate::wire::tcp;

/// Every spelling of "this proxy, port `port`" a SOCKS5 request can carry.
fn self_targets(ctx: &Ctx<'_>, port: u16) -> Vec<Destination> {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let node_a = ctx.mesh.node_a_ip();
    let node_b = ctx.mesh.node_b_ip();
    vec![
        Destination::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        Destination::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
        Destination::Ip(SocketAddr::new(node_a, port)),
        Destination::Ip(SocketAddr::new(node_b, port)),
        Destination::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port),
        Destination::V6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), port),
        Destination::V6(v4(node_a).to_ipv6_mapped(), port),
        Destination::V6(v4(node_b).to_ipv6_mapped(), port),
        Destination::V6(Ipv6Addr::LOCALHOST, port),
        Destination::V6(Ipv6Addr::UNSPECIFIED, port),
        Destination::Domain(b"localhost".to_vec(), port),
    ]
}

/// Requests that are not a CONNECT the proxy should carry: raw bytes after the greeting.
fn malformed(ctx: &Ctx<'_>) -> Vec<(&'static str, Vec<u8>)> {
    let IpAddr::V4(echo) = ctx.mesh.node_b_ip() else {
        return Vec::new();
    };
    let with = |head: &[u8], tail: &[u8]| {
        let mut b = head.to_vec();
        b.extend_from_slice(tail);
        b
    };
    let addr = with(&echo.octets(), &crate::mesh::ECHO_PORT.to_be_bytes());
    let mut long_name = vec![5, 1, 0, 5, 1, 0, 3, 255];
    long_name.extend(noise(9, 255));
    long_name.extend_from_slice(&80u16.to_be_bytes());
    vec![
        ("socks4", with(&[4, 1, 0, 80], &echo.octets())),
        ("zero methods", vec![5, 0]),
        ("no acceptable method", vec![5, 2, 1, 2]),
        ("BIND", with(&[5, 1, 0, 5, 2, 0, 1], &addr)),
        ("UDP ASSOCIATE", with(&[5, 1, 0, 5, 3, 0, 1], &addr)),
        ("address type 9", with(&[5, 1, 0, 5, 1, 0, 9], &addr)),
        ("version 4 request", with(&[5, 1, 0, 4, 1, 0, 1], &addr)),
        ("empty domain", vec![5, 1, 0, 5, 1, 0, 3, 0, 0, 80]),
        ("255-byte garbage domain", long_name),
        (
            "port 0",
            with(&[5, 1, 0, 5, 1, 0, 1], &with(&echo.octets(), &[0, 0])),
        ),
    ]
}

pub async fn abuse(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let mesh = ctx.mesh;
    let proxy = SocketAddr::new(mesh.node_a_ip(), ports::SOCKS5);
    let canaries = Canaries::bind(&ports::ZTUNNEL).await;
    if !canaries.unbound.is_empty() {
        findings.note(format!(
            "canaries not bound (ports taken): {:?}",
            canaries.unbound
        ));
    }
    // The control: a CONNECT the proxy must carry.
    let (code, _) = socks5::connect(proxy, mesh.node_a_ip(), &Destination::Ip(mesh.vip())).await?;
    findings.expect(code == 0, || {
        format!("the control CONNECT to echo's VIP got {code}")
    });

    let mut port_list = ports::ZTUNNEL.to_vec();
    port_list.extend(ports::ISTIOD);
    let mut refused = 0;
    for port in port_list {
        for target in self_targets(ctx, port) {
            match socks5::connect(proxy, mesh.node_a_ip(), &target).await {
                Ok((0, Some(mut stream))) => {
                    findings.violation(format!("SOCKS5 CONNECT {target} succeeded"));
                    // What an attacker would do with it.
                    let _ = stream
                        .write_all(
                            b"POST /quitquitquit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                        )
                        .await;
                    let _ = tcp::closed_within(&mut stream, Duration::from_millis(500)).await;
                }
                Ok(_) => refused += 1,
                Err(e) => findings.note(format!("CONNECT {target}: {e:#}")),
            }
        }
    }
    findings.note(format!(
        "{refused} CONNECTs to the proxy's own ports refused"
    ));

    for (name, bytes) in malformed(ctx) {
        let answer = tcp::send_and_read(
            Some(mesh.node_a_ip()),
            proxy,
            &bytes,
            Duration::from_secs(3),
        )
        .await?;
        // A success reply is VER 5, REP 0 after the 2-byte method answer.
        let succeeded = answer.len() >= 4 && answer[2] == 5 && answer[3] == 0;
        findings.expect(!succeeded, || {
            format!("SOCKS5 {name}: answered success {answer:?}")
        });
        if name == "no acceptable method" {
            findings.expect(answer == [5, 0xff], || {
                format!("SOCKS5 {name}: answered {answer:?}, not exactly [5, 255]")
            });
        }
        findings.note(format!(
            "{name}: answered {:?}",
            &answer[..answer.len().min(12)]
        ));
    }
    for (addr, n) in canaries.hit() {
        findings.violation(format!("the proxy connected to canary {addr} {n} time(s)"));
    }
    Ok(findings)
}
