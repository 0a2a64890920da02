//! Command-line arguments to a checked configuration. Contradictory or impossible settings are
//! rejected here, with a message that says which flags to change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{EvaluatorArg, ModeArg, PolicyArgs, ServeArgs};
use crate::pipeline::Mode;
use crate::policy::source::Origin;
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
    pub policies: Origin,
    pub backend: Backend,
    pub cluster_snapshots: Vec<PathBuf>,
    pub mode: Mode,
    pub reload_interval: Duration,
    pub shutdown_timeout: Duration,
    pub max_concurrent: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::Warn => Mode::Warn,
            ModeArg::Dryrun => Mode::Dryrun,
        }
    }
}

pub fn policy_origin(args: &PolicyArgs) -> (Origin, Backend) {
    let origin = args
        .policies
        .clone()
        .map_or(Origin::Embedded, Origin::Directory);
    let backend = match args.evaluator {
        EvaluatorArg::Vm => Backend::Vm,
        EvaluatorArg::Interpreter => Backend::Interpreter,
    };
    (origin, backend)
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
                dir: args.dev_certs_dir.clone(),
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
        let (policies, backend) = policy_origin(&args.policy);
        Ok(ServeConfig {
            listen: args.listen,
            probe_listen: args.probe_listen,
            tls,
            policies,
            backend,
            cluster_snapshots: args.cluster_snapshot.clone(),
            mode: args.mode.into(),
            reload_interval: seconds("--reload-interval", args.reload_interval, 0.05)?,
            shutdown_timeout: seconds("--shutdown-timeout", args.shutdown_timeout, 0.0)?,
            max_concurrent: args.max_concurrent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn serve(args: &[&str]) -> Result<ServeConfig, ConfigError> {
        let mut full = vec!["mlguard", "serve"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Serve(s) => ServeConfig::from_args(&s),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_use_dev_certs_and_embedded_policies() {
        let c = serve(&[]).unwrap();
        assert_eq!(
            c.tls,
            TlsSource::Dev {
                dir: "certs".into()
            }
        );
        assert_eq!(c.policies, Origin::Embedded);
        assert_eq!(c.listen.port(), 8443);
        assert_eq!(c.probe_listen.port(), 8080);
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
        assert!(Cli::try_parse_from(["mlguard", "serve", "--tls-cert", "a.crt"]).is_err());
    }
}
