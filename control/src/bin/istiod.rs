//! The istiod binary: Kubernetes YAML (files, directories, stdin) or a live cluster in, xDS and
//! certificates out on 15010/15012.
//!
//! ```text
//! istiod [--config-dir PATH]... [--kube] [--state-dir DIR] [--listen IP] [--port N] [--tls-port N]
//!        [--trust-domain TD] [--cluster-id ID] [--service-cidr CIDR] [--debounce DURATION]
//!        [--serving-name NAME]... [--write-root-cert FILE] [--mesh-config FILE]
//!        [--config-poll DURATION]
//! istiod --config-dir PATH... --check
//! istiod --state-dir DIR --issue-token NODE [--identity spiffe://…] [--token-ttl DURATION]
//! istiod explain --config-dir PATH... --from NS/POD --to HOST:PORT [--method M] [--path P]
//!        [--header NAME:VALUE]... [--json]
//! istiod rotate-root begin|advance|finish|status --state-dir DIR [--activate-after DURATION]
//!        [--overlap DURATION] [--trust-domain TD]
//! ```
//!
//! Served from `--config-dir`, istiod re-reads the files when they change (checked every
//! `--config-poll`, 1s by default, `0s` never): objects gone from them are deleted, the rest
//! applied; files that do not load or that the store refuses change nothing.
//!
//! `rotate-root` changes the state directory; an istiod serving from it follows within
//! seconds, and one started later comes back in the same phase.
//!
//! Feature flags come from upstream's environment variables (`true`/`1` on, `false`/`0`/unset
//! off, anything else refused): `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY`,
//! `PILOT_AUTO_ALLOW_WAYPOINT_POLICY`, `ENABLE_LAYERED_WAYPOINT_AUTHORIZATION_POLICIES` (the
//! last makes a waypoint enforce the selector policies on its own pods). See `control::features`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use control::ca::{CertificateAuthority, TokenSigner};
use control::features::Features;
use control::istiod::root_rotation;
use control::istiod::state_dir::{self, StateDir};
use control::istiod::{self, IstiodConfig, SharedStore};
use control::sources::{self, kube::Report};
use control::store::{Store, StoreConfig};
use dataplane::identity::{Identity, LocalCa};
use dataplane::seams::{Clock, Seams, SystemClock};
use dataplane::ztunnel::parse_duration;

const USAGE: &str = "usage: istiod [--config-dir PATH]... [--kube] [--state-dir DIR] [--listen IP] \
[--port N] [--tls-port N] [--trust-domain TD] [--cluster-id ID] [--service-cidr CIDR] \
[--debounce DURATION] [--serving-name NAME]... [--write-root-cert FILE] [--mesh-config FILE] \
[--config-poll DURATION] [--check]\n       \
istiod --state-dir DIR --issue-token NODE [--identity SPIFFE-ID] [--token-ttl DURATION]\n       \
istiod explain --config-dir PATH... --from NS/POD --to HOST:PORT [--method M] [--path P] \
[--header NAME:VALUE]... [--json]\n       \
istiod rotate-root begin|advance|finish|status --state-dir DIR [--activate-after DURATION] \
[--overlap DURATION] [--trust-domain TD]";

#[derive(Default)]
struct Args {
    config: Vec<PathBuf>,
    kube: bool,
    check: bool,
    /// How often a served `--config-dir` is checked for changes; zero: never.
    config_poll: Option<Duration>,
    state_dir: Option<PathBuf>,
    write_root_cert: Option<PathBuf>,
    issue_token: Option<String>,
    identity: Option<String>,
    token_ttl: Option<Duration>,
    service_cidr: Option<String>,
    istiod: IstiodConfig,
    /// `explain`: the question, and whether to answer in JSON.
    explain: Option<control::explain::Question>,
    json: bool,
    /// `rotate-root`: the step, and the times `begin` schedules.
    rotate_root: Option<String>,
    activate_after: Option<Duration>,
    overlap: Option<Duration>,
}

