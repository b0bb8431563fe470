//! The HTTP ports (admin 15000, metrics 15020, readiness 15021): `POST /quitquitquit` from a
//! peer that is not loopback must not stop the proxy, and a request target that is not
//! origin-form (absolute, authority or asterisk form: asking the server to be a proxy) must
//! be refused with 400 rather than served.

use std::net::{IpAddr, SocketAddr};

use super::{Ctx, Findings};
use crate::mesh::ports;
use crate::netns::OUTSIDER;
use crate::wire::tcp;

const QUIT: &str =
    "POST /quitquitquit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

fn http_ports(ctx: &Ctx<'_>) -> Vec<(&'static str, SocketAddr)> {
    let mut all = Vec::new();
    for (who, ip) in [
        ("node-a", ctx.mesh.node_a_ip()),
        ("node-b", ctx.mesh.node_b_ip()),
    ] {
        for port in ports::HTTP {
            all.push((who, SocketAddr::new(ip, port)));
        }
    }
    all
}

pub async fn quit_from_outside(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    if !ctx.private_netns {
        findings.skipped = Some(
            "needs the private network namespace for a non-loopback source address (run as root)"
                .into(),
        );
        return Ok(findings);
    }
    for (who, to) in http_ports(ctx) {
        let status = tcp::http_status(Some(IpAddr::V4(OUTSIDER)), to, QUIT).await?;
        findings.note(format!(
            "{who} {to}: POST /quitquitquit from {OUTSIDER}: {status}"
        ));
        findings.expect(status != 200, || {
            format!("{who} {to}: POST /quitquitquit from {OUTSIDER} answered 200")
        });
        if to.port() == ports::ADMIN {
            findings.expect(status == 403, || {
                format!("{who} {to}: POST /quitquitquit from {OUTSIDER} answered {status}, not 403")
            });
        }
    }
    // The process check after the attack is the real test: a proxy that obeyed has exited.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Ok(findings)
}

pub async fn absolute_form(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let targets = [
        ("GET", "http://evil.example/config_dump"),
        ("GET", "http://127.0.0.1:15000/config_dump"),
        ("GET", "https://evil.example/metrics"),
        ("POST", "http://localhost/quitquitquit"),
        ("CONNECT", "evil.example:80"),
        ("CONNECT", "127.0.0.1:15000"),
        ("OPTIONS", "*"),
    ];
    for (who, to) in http_ports(ctx) {
        for (method, target) in targets {
            let head = format!(
                "{method} {target} HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let status = tcp::http_status(None, to, &head).await?;
            findings.expect(status == 400 || (target == "*" && status != 200), || {
                format!("{who} {to}: {method} {target} answered {status}, not 400")
            });
            if status != 400 {
                findings.note(format!("{who} {to}: {method} {target}: {status}"));
            }
        }
    }
    Ok(findings)
}
