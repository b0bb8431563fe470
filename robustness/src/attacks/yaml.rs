//! Hostile configuration given to `istiod --check` (the same loader istiod starts with):
//! nesting deep enough to make a YAML parser quadratic, alias bombs, files over and just
//! under the size limit, documents that explode into millions of values, and paths that are
//! not regular files. Each run must end by itself within [`WITHIN`], with status 0 or 1 and
//! one line of error, never a panic; the ones that cannot be a cluster must be refused. Its
//! peak memory is reported (from `wait4`'s rusage).

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::junk::noise;
use super::{Ctx, Findings};

/// The longest one check may take.
const WITHIN: Duration = Duration::from_secs(15);
/// Peak memory a check may take: what the binary itself has resident (~125 MiB, most of it
/// the mapped executable) plus 32 times the input. More means the 64 MiB input limit does
/// not bound memory: a file at the limit would need gigabytes.
fn max_rss_kib(input_bytes: u64) -> u64 {
    256 * 1024 + 32 * input_bytes / 1024
}

/// How one `istiod --check` ended.
struct Checked {
    /// The exit code, or the signal that ended it.
    code: Option<i32>,
    signal: Option<i32>,
    took: Duration,
    max_rss_kib: u64,
    stderr: String,
    killed: bool,
}

fn run_check(istiod: &Path, path: &Path, log: &Path) -> anyhow::Result<Checked> {
    let err = std::fs::File::create(log)?;
    let started = Instant::now();
    let child = Command::new(istiod)
        .arg("--config-dir")
        .arg(path)
        .arg("--check")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut killed = false;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain data that wait4 fills.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child only, writing into the locals above.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            let exit = std::process::ExitStatus::from_raw(status);
            return Ok(Checked {
                code: exit.code(),
                signal: exit.signal(),
                took: started.elapsed(),
                max_rss_kib: usage.ru_maxrss as u64,
                stderr: std::fs::read_to_string(log).unwrap_or_default(),
                killed,
            });
        }
        if rc < 0 {
            anyhow::bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if started.elapsed() > WITHIN && !killed {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `text` made by `fill` into `dir/name`.
fn file(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    fill(&mut out)?;
    out.flush()?;
    Ok(path)
}

/// One valid object, for the --config-dir cases.
const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";

/// The cases: name, path, and whether istiod must refuse it.
fn cases(dir: &Path) -> anyhow::Result<Vec<(&'static str, PathBuf, bool)>> {
    let mut cases = Vec::new();
    cases.push((
        "100,000 nested [",
        file(dir, "brackets.yaml", |w| {
            w.write_all(&vec![b'['; 100_000])?;
            w.write_all(&vec![b']'; 100_000])
        })?,
        true,
    ));
    cases.push((
        "2,000 nested block mappings",
        file(dir, "indent.yaml", |w| {
            for depth in 0..2000 {
                writeln!(w, "{}k:", " ".repeat(depth))?;
            }
            Ok(())
        })?,
        true,
    ));
    cases.push((
        "an alias bomb (9^9 expansion)",
        file(dir, "laughs.yaml", |w| {
            writeln!(w, "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]")?;
            for i in 1..10 {
                let p = format!("*a{}", i - 1);
                let list = [p.as_str(); 9].join(", ");
                writeln!(w, "a{i}: &a{i} [{list}]")?;
            }
            Ok(())
        })?,
        true,
    ));
    let over = dir.join("over-limit.yaml");
    std::fs::File::create(&over)?.set_len((64 << 20) + 1)?;
    cases.push(("a file 1 byte over 64 MiB", over, true));
    cases.push((
        "60 MiB of comments",
        file(dir, "comments.yaml", |w| {
            let line = format!("# {}\n", "c".repeat(62));
            for _ in 0..(60 << 20) / line.len() {
                w.write_all(line.as_bytes())?;
            }
            Ok(())
        })?,
        false,
    ));
    cases.push((
        "one flow sequence of 4M items (8 MiB)",
        file(dir, "items.yaml", |w| {
            w.write_all(b"[")?;
            w.write_all(&b"a,".repeat(4 << 20))?;
            w.write_all(b"a]\n")
        })?,
        true,
    ));
    cases.push((
        "a Namespace named by a 32 MiB scalar",
        file(dir, "scalar.yaml", |w| {
            w.write_all(b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"")?;
            w.write_all(&vec![b'x'; 32 << 20])?;
            w.write_all(b"\"\n")
        })?,
        false,
    ));
    cases.push((
        "100,000 empty documents",
        file(dir, "documents.yaml", |w| {
            w.write_all(&b"---\n".repeat(100_000))
        })?,
        false,
    ));
    cases.push((
        "20,000 namespaces",
        file(dir, "namespaces.yaml", |w| {
            for i in 0..20_000 {
                writeln!(
                    w,
                    "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{i}"
                )?;
            }
            Ok(())
        })?,
        false,
    ));
    cases.push((
        "1 MiB of noise",
        file(dir, "noise.yaml", |w| w.write_all(&noise(5, 1 << 20)))?,
        true,
    ));
    let fifo = dir.join("fifo.yaml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        cases.push(("a FIFO nobody writes", fifo.clone(), true));
    }
    // A character device that reads forever (sandboxes may lack some of them).
    if let Some(device) = ["/dev/zero", "/dev/full", "/dev/urandom"]
        .into_iter()
        .find(|d| Path::new(d).exists())
    {
        cases.push(("an endless character device", PathBuf::from(device), true));
    }
    // A --config-dir as an operator's would be, with one bad entry each: a valid cluster
    // must still load past a FIFO (skipped, never opened), a loop must be refused, and the
    // same object in two files must be refused rather than one silently winning.
    let with_fifo = dir.join("dir-with-fifo");
    std::fs::create_dir_all(&with_fifo)?;
    std::fs::write(with_fifo.join("a.yaml"), NAMESPACE)?;
    let c = std::ffi::CString::new(with_fifo.join("b.yaml").as_os_str().as_encoded_bytes())?;
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        cases.push(("a --config-dir holding a FIFO", with_fifo, false));
    }
    let dir_loop = dir.join("dir-with-loop");
    std::fs::create_dir_all(&dir_loop)?;
    std::fs::write(dir_loop.join("a.yaml"), NAMESPACE)?;
    let _ = std::os::unix::fs::symlink(&dir_loop, dir_loop.join("again"));
    cases.push(("a --config-dir linking to itself", dir_loop, true));
    let duplicates = dir.join("dir-with-duplicates");
    std::fs::create_dir_all(&duplicates)?;
    std::fs::write(duplicates.join("a.yaml"), NAMESPACE)?;
    std::fs::write(duplicates.join("b.yaml"), NAMESPACE)?;
    cases.push(("the same Namespace in two files", duplicates, true));
    let looped = dir.join("loop");
    std::fs::create_dir_all(&looped)?;
    let _ = std::os::unix::fs::symlink(looped.join("b"), looped.join("a"));
    let _ = std::os::unix::fs::symlink(looped.join("a"), looped.join("b"));
    cases.push(("a symbolic-link loop", looped.join("a"), true));
    Ok(cases)
}

pub async fn check(ctx: &Ctx<'_>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let dir = ctx.dir.join("yaml");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let istiod = ctx.mesh.options.bin_dir.join("istiod");
    let dir2 = dir.clone();
    let results = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<_>> {
        let mut out = Vec::new();
        for (i, (name, path, refuse)) in cases(&dir2)?.into_iter().enumerate() {
            let size = std::fs::metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .unwrap_or(0);
            let checked = run_check(&istiod, &path, &dir2.join(format!("check-{i}.log")))?;
            // Only what this run made: a case may name a system path (a device), which
            // must never be removed.
            if path.starts_with(&dir2) && std::fs::remove_file(&path).is_err() {
                let _ = std::fs::remove_dir_all(&path);
            }
            out.push((name, refuse, size, checked));
        }
        Ok(out)
    })
    .await??;
    for (name, refuse, size, c) in results {
        let first_line = c
            .stderr
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(140)
            .collect::<String>();
        findings.note(format!(
            "{name}: exit {:?} in {:.2}s, peak {} MiB: {first_line}",
            c.code.or(c.signal.map(|s| -s)),
            c.took.as_secs_f64(),
            c.max_rss_kib / 1024
        ));
        findings.expect(!c.killed, || {
            format!("{name}: still running after {WITHIN:?}")
        });
        findings.expect(c.signal.is_none() || c.killed, || {
            format!("{name}: killed by signal {:?}", c.signal)
        });
        findings.expect(matches!(c.code, Some(0 | 1)) || c.killed, || {
            format!("{name}: exit status {:?} (a panic is 101)", c.code)
        });
        findings.expect(!c.stderr.contains("panicked"), || {
            format!("{name}: panicked: {first_line}")
        });
        findings.expect(!refuse || c.code == Some(1) || c.killed, || {
            format!("{name}: accepted ({:?})", c.code)
        });
        findings.expect(c.max_rss_kib <= max_rss_kib(size), || {
            format!(
                "{name}: istiod --check peaked at {} MiB for {} MiB of input (at most {} MiB: 256 MiB + 32x the input)",
                c.max_rss_kib / 1024,
                size >> 20,
                max_rss_kib(size) / 1024
            )
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(findings)
}