fn parse_args(raw: Vec<String>) -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut it = raw.into_iter().peekable();
    if it.peek().is_some_and(|a| a == "explain") {
        it.next();
        args.explain = Some(control::explain::Question::default());
    } else if it.peek().is_some_and(|a| a == "rotate-root") {
        it.next();
        match it.next() {
            Some(step) if ["begin", "advance", "finish", "status"].contains(&step.as_str()) => {
                args.rotate_root = Some(step)
            }
            other => {
                bail!("rotate-root needs begin, advance, finish or status, not {other:?}\n{USAGE}")
            }
        }
    }
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let duration = |v: String| {
            parse_duration(&v).with_context(|| format!("{v:?} is not a duration like 100ms or 24h"))
        };
        match flag.as_str() {
            "--config-dir" | "--config" | "-f" => args.config.push(PathBuf::from(value()?)),
            "--kube" => args.kube = true,
            "--check" => args.check = true,
            "--mesh-config" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("--mesh-config {path}"))?;
                let ignored = control::mesh_config::read(&text, &mut args.istiod.mesh)
                    .with_context(|| format!("--mesh-config {path}"))?;
                if !ignored.is_empty() {
                    tracing::info!(fields = ?ignored, "mesh config fields not used by this istiod");
                }
            }
            "--state-dir" => args.state_dir = Some(PathBuf::from(value()?)),
            "--write-root-cert" => args.write_root_cert = Some(PathBuf::from(value()?)),
            "--issue-token" => args.issue_token = Some(value()?),
            "--identity" => args.identity = Some(value()?),
            "--token-ttl" => args.token_ttl = Some(duration(value()?)?),
            "--activate-after" if args.rotate_root.is_some() => {
                args.activate_after = Some(duration(value()?)?)
            }
            "--overlap" if args.rotate_root.is_some() => args.overlap = Some(duration(value()?)?),
            "--listen" => {
                let v = value()?;
                args.istiod.listen_ip = v
                    .parse::<IpAddr>()
                    .with_context(|| format!("--listen {v:?} is not an IP address"))?;
            }
            "--port" => args.istiod.plaintext_port = value()?.parse().context("--port")?,
            "--tls-port" => args.istiod.tls_port = value()?.parse().context("--tls-port")?,
            "--trust-domain" => args.istiod.mesh.trust_domain = value()?,
            "--cluster-id" => args.istiod.mesh.cluster_id = value()?,
            "--service-cidr" => args.service_cidr = Some(value()?),
            "--serving-name" => args.istiod.serving_names.push(value()?),
            "--config-poll" => args.config_poll = Some(duration(value()?)?),
            "--debounce" => args.istiod.debounce = duration(value()?)?,
            "--secret-ttl" => args.istiod.certificate_ttl = duration(value()?)?,
            "--from" | "--to" | "--method" | "--path" | "--header" | "--json"
                if args.explain.is_some() =>
            {
                let v = if flag == "--json" {
                    String::new()
                } else {
                    value()?
                };
                let json = &mut args.json;
                let Some(q) = args.explain.as_mut() else {
                    continue;
                };
                match flag.as_str() {
                    "--from" => q.from = v,
                    "--to" => q.to = v,
                    "--method" => q.method = Some(v),
                    "--path" => q.path = Some(v),
                    "--header" => {
                        let (name, value) = v
                            .split_once(':')
                            .with_context(|| format!("--header {v:?}: expected NAME:VALUE"))?;
                        q.headers
                            .push((name.trim().to_string(), value.trim().to_string()));
                    }
                    _ => *json = true,
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

fn store_config(args: &Args) -> anyhow::Result<StoreConfig> {
    let mut config = StoreConfig {
        root_namespace: args.istiod.mesh.root_namespace.clone(),
        require_namespaces: !args.kube,
        // With a cluster, its own istiod deploys waypoints; from manifests, nothing else will.
        deploy_waypoints: !args.kube,
        // With a cluster, its scheduler and kubelets place pods; from manifests, istiod does.
        schedule: !args.kube,
        ..StoreConfig::default()
    };
    if let Some(cidr) = &args.service_cidr {
        config.service_cidr = cidr
            .parse()
            .map_err(|e| anyhow::anyhow!("--service-cidr {cidr:?}: {e:?}"))?;
    }
    Ok(config)
}

fn load_state(args: &Args) -> anyhow::Result<StateDir> {
    let now = SystemClock.now();
    let trust_domain = &args.istiod.mesh.trust_domain;
    match &args.state_dir {
        Some(dir) => Ok(state_dir::load_or_create(dir, trust_domain, now)?),
        None => {
            tracing::warn!(
                "no --state-dir: a fresh CA root and token key that a restart will not keep"
            );
            let root = LocalCa::generate(trust_domain, now)?;
            let mut secret = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                .map_err(|_| anyhow::anyhow!("no secure randomness"))?;
            Ok(StateDir {
                root,
                token_secret: secret,
            })
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // Before istiod says it serves: a SIGTERM from then on drains.
    let stop = dataplane::process::stop_signal();
    let config = store_config(&args)?;
    let mut store = Store::new(config);
    // Before the first read, so an edit made during it is read again, not missed.
    let watch = sources::watch::ConfigWatch::new(args.config.clone());
    if !args.config.is_empty() {
        let loaded = sources::load_paths(&args.config)?;
        let count = loaded.len();
        sources::apply_loaded(&mut store, loaded)?;
        tracing::info!(objects = count, "configuration loaded");
    }
    let state = load_state(&args)?;
    // A copy: the root is handed to the CA again below if a rotation resumes.
    let root = LocalCa::from_pem(&state.root.root_pem(), state.root.key_pem())?;
    let mut authority = CertificateAuthority::new(
        root,
        &args.istiod.mesh.trust_domain,
        args.istiod.certificate_ttl,
    );
    // A rotation begun before this start resumes in the phase its times give it.
    if let Some(dir) = &args.state_dir
        && let Some(plan) = root_rotation::load(dir)?
    {
        authority.adopt(state.root, Some(plan), SystemClock.now());
        tracing::info!(phase = %root_rotation::status(dir, SystemClock.now())?, "resuming a root rotation");
    }
    if let Some(path) = &args.write_root_cert {
        std::fs::write(path, authority.trust_bundle())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let seams = Seams::real(1);
    let istiod = istiod::run(args.istiod, seams, authority, &state.token_secret).await?;
    if let Some(dir) = &args.state_dir {
        istiod.follow_state_dir(dir.clone());
    }
    let shared = SharedStore::new(store);
    istiod.follow(shared.clone());
    let poll = args.config_poll.unwrap_or(DEFAULT_CONFIG_POLL);
    if let Some(watch) = watch.filter(|_| !args.config.is_empty() && !poll.is_zero()) {
        follow_config(watch, poll, shared.clone())?;
    }
    if args.kube {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (--kube)")?;
        let feeder = shared.clone();
        tokio::spawn(sources::kube::run(
            client,
            shared.inner(),
            move |report| match report {
                Report::Changed => feeder.mark_changed(),
                Report::Rejected(err) => tracing::warn!(%err, "object rejected"),
                Report::Unreadable { key, error } => {
                    tracing::warn!(object = %key, %error, "object unreadable; left out")
                }
                Report::WatchFailed { kind, error } => {
                    tracing::warn!(?kind, %error, "watch failed; it re-lists")
                }
            },
        ));
    }
    let why = stop.await;
    // Nothing istiod holds needs finishing: listeners close and xDS streams end at once, and
    // each ztunnel keeps its last configuration and certificates while it reconnects.
    tracing::info!("{why}; draining: listeners close and xDS streams end now");
    istiod.shutdown();
    tracing::info!("drained; exiting");
    Ok(())
}

/// How often a served `--config-dir` is checked for edits unless `--config-poll` says.
const DEFAULT_CONFIG_POLL: Duration = Duration::from_secs(1);

/// Re-reads the configuration files whenever they change, on a thread of its own (the reads
/// block; the runtime's workers keep serving xDS and certificates meanwhile).
fn follow_config(
    mut watch: sources::watch::ConfigWatch,
    poll: Duration,
    shared: SharedStore,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(poll);
                let Some(loaded) = watch.changed() else {
                    continue;
                };
                let synced = loaded.and_then(|loaded| {
                    let count = loaded.len();
                    let store = shared.inner();
                    let mut store = store
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    sources::watch::sync_loaded(&mut store, loaded).map(|c| (c, count))
                });
                match synced {
                    Ok((true, count)) => {
                        shared.mark_changed();
                        tracing::info!(objects = count, "configuration changed; reloaded");
                    }
                    Ok((false, _)) => {
                        tracing::debug!("configuration files touched; nothing changed")
                    }
                    Err(error) => tracing::warn!(
                        error = %error,
                        "configuration not reloaded: still serving the last good one"
                    ),
                }
            }
        })
        .context("starting the config-dir watch")?;
    Ok(())
}

/// `ok: N objects` for the manifests read, then what the store generated from them (waypoint
/// deployments), so a Deployment nobody wrote is not a surprise later.
fn check_summary(store: &Store) -> String {
    let mut line = format!("ok: {} objects", store.len());
    let generated: Vec<String> = store.generated().map(|o| o.key().to_string()).collect();
    if !generated.is_empty() {
        line.push_str(&format!(
            "; {} generated for waypoints: {}",
            generated.len(),
            generated.join(", ")
        ));
    }
    line
}

/// Errors are one line on stderr (`istiod: …` with its causes), exit status 1; never a
/// backtrace, whatever `RUST_BACKTRACE` says.
fn main() {
    if let Err(err) = run() {
        eprintln!("istiod: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    dataplane::logging::init();
    let mut args = parse_args(std::env::args().skip(1).collect())?;
    // The only place the environment is read: the library takes the flags as configuration.
    let features = Features::from_lookup(|name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    })?;
    args.istiod.mesh.features = features;
    if args.check {
        if args.config.is_empty() {
            bail!("--check needs --config-dir\n{USAGE}");
        }
        let store = sources::validate(&args.config, store_config(&args)?)?;
        println!("{}", check_summary(&store));
        return Ok(());
    }
    if let Some(question) = &args.explain {
        if args.config.is_empty() || question.from.is_empty() || question.to.is_empty() {
            bail!("explain needs --config-dir, --from and --to\n{USAGE}");
        }
        let store = sources::validate(&args.config, store_config(&args)?)?;
        let snapshot = control::translate::snapshot(&store, &args.istiod.mesh);
        let answer = control::explain::explain(&snapshot, &args.istiod.mesh, question)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            print!("{}", control::explain::render(&answer));
        }
        return Ok(());
    }
    if let Some(step) = &args.rotate_root {
        let Some(dir) = &args.state_dir else {
            bail!("rotate-root needs the --state-dir of the istiod whose root it rotates");
        };
        let now = SystemClock.now();
        let phase = match step.as_str() {
            "begin" => root_rotation::begin(
                dir,
                &args.istiod.mesh.trust_domain,
                now,
                args.activate_after
                    .unwrap_or(root_rotation::DEFAULT_ACTIVATE_AFTER),
                args.overlap.unwrap_or(root_rotation::DEFAULT_OVERLAP),
            )?,
            "advance" => root_rotation::advance(dir, now)?,
            "finish" => root_rotation::finish(dir, now)?,
            _ => root_rotation::status(dir, now)?,
        };
        println!("{phase}");
        return Ok(());
    }
    if let Some(node) = &args.issue_token {
        let Some(dir) = &args.state_dir else {
            bail!("--issue-token needs the --state-dir of the istiod that will accept it");
        };
        let state =
            state_dir::load_or_create(dir, &args.istiod.mesh.trust_domain, SystemClock.now())?;
        let identity = args
            .identity
            .as_deref()
            .map(|i| {
                i.parse::<Identity>()
                    .with_context(|| format!("--identity {i:?}"))
            })
            .transpose()?;
        let ttl = args
            .token_ttl
            .unwrap_or(Duration::from_secs(30 * 24 * 3600));
        let token = TokenSigner::new(&state.token_secret).issue(
            node,
            identity.as_ref(),
            ttl,
            SystemClock.now(),
        );
        println!("{token}");
        return Ok(());
    }
    args.istiod.descriptors = dataplane::process::descriptor_plan();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}
