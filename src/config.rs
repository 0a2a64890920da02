//! Command-line arguments to a checked configuration. Contradictory or impossible settings are
//! rejected here, with a message that says which flags to change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::admission::Mode;
use crate::cli::{ClusterStateArg, DeadlineAnswer, EvaluatorArg, PolicyArgs, ServeArgs};
use crate::policy::layers::Layers;
use crate::policy::Backend;

#[derive(Debug, Clone, PartialEq)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Development certificates, created under this directory if needed.
    Dev {
        dir: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub probe_listen: SocketAddr,
    pub tls: TlsSource,
    pub policies: Layers,
    pub backend: Backend,
    pub cluster_snapshots: Vec<PathBuf>,
    /// Set when the cluster state is watched live; `cluster_snapshots` is then empty.
    pub live_cluster: Option<LiveSettings>,
    pub mode: Mode,
    pub reload_interval: Duration,
    pub shutdown_timeout: Duration,
    pub max_concurrent: usize,
    pub limits: ReviewLimits,
    /// Process memory, in bytes, past which policy evaluations fail (None: no limit).
    pub memory_limit: Option<u64>,
}

/// The bounds on one review (see `serve::handlers`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewLimits {
    /// From the request's headers to its answer.
    pub deadline: Duration,
    pub on_deadline: DeadlineAnswer,
    /// KiB the reviews in flight may take in all, by their size.
    pub memory_kib: u32,
    /// How long a body may take to arrive.
    pub body_timeout: Duration,
}

impl Default for ReviewLimits {
    fn default() -> Self {
        ReviewLimits {
            deadline: Duration::from_secs(3),
            on_deadline: DeadlineAnswer::Deny,
            memory_kib: 128 * 1024,
            body_timeout: Duration::from_secs(5),
        }
    }
}

/// Live cluster state settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// None: in-cluster configuration, else `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    pub reservation_ttl: Duration,
    /// How long after a reservation its pod is looked up to confirm it.
    pub confirm_delay: Duration,
}

