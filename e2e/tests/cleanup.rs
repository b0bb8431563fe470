//! Ctrl-C in the middle of a run leaves nothing behind: the `e2e` binary, interrupted with
//! SIGINT while its cluster serves traffic, exits 130 with none of its namespaces under
//! `/run/netns`, none of its processes alive, its run directory gone, and nothing in the host's
//! namespace (no veth, no nft table: they lived in the namespaces and went with them).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The pids whose parent is `parent`.
fn children(parent: u32) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.insert(pid);
        }
    }
    found
}

/// Entries of `dir` whose name starts with `prefix`.
fn named(dir: &str, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn host(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigint_mid_run_removes_namespaces_processes_and_the_run_directory() {
    if !common::usable("cleanup") {
        return;
    }
    let binaries = common::binaries();
    // A minute of traffic: it is interrupted long before.
    let text = std::fs::read_to_string(common::fixture("uncaptured.yaml"))
        .unwrap()
        .replace("duration: 1s", "duration: 60s");
    let dir = std::env::temp_dir().join(format!("e2e-cleanup-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("long.yaml");
    std::fs::write(&file, text).unwrap();
    let links_before = host("ip", &["-o", "link"]).lines().count();
    let tables_before = host("nft", &["list", "tables"]);

    let mut command = Command::new(env!("CARGO_BIN_EXE_e2e"));
    command.arg("run").arg(&file).arg("--no-build");
    if binaries.node_agent().is_err() {
        command.arg("--no-dataplane");
    }
    let mut e2e = command
        .env("E2E_BIN_DIR", &binaries.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = e2e.id();
    let stderr = e2e.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains("cluster up") => break,
            Ok(line) => seen.push(line),
            Err(_) if Instant::now() > deadline => {
                let _ = e2e.kill();
                panic!("the cluster did not come up:\n{}", seen.join("\n"));
            }
            Err(_) => {
                if let Ok(Some(status)) = e2e.try_wait() {
                    panic!("e2e exited early ({status}):\n{}", seen.join("\n"));
                }
            }
        }
    }
    // Mid-run: traffic flows for a second.
    std::thread::sleep(Duration::from_secs(1));
    let prefix = format!("harness-{pid}-");
    let namespaces = named("/run/netns", &prefix);
    assert!(
        namespaces.len() >= 6,
        "lan, istiod, 2 nodes, 3 pods: {namespaces:?}"
    );
    let processes = children(pid);
    assert!(!processes.is_empty(), "istiod at least");
    assert_eq!(
        named("/tmp", &format!("e2e-{pid}-")).len(),
        1,
        "its run directory"
    );

    // SAFETY: signals our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = e2e.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = e2e.kill();
            panic!("e2e still running 20s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "{status}");
    assert_eq!(named("/run/netns", &prefix), Vec::<String>::new());
    for child in &processes {
        let gone = !Path::new(&format!("/proc/{child}")).exists()
            || children(1).contains(child) && {
                // Reparented and already dead but not yet reaped by init: a zombie.
                std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
            };
        assert!(gone, "process {child} outlived the run");
    }
    assert_eq!(named("/tmp", &format!("e2e-{pid}-")), Vec::<String>::new());
    // The node-side veths and the nft tables went with their namespaces.
    assert_eq!(host("ip", &["-o", "link"]).lines().count(), links_before);
    assert!(!host("ip", &["-o", "link"]).contains(": e2e"));
    assert_eq!(host("nft", &["list", "tables"]), tables_before);
    let _ = std::fs::remove_dir_all(&dir);
}
