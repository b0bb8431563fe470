//! The pod socket's JSON protocol, on a real Unix socket, with nft stood in for (no root):
//! the namespace every pod names is the test's own, which nothing is done to.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::support::{FakeRules, TempDir, agent_in};
use crate::node_agent::{
    AddPod, DelPod, ListPods, ListedPod, MAX_LINE, PodClient, PodRequest, PodResponse,
};

const OWN_NETNS: &str = "/proc/self/ns/net";

fn add(uid: &str, netns: &str) -> PodRequest {
    PodRequest::Add(AddPod {
        uid: uid.into(),
        name: format!("{uid}-pod"),
        namespace: "shop".into(),
        service_account: "web".into(),
        netns: netns.into(),
    })
}

/// Sends raw bytes, reads one answer line.
async fn exchange(reader: &mut BufReader<UnixStream>, bytes: &[u8]) -> String {
    reader.get_mut().write_all(bytes).await.unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    line
}

fn is_error(line: &str, containing: &str) -> bool {
    match serde_json::from_str::<PodResponse>(line) {
        Ok(PodResponse::Error { error }) => error.contains(containing),
        _ => false,
    }
}

#[tokio::test]
async fn requests_are_answered_line_by_line_and_bad_ones_do_not_end_the_connection() {
    let dir = TempDir::new("cni");
    let rules = Arc::new(FakeRules::default());
    let agent = agent_in(&dir, rules.clone(), Duration::from_secs(1)).await;
    let stream = UnixStream::connect(agent.pod_socket()).await.unwrap();
    let mut conn = BufReader::new(stream);

    let add = br#"{"add":{"uid":"u1","name":"web-0","namespace":"shop","serviceAccount":"web","netns":"/proc/self/ns/net"}}"#;
    let mut line = add.to_vec();
    line.push(b'\n');
    assert_eq!(exchange(&mut conn, &line).await, "{\"ok\":true}\n");
    // Not JSON; an unknown request; an unknown field; two requests in one; a missing field.
    for (bad, says) in [
        (&b"not json\n"[..], "malformed request"),
        (b"{\"restart\":{}}\n", "unknown variant `restart`"),
        (
            b"{\"del\":{\"uid\":\"u1\",\"force\":true}}\n",
            "unknown field `force`",
        ),
        (
            b"{\"del\":{\"uid\":\"x\"},\"list\":{}}\n",
            "malformed request",
        ),
        (b"{\"add\":{\"uid\":\"u2\"}}\n", "missing field"),
    ] {
        let answer = exchange(&mut conn, bad).await;
        assert!(is_error(&answer, says), "{bad:?} → {answer}");
    }
    // Blank lines are skipped; CRLF is a line end too.
    let answer = exchange(&mut conn, b"\n  \n{\"list\":{}}\r\n").await;
    assert_eq!(
        answer,
        "{\"pods\":[{\"uid\":\"u1\",\"name\":\"web-0\",\"namespace\":\"shop\",\
         \"serviceAccount\":\"web\",\"netns\":\"/proc/self/ns/net\"}]}\n"
    );
    // Deleting what is not captured is fine (CNI DEL is idempotent); the real one releases.
    assert_eq!(
        exchange(&mut conn, b"{\"del\":{\"uid\":\"nobody\"}}\n").await,
        "{\"ok\":true}\n"
    );
    assert_eq!(
        exchange(&mut conn, b"{\"del\":{\"uid\":\"u1\"}}\n").await,
        "{\"ok\":true}\n"
    );
    let kinds: Vec<_> = rules.events().into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(kinds, ["install", "remove"]);
    assert!(agent.shutdown().await.is_empty());
}

