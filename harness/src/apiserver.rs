//! A private Kubernetes control plane on loopback: etcd, kube-apiserver and (optionally)
//! kube-controller-manager, each on free 127.0.0.1 ports, in a directory of their own that
//! holds the certificates, the token file, one kubeconfig per user, the etcd data and each
//! process's log. Dropping the [`Cluster`] kills what it started and removes the directory
//! (kept, and named on stderr, when the test is panicking, for its logs); one never dropped
//! (shared from a static) is cleaned up when the process exits ([`crate::at_exit`]).
//!
//! Users: an admin (`system:masters`), the controller manager (also `system:masters`: it runs
//! every controller with its own credentials), and istiod, whose identity is chosen by the
//! caller and has no rights until something binds a role to it — which is what a test of
//! istiod's RBAC needs.
//!
//! The API server can be killed and started again on the same port against the same etcd,
//! the way a control-plane upgrade or crash looks to a client.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::Error;
use crate::certs::{self, CertFiles};
use crate::components::Components;
use crate::kubeconfig::{self, Credentials, TokenUser};
use crate::ports::free_port;
use crate::process::Process;

/// How long the API server may take to answer `/readyz`: about 5 s on an idle machine, much
/// more on two cores shared with a build.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of each log a failure message quotes.
const LOG_TAIL: u64 = 3000;
/// The Service range; the serving certificate names its first address.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Also run kube-controller-manager: default ServiceAccounts in new namespaces (the API
    /// server refuses pods until theirs exists), EndpointSlices for Services.
    pub controller_manager: bool,
    /// istiod's identity, with no rights of its own.
    pub istiod: TokenUser,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            controller_manager: true,
            istiod: TokenUser::service_account("istio-system", "istiod"),
        }
    }
}

/// A running private control plane. See the module docs.
pub struct Cluster {
    components: Components,
    dir: PathBuf,
    certs: CertFiles,
    apiserver_port: u16,
    etcd_url: String,
    admin: Credentials,
    istiod: Credentials,
    controller_manager_kubeconfig: PathBuf,
    controller_manager: Option<Process>,
    apiserver: Option<Process>,
    etcd: Option<Process>,
}

/// A fresh run directory under the system temp dir, after removing those of test processes
/// that are gone (a shared cluster in a static is never dropped, so its directory stays).
fn run_dir() -> Result<PathBuf, Error> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    let prefix = "real-components-";
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok());
            // SAFETY: kill with signal 0 only checks whether the pid exists.
            if let Some(pid) = pid
                && unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    crate::at_exit::dir(dir.clone());
    Ok(dir)
}

fn spawn(name: &str, command: Command, dir: &Path) -> Result<Process, Error> {
    let log = dir.join(format!("{name}.log"));
    Process::spawn(name, command, &log).map_err(|source| Error::Io {
        what: format!("starting {name}"),
        source,
    })
}

impl Cluster {
    /// Starts etcd and the API server, waits until the API server is ready, then starts the
    /// controller manager (if asked), which needs no waiting for: what it does, a test waits
    /// for by its effects.
    pub async fn start(components: &Components, options: Options) -> Result<Cluster, Error> {
        let dir = run_dir()?;
        let certs = certs::write(&dir)?;
        let io = |what: &str| {
            let what = what.to_string();
            move |source| Error::Io { what, source }
        };
        let etcd_port = free_port().map_err(io("finding a port for etcd"))?;
        let peer_port = free_port().map_err(io("finding a port for etcd peers"))?;
        let apiserver_port = free_port().map_err(io("finding a port for the API server"))?;
        let server = format!("https://127.0.0.1:{apiserver_port}");

        let credentials = |name: &str, user: TokenUser| -> Result<Credentials, Error> {
            Ok(Credentials {
                user,
                token: kubeconfig::new_token()?,
                kubeconfig: dir.join(format!("{name}.kubeconfig")),
            })
        };
        let admin = credentials("admin", TokenUser::new("admin", &["system:masters"]))?;
        let controller_manager = credentials(
            "kube-controller-manager",
            TokenUser::new("system:kube-controller-manager", &["system:masters"]),
        )?;
        let istiod = credentials("istiod", options.istiod)?;
        let mut tokens = String::new();
        for c in [&admin, &controller_manager, &istiod] {
            tokens.push_str(&kubeconfig::token_line(c));
            kubeconfig::write(
                &c.kubeconfig,
                &server,
                &certs.ca,
                &c.user.username,
                &c.token,
            )?;
        }
        crate::write_file(&dir.join("tokens.csv"), tokens.as_bytes())?;

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(&components.etcd);
        etcd.arg("--name=harness")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=harness={peer_url}"))
            .arg("--log-level=warn");
        let etcd = spawn("etcd", etcd, &dir)?;

        let mut cluster = Cluster {
            components: components.clone(),
            dir,
            certs,
            apiserver_port,
            etcd_url,
            admin,
            istiod,
            controller_manager_kubeconfig: controller_manager.kubeconfig,
            controller_manager: None,
            apiserver: None,
            etcd: Some(etcd),
        };
        cluster.start_apiserver().await?;
        if options.controller_manager {
            let command = cluster.controller_manager_command();
            cluster.controller_manager =
                Some(spawn("kube-controller-manager", command, &cluster.dir)?);
        }
        Ok(cluster)
    }