/// Picks one source of cluster state. `in_cluster` is whether KUBERNETES_SERVICE_HOST is set.
/// Returns the live settings, or None when the snapshot files (possibly none) are the source.
pub fn cluster_source(
    args: &ServeArgs,
    in_cluster: bool,
) -> Result<Option<LiveSettings>, ConfigError> {
    let snapshots = !args.cluster_snapshot.is_empty();
    let live = match args.cluster_state {
        ClusterStateArg::Auto => {
            let live = in_cluster || args.kubeconfig.is_some();
            if live && snapshots {
                let why = if args.kubeconfig.is_some() {
                    "--kubeconfig is given"
                } else {
                    "mlguard runs in a cluster (KUBERNETES_SERVICE_HOST is set)"
                };
                return Err(ConfigError(format!(
                    "--cluster-snapshot is given but {why}, so the cluster state would also be watched live; pick one source: --cluster-state live (and drop --cluster-snapshot) or --cluster-state snapshot"
                )));
            }
            live
        }
        ClusterStateArg::Live => {
            if snapshots {
                return Err(ConfigError(
                    "--cluster-state live watches the API server; drop --cluster-snapshot, or use --cluster-state snapshot".into(),
                ));
            }
            true
        }
        ClusterStateArg::Snapshot | ClusterStateArg::None => {
            if args.kubeconfig.is_some() {
                return Err(ConfigError(format!(
                    "--kubeconfig is only used with live cluster state, not with --cluster-state {}",
                    if args.cluster_state == ClusterStateArg::None { "none" } else { "snapshot" }
                )));
            }
            if args.cluster_state == ClusterStateArg::Snapshot && !snapshots {
                return Err(ConfigError(
                    "--cluster-state snapshot needs at least one --cluster-snapshot file".into(),
                ));
            }
            if args.cluster_state == ClusterStateArg::None && snapshots {
                return Err(ConfigError(
                    "--cluster-state none ignores cluster state; drop --cluster-snapshot, or use --cluster-state snapshot".into(),
                ));
            }
            false
        }
    };
    if !live {
        return Ok(None);
    }
    let reservation_ttl = seconds("--quota-reservation-ttl", args.quota_reservation_ttl, 1.0)?;
    let confirm_delay = seconds("--quota-confirm-delay", args.quota_confirm_delay, 0.1)?;
    if confirm_delay >= reservation_ttl {
        return Err(ConfigError(format!(
            "--quota-confirm-delay ({}s) must be shorter than --quota-reservation-ttl ({}s): a reservation is confirmed before it expires",
            args.quota_confirm_delay, args.quota_reservation_ttl
        )));
    }
    Ok(Some(LiveSettings {
        kubeconfig: args.kubeconfig.clone(),
        reservation_ttl,
        confirm_delay,
    }))
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// The policy layers and evaluator the flags ask for.
pub fn policy_origin(args: &PolicyArgs) -> Result<(Layers, Backend), ConfigError> {
    if args.no_default_policies && args.policies.is_empty() {
        return Err(ConfigError(
            "--no-default-policies leaves no policies: give at least one --policies directory"
                .into(),
        ));
    }
    let layers = Layers::new(!args.no_default_policies, args.policies.clone());
    let backend = match args.evaluator {
        EvaluatorArg::Vm => Backend::Vm,
        EvaluatorArg::Interpreter => Backend::Interpreter,
    };
    Ok((layers, backend))
}

/// Where `serve` keeps development certificates when `--dev-certs-dir` is not given: one
/// directory per user, whatever the working directory, so the CA a client was told to trust
/// stays the same from one start to the next. `$XDG_STATE_HOME/mlguard/certs` (the XDG base
/// directory for state that persists between runs; only an absolute value counts, as the
/// specification says), else `$HOME/.local/state/mlguard/certs`, else `certs` in the working
/// directory when there is no home directory at all.
pub fn default_dev_certs_dir(
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(state) = absolute(xdg_state_home) {
        return state.join("mlguard").join("certs");
    }
    if let Some(home) = absolute(home) {
        return home.join(".local/state/mlguard/certs");
    }
    PathBuf::from("certs")
}

fn seconds(name: &str, value: f64, min: f64) -> Result<Duration, ConfigError> {
    if !value.is_finite() || value < min {
        return Err(ConfigError(format!(
            "{name} must be at least {min} seconds, got {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

impl ServeConfig {
    pub fn from_args(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        if args.listen == args.probe_listen && args.listen.port() != 0 {
            return Err(ConfigError(format!(
                "--listen and --probe-listen are both {}; the webhook (TLS) and the probes (plain HTTP) need separate ports",
                args.listen
            )));
        }
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None) => TlsSource::Dev {
                dir: args.dev_certs_dir.clone().unwrap_or_else(|| {
                    default_dev_certs_dir(
                        std::env::var_os("XDG_STATE_HOME"),
                        std::env::var_os("HOME"),
                    )
                }),
            },
            _ => {
                return Err(ConfigError(
                    "--tls-cert and --tls-key go together; give both, or neither for development certificates".into(),
                ))
            }
        };
        if args.max_concurrent == 0 {
            return Err(ConfigError("--max-concurrent must be at least 1".into()));
        }
        if args.review_memory < 128 {
            return Err(ConfigError(
                "--review-memory must be at least 128 (MiB): the share of a review of the largest size mlguard accepts (8 MiB of JSON, 16 bytes of memory a byte)".into(),
            ));
        }
        if args.memory_limit > 0 && args.memory_limit < u64::from(args.review_memory) + 32 {
            return Err(ConfigError(format!(
                "--memory-limit ({} MiB) must leave room for --review-memory ({} MiB) and the process itself (32 MiB)",
                args.memory_limit, args.review_memory
            )));
        }
        let deadline = seconds("--review-deadline", args.review_deadline, 0.05)?;
        if deadline >= Duration::from_secs(30) {
            return Err(ConfigError(
                "--review-deadline must be below 30 seconds, the longest webhook timeout Kubernetes allows; keep it below the webhook's timeoutSeconds".into(),
            ));
        }
        let (policies, backend) = policy_origin(&args.policy)?;
        let live_cluster =
            cluster_source(args, std::env::var_os("KUBERNETES_SERVICE_HOST").is_some())?;
        Ok(ServeConfig {
            listen: args.listen,
            probe_listen: args.probe_listen,
            tls,
            policies,
            backend,
            cluster_snapshots: args.cluster_snapshot.clone(),
            live_cluster,
            mode: args.mode,
            reload_interval: seconds("--reload-interval", args.reload_interval, 0.05)?,
            shutdown_timeout: seconds("--shutdown-timeout", args.shutdown_timeout, 0.0)?,
            max_concurrent: args.max_concurrent,
            memory_limit: (args.memory_limit > 0).then(|| args.memory_limit * 1024 * 1024),
            limits: ReviewLimits {
                deadline,
                on_deadline: args.on_deadline,
                memory_kib: args.review_memory.saturating_mul(1024),
                body_timeout: seconds("--body-timeout", args.body_timeout, 0.05)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory arithmetic of the README's Operating section: the largest review fits the
    /// review memory; the review memory and the process fit the evaluation memory limit; and
    /// that limit sits below the container's limit in the manifests, with room for what is
    /// not counted (cluster state of a mid-size cluster, TLS buffers, the allocator's own).
    #[test]
    fn the_memory_bounds_fit_inside_one_another() {
        let config = serve(&[]).unwrap();
        let largest = crate::serve::memory_cost_kib(crate::serve::MAX_BODY_BYTES);
        assert!(largest <= config.limits.memory_kib, "{largest} KiB");
        let limit = config.memory_limit.unwrap();
        assert!(limit >= (u64::from(config.limits.memory_kib) + 32 * 1024) * 1024);
        let deployment = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/manifests/common/deployment.yaml"
        ))
        .unwrap();
        let container_limit: u64 = deployment
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("limits:"))
            .find_map(|l| l.trim().strip_prefix("memory: "))
            .and_then(|m| m.strip_suffix("Mi"))
            .and_then(|m| m.parse().ok())
            .expect("a memory limit in Mi");
        assert!(
            container_limit * 1024 * 1024 >= limit + 64 * 1024 * 1024,
            "container limit {container_limit} Mi, evaluation limit {} MiB",
            limit / 1024 / 1024
        );
    }
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut full = vec!["mlguard", "serve"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Serve(s) => s,
            _ => unreachable!(),
        }
    }

    fn source(args: &[&str], in_cluster: bool) -> Result<Option<LiveSettings>, ConfigError> {
        cluster_source(&serve_args(args), in_cluster)
    }

    #[test]
    fn cluster_state_auto_is_live_in_a_cluster_or_with_a_kubeconfig() {
        assert_eq!(source(&[], false).unwrap(), None);
        let live = source(&[], true).unwrap().unwrap();
        assert_eq!(live.kubeconfig, None);
        assert_eq!(live.reservation_ttl, Duration::from_secs(30));
        assert_eq!(live.confirm_delay, Duration::from_secs(2));
        let live = source(&["--kubeconfig", "kc.yaml"], false)
            .unwrap()
            .unwrap();
        assert_eq!(live.kubeconfig, Some(PathBuf::from("kc.yaml")));
        assert_eq!(
            source(&["--cluster-snapshot", "s.yaml"], false).unwrap(),
            None
        );
        assert_eq!(source(&["--cluster-state", "none"], true).unwrap(), None);
        assert_eq!(
            source(
                &[
                    "--cluster-state",
                    "snapshot",
                    "--cluster-snapshot",
                    "s.yaml"
                ],
                true
            )
            .unwrap(),
            None
        );
        assert!(source(&["--cluster-state", "live"], false)
            .unwrap()
            .is_some());
    }

    #[test]
    fn two_sources_of_cluster_state_are_rejected() {
        let e = source(&["--cluster-snapshot", "s.yaml"], true).unwrap_err();
        assert!(e.to_string().contains("pick one source"), "{e}");
        let e = source(
            &["--cluster-snapshot", "s.yaml", "--kubeconfig", "k"],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--kubeconfig is given"), "{e}");
        assert!(source(
            &["--cluster-state", "live", "--cluster-snapshot", "s.yaml"],
            false
        )
        .is_err());
        assert!(source(&["--cluster-state", "snapshot"], false).is_err());
        assert!(source(&["--cluster-state", "none", "--kubeconfig", "k"], false).is_err());
        assert!(source(
            &["--cluster-state", "live", "--quota-reservation-ttl", "0"],
            false
        )
        .is_err());
        let e = source(
            &[
                "--cluster-state",
                "live",
                "--quota-reservation-ttl",
                "2",
                "--quota-confirm-delay",
                "2",
            ],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be shorter"), "{e}");
    }

    fn serve(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        ServeConfig::from_args(&serve_args(args))
    }

    #[test]
    fn defaults_use_dev_certs_and_embedded_policies() {
        let c = serve(&[]).unwrap();
        assert!(
            matches!(&c.tls, TlsSource::Dev { dir } if dir.ends_with("mlguard/certs") || dir == std::path::Path::new("certs")),
            "{:?}",
            c.tls
        );
        let given = serve(&["--dev-certs-dir", "here"]).unwrap();
        assert_eq!(given.tls, TlsSource::Dev { dir: "here".into() });
        assert_eq!(c.policies, Layers::new(true, vec![]));
        assert_eq!(c.listen.port(), 8443);
        assert_eq!(c.probe_listen.port(), 8080);
    }

    #[test]
    fn policy_layers_are_the_defaults_then_each_directory() {
        let c = serve(&["--policies", "a", "--policies", "b"]).unwrap();
        assert_eq!(c.policies.names(), ["embedded", "a", "b"]);
        let c = serve(&["--no-default-policies", "--policies", "a"]).unwrap();
        assert_eq!(c.policies.names(), ["a"]);
    }

    #[test]
    fn dev_certs_default_to_the_users_state_directory() {
        let d = |x: Option<&str>, h: Option<&str>| {
            default_dev_certs_dir(x.map(Into::into), h.map(Into::into))
        };
        assert_eq!(
            d(Some("/s"), Some("/home/u")),
            PathBuf::from("/s/mlguard/certs")
        );
        assert_eq!(
            d(None, Some("/home/u")),
            PathBuf::from("/home/u/.local/state/mlguard/certs")
        );
        // A relative XDG_STATE_HOME is invalid and ignored, as the specification says.
        assert_eq!(
            d(Some("rel"), Some("/home/u")),
            PathBuf::from("/home/u/.local/state/mlguard/certs")
        );
        assert_eq!(d(Some(""), None), PathBuf::from("certs"));
    }

    #[test]
    fn contradictions_are_rejected() {
        let e = serve(&[
            "--listen",
            "127.0.0.1:9000",
            "--probe-listen",
            "127.0.0.1:9000",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("separate ports"));
        assert!(serve(&["--reload-interval", "0"]).is_err());
        let e = serve(&["--no-default-policies"]).unwrap_err();
        assert!(e.to_string().contains("at least one --policies"), "{e}");
        assert!(Cli::try_parse_from(["mlguard", "serve", "--tls-cert", "a.crt"]).is_err());
    }
}