#[tokio::test]
async fn pods_that_cannot_be_captured_are_refused_with_why() {
    let dir = TempDir::new("refuse");
    let rules = Arc::new(FakeRules::default());
    let agent = agent_in(&dir, rules.clone(), Duration::from_secs(1)).await;
    let mut client = PodClient::connect(agent.pod_socket()).await.unwrap();
    let fifo = dir.path().join("fifo");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let fifo = fifo.to_str().unwrap().to_string();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "not a namespace").unwrap();
    let plain = plain.to_str().unwrap().to_string();
    let long = "x".repeat(1000);
    for (request, says) in [
        (add("u1", "run/netns/relative"), "not an absolute path"),
        (
            add("u1", "/run/netns/no-such-namespace-here"),
            "no-such-namespace-here",
        ),
        (add("u1", &plain), "is not a network namespace"),
        // Must not hang waiting for a writer.
        (add("u1", &fifo), "is not a network namespace"),
        (add("u1", "/dev/null"), "is not a network namespace"),
        (
            add("u1", dir.path().to_str().unwrap()),
            "is not a network namespace",
        ),
        (add("", OWN_NETNS), "uid is empty"),
        (add(&long, OWN_NETNS), "a ZDS packet holds 1024"),
    ] {
        let answer = client.request(&request).await.unwrap();
        assert!(
            matches!(&answer, PodResponse::Error { error } if error.contains(says)),
            "{request:?} → {answer:?}"
        );
    }
    let listed = client
        .request(&PodRequest::List(ListPods {}))
        .await
        .unwrap();
    assert_eq!(listed, PodResponse::Pods { pods: vec![] });
    assert!(rules.events().is_empty(), "nothing installed");
    // A good one after all that.
    let answer = client.request(&add("u1", OWN_NETNS)).await.unwrap();
    assert_eq!(answer, PodResponse::Ok { ok: true });
    let listed = client
        .request(&PodRequest::List(ListPods {}))
        .await
        .unwrap();
    assert_eq!(
        listed,
        PodResponse::Pods {
            pods: vec![ListedPod {
                uid: "u1".into(),
                name: "u1-pod".into(),
                namespace: "shop".into(),
                service_account: "web".into(),
                netns: OWN_NETNS.into(),
            }]
        }
    );
    let del = PodRequest::Del(DelPod { uid: "u1".into() });
    assert_eq!(
        client.request(&del).await.unwrap(),
        PodResponse::Ok { ok: true }
    );
    assert!(agent.shutdown().await.is_empty());
}

#[tokio::test]
async fn a_line_past_the_cap_is_an_error_and_closes_the_connection() {
    let dir = TempDir::new("cap");
    let agent = agent_in(&dir, Arc::new(FakeRules::default()), Duration::from_secs(1)).await;

    // Exactly at the cap (newline excluded) is still a request.
    let mut at_cap = b"{\"list\":{}}".to_vec();
    at_cap.resize(MAX_LINE, b' ');
    at_cap.push(b'\n');
    let mut conn = BufReader::new(UnixStream::connect(agent.pod_socket()).await.unwrap());
    assert_eq!(exchange(&mut conn, &at_cap).await, "{\"pods\":[]}\n");

    // One byte more is not, and the connection ends after saying so.
    let mut past = b"{\"list\":{}}".to_vec();
    past.resize(MAX_LINE + 1, b' ');
    past.push(b'\n');
    let answer = exchange(&mut conn, &past).await;
    assert!(is_error(&answer, "longer than 65536 bytes"), "{answer}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(1), conn.read_to_end(&mut rest))
        .await
        .expect("closed, not waiting")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing after the error");

    // Other connections are unaffected.
    let mut client = PodClient::connect(agent.pod_socket()).await.unwrap();
    let answer = client
        .request(&PodRequest::List(ListPods {}))
        .await
        .unwrap();
    assert_eq!(answer, PodResponse::Pods { pods: vec![] });
    assert!(agent.shutdown().await.is_empty());
}

#[test]
fn requests_and_answers_have_the_documented_shape() {
    let json = serde_json::to_string(&add("u1", "/run/netns/p")).unwrap();
    assert_eq!(
        json,
        r#"{"add":{"uid":"u1","name":"u1-pod","namespace":"shop","serviceAccount":"web","netns":"/run/netns/p"}}"#
    );
    let json = serde_json::to_string(&PodRequest::Del(DelPod { uid: "u".into() })).unwrap();
    assert_eq!(json, r#"{"del":{"uid":"u"}}"#);
    let json = serde_json::to_string(&PodRequest::List(ListPods {})).unwrap();
    assert_eq!(json, r#"{"list":{}}"#);
    let parsed: PodResponse = serde_json::from_str(r#"{"error":"no"}"#).unwrap();
    assert_eq!(parsed, PodResponse::Error { error: "no".into() });
    assert_eq!(
        serde_json::to_string(&PodResponse::Ok { ok: true }).unwrap(),
        r#"{"ok":true}"#
    );
}