    fn apiserver_command(&self) -> Command {
        let certs = &self.certs;
        let mut command = Command::new(&self.components.kube_apiserver);
        command
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.apiserver_port))
            .arg(format!("--tls-cert-file={}", certs.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                certs.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", certs.ca.display()))
            .arg(format!(
                "--token-auth-file={}",
                self.dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=Node,RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                certs.service_account_public_key.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                certs.service_account_key.display()
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            // No Endpoints for the `kubernetes` Service pointing at 127.0.0.1.
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false");
        command
    }

    fn controller_manager_command(&self) -> Command {
        let mut command = Command::new(&self.components.kube_controller_manager);
        command
            .arg(format!(
                "--kubeconfig={}",
                self.controller_manager_kubeconfig.display()
            ))
            // No kubelets report here: node lifecycle would taint and evict, node IPAM wants
            // a cluster CIDR.
            .arg("--controllers=*,-nodelifecycle,-nodeipam")
            .arg(format!(
                "--service-account-private-key-file={}",
                self.certs.service_account_key.display()
            ))
            .arg(format!("--root-ca-file={}", self.certs.ca.display()))
            .arg("--leader-elect=false")
            // Its own HTTPS endpoint is not needed, and a fixed port would collide between
            // two clusters.
            .arg("--secure-port=0");
        command
    }

    /// Starts the API server (again) on its port and waits until `/readyz` says ok.
    pub async fn start_apiserver(&mut self) -> Result<(), Error> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let command = self.apiserver_command();
        self.apiserver = Some(spawn("kube-apiserver", command, &self.dir)?);
        self.wait_ready().await
    }

    /// Kills the API server (SIGKILL, as a crash) and reaps it; etcd and the controller
    /// manager keep running.
    pub fn kill_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.kill();
        }
    }

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let client = self.admin_client().await?;
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < READY_TIMEOUT {
            for process in [&mut self.etcd, &mut self.apiserver].into_iter().flatten() {
                if let Some(status) = process.exited() {
                    return Err(Error::Exited {
                        what: process.name().to_string(),
                        status: status.to_string(),
                        log: process.log_tail(LOG_TAIL),
                    });
                }
            }
            let probe = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::Kube(kube::Error::HttpError(e)))?;
            match client.request_text(probe).await {
                Ok(text) if text.trim() == "ok" => return Ok(()),
                Ok(text) => last = text,
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::NotReady {
            what: "kube-apiserver".into(),
            after: READY_TIMEOUT,
            last,
            log: self.logs(),
        })
    }

    /// The tail of every process's log, for a failure message.
    pub fn logs(&self) -> String {
        [&self.etcd, &self.apiserver, &self.controller_manager]
            .into_iter()
            .flatten()
            .map(|p| format!("--- {} ---\n{}", p.name(), p.log_tail(LOG_TAIL)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The API server's URL.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// The directory holding certificates, kubeconfigs, data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA that signed the API server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.certs.ca
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin.kubeconfig
    }

    /// istiod's kubeconfig: its own identity, with only the rights bound to it.
    pub fn istiod_kubeconfig(&self) -> &Path {
        &self.istiod.kubeconfig
    }

    pub fn istiod_user(&self) -> &TokenUser {
        &self.istiod.user
    }

    pub async fn admin_client(&self) -> Result<kube::Client, Error> {
        kubeconfig::client(&self.admin.kubeconfig).await
    }

    pub async fn istiod_client(&self) -> Result<kube::Client, Error> {
        kubeconfig::client(&self.istiod.kubeconfig).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Clients first, store last.
        for process in [
            &mut self.controller_manager,
            &mut self.apiserver,
            &mut self.etcd,
        ] {
            if let Some(mut p) = process.take() {
                p.kill();
            }
        }
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "harness: kept {} (logs of the failed test's cluster)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        crate::at_exit::forget_dir(&self.dir);
    }
}
