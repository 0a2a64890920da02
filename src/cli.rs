//! Command line. Every `serve` flag can also be set with an `MLGUARD_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::admission::Mode;

#[derive(Debug, Parser)]
#[command(name = "mlguard", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("MLGUARD_GIT_COMMIT"), ")"),
          about = "Kubernetes admission webhook for ML and GPU workloads, with policies in Rego")]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, env = "MLGUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter (e.g. `info`, `mlguard=debug`); RUST_LOG is used when this is unset.
    #[arg(long, global = true, env = "MLGUARD_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum EvaluatorArg {
    Vm,
    Interpreter,
}

/// Where `data.mlguard.cluster` comes from.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ClusterStateArg {
    /// Live in a cluster (KUBERNETES_SERVICE_HOST set) or with --kubeconfig; else the
    /// --cluster-snapshot files if given; else none.
    Auto,
    /// Watch ResourceQuotas, Nodes and Namespaces through the API server.
    Live,
    /// The --cluster-snapshot files, read at start.
    Snapshot,
    /// No cluster state: quota and node checks see an empty cluster.
    None,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook server.
    Serve(ServeArgs),
    /// Write a CA and a serving certificate for a Service (ca.crt, tls.crt, tls.key).
    Certs(CertsArgs),
    /// Check manifests against the policies, as the API server would admit them.
    Audit(AuditArgs),
    /// Run a policy set's tests: YAML case files and Rego unit tests (`*_test.rego`).
    Test(TestArgs),
    /// Time a policy set on manifests, in-process: reviews/s, latency and memory per review,
    /// in total and per policy.
    Bench(BenchArgs),
    /// The webhook configurations' rules and GPU matchConditions (CEL), derived from the
    /// policies' GPU resource names and workload kinds table: print them, or write or check
    /// the repository's manifests and Helm chart.
    Manifests(ManifestsArgs),
    /// Print the version and the git commit it was built from.
    Version,
    /// Print a shell completion script: `mlguard completions bash > ~/.local/share/bash-completion/completions/mlguard`.
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct ManifestsArgs {
    #[command(subcommand)]
    pub action: ManifestsAction,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ManifestsAction {
    /// Print the GPU matchCondition's CEL expression (the fail-open webhook uses its negation).
    MatchConditions,
    /// Print the rules of the GPU webhooks, as YAML.
    Rules,
    /// Write manifests/common/webhooks.yaml, manifests/components/all-objects and
    /// charts/mlguard/templates/_match.tpl under the repository ROOT.
    Write {
        #[arg(default_value = ".")]
        root: PathBuf,
    },
    /// Exit 1 when the files under ROOT differ from what `write` would write.
    Check {
        #[arg(default_value = ".")]
        root: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "mlguard", out);
}

#[derive(Debug, Args, Clone)]
pub struct PolicyArgs {
    /// A directory of .rego and data files layered over the embedded default policies: a file
    /// whose package is a default policy's replaces that policy, its data files are merged
    /// over the defaults' configuration, anything else adds. Repeatable, each directory
    /// layered over the ones before; environment variable: comma-separated.
    #[arg(long, env = "MLGUARD_POLICIES", value_delimiter = ',')]
    pub policies: Vec<PathBuf>,
    /// Leave out the embedded default policies: the first --policies directory is then the
    /// whole base set.
    #[arg(long, env = "MLGUARD_NO_DEFAULT_POLICIES")]
    pub no_default_policies: bool,
    /// Policy evaluator: the bytecode VM (fast) or the interpreter (every Rego construct).
    /// The VM falls back to the interpreter by itself when a policy needs it.
    #[arg(long, env = "MLGUARD_EVALUATOR", value_enum, default_value_t = EvaluatorArg::Vm)]
    pub evaluator: EvaluatorArg,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// TLS address for POST /mutate and /validate.
    #[arg(long, env = "MLGUARD_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz, /metrics and /status.
    #[arg(long, env = "MLGUARD_PROBE_LISTEN", default_value = "0.0.0.0:8080")]
    pub probe_listen: SocketAddr,
    /// Serving certificate (PEM). Without it, development certificates are used.
    #[arg(long, env = "MLGUARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the serving certificate (PEM).
    #[arg(long, env = "MLGUARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where development certificates are written and reused [default:
    /// $XDG_STATE_HOME/mlguard/certs, else ~/.local/state/mlguard/certs: the same directory
    /// wherever `serve` is started].
    #[arg(long, env = "MLGUARD_DEV_CERTS_DIR")]
    pub dev_certs_dir: Option<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Cluster state file (ResourceQuota, Node, Namespace as `kubectl get -o yaml` prints them).
    /// Repeatable; environment variable: comma-separated.
    #[arg(long, env = "MLGUARD_CLUSTER_SNAPSHOT", value_delimiter = ',')]
    pub cluster_snapshot: Vec<PathBuf>,
    /// Source of the cluster state: auto, live (watch the API server), snapshot or none.
    #[arg(long, env = "MLGUARD_CLUSTER_STATE", value_enum, default_value_t = ClusterStateArg::Auto)]
    pub cluster_state: ClusterStateArg,
    /// Kubeconfig for the live cluster state when not running in a cluster; implies live
    /// state under `--cluster-state auto`.
    #[arg(long, env = "MLGUARD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds a quota reservation for an admitted pod is kept if the ResourceQuota status
    /// never shows the pod (for example when a later admission step rejected it).
    #[arg(long, env = "MLGUARD_QUOTA_RESERVATION_TTL", default_value_t = 30.0)]
    pub quota_reservation_ttl: f64,
    /// Seconds after admitting a pod that mlguard looks the pod up to confirm its quota
    /// reservation; a reservation whose pod does not exist then (a review that did not come
    /// from the API server) is dropped. Shorter than --quota-reservation-ttl.
    #[arg(long, env = "MLGUARD_QUOTA_CONFIRM_DELAY", default_value_t = 2.0)]
    pub quota_confirm_delay: f64,
    /// Caps every policy's enforcement action: enforce (as configured), warn or dryrun.
    #[arg(long, env = "MLGUARD_MODE", value_enum, default_value_t = Mode::Enforce)]
    pub mode: Mode,
    /// How often certificate and policy files are checked for changes, in seconds.
    #[arg(long, env = "MLGUARD_RELOAD_INTERVAL", default_value_t = 2.0)]
    pub reload_interval: f64,
    /// Longest time to wait for in-flight requests on shutdown, in seconds.
    #[arg(long, env = "MLGUARD_SHUTDOWN_TIMEOUT", default_value_t = 25.0)]
    pub shutdown_timeout: f64,
    /// Reviews evaluated at once; further ones wait their turn.
    #[arg(long, env = "MLGUARD_MAX_CONCURRENT", default_value_t = 64)]
    pub max_concurrent: usize,
    /// Seconds a review may take, from its headers to its answer (waiting for a turn
    /// included); keep it below the webhook's timeoutSeconds (5 in the manifests).
    #[arg(long, env = "MLGUARD_REVIEW_DEADLINE", default_value_t = 3.0)]
    pub review_deadline: f64,
    /// The answer when a review's deadline passes: deny (refuse, naming the deadline) or warn
    /// (admit with a warning and an audit annotation that no check ran). Never a silent allow.
    #[arg(long, env = "MLGUARD_ON_DEADLINE", value_enum, default_value_t = DeadlineAnswer::Deny)]
    pub on_deadline: DeadlineAnswer,
    /// MiB the reviews in flight may take in all, counted from their size (see the README's
    /// Operating section); a review waits for its share, within its deadline. At least 128,
    /// the share of the largest review.
    #[arg(long, env = "MLGUARD_REVIEW_MEMORY", default_value_t = 128)]
    pub review_memory: u32,
    /// Seconds a request body may take to arrive.
    #[arg(long, env = "MLGUARD_BODY_TIMEOUT", default_value_t = 5.0)]
    pub body_timeout: f64,
    /// MiB of memory the process may use before policy evaluations stop with an error (a
    /// denial, or a refused policy set at load) instead of growing further; keep it below the
    /// container's memory limit (256Mi in the manifests). 0: no limit.
    #[arg(long, env = "MLGUARD_MEMORY_LIMIT", default_value_t = 192)]
    pub memory_limit: u64,
}

/// What a review whose deadline passed is answered.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum DeadlineAnswer {
    #[default]
    Deny,
    Warn,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Service name the API server calls.
    #[arg(long, default_value = "mlguard")]
    pub service: String,
    /// Namespace of the Service.
    #[arg(long, default_value = "mlguard-system")]
    pub namespace: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
    Junit,
    /// wgpolicyk8s.io/v1alpha2 PolicyReports (one per namespace) and a ClusterPolicyReport,
    /// as a YAML stream for `kubectl apply -f -`.
    #[value(name = "policyreport")]
    PolicyReport,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Manifest files or directories (walked recursively); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required_unless_present = "cluster")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Cluster state file(s), as for `serve`.
    #[arg(long, value_delimiter = ',', conflicts_with = "cluster")]
    pub cluster_snapshot: Vec<PathBuf>,
    /// Read the cluster state (quotas, nodes, namespaces) from the API server. Without -f,
    /// audit the Pods and Jobs that run in the cluster (of --namespace, or all namespaces).
    #[arg(long)]
    pub cluster: bool,
    /// kubeconfig for --cluster [default: in-cluster, $KUBECONFIG or ~/.kube/config].
    #[arg(long, requires = "cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace for manifests that do not name one [default: default]; with --cluster and
    /// no -f, the only namespace whose Pods and Jobs are audited.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Report format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Print the mutated manifests as YAML after the report.
    #[arg(long)]
    pub show_patched: bool,
    /// Text report: list only the objects that would be denied or are in error, then the
    /// summary line (which still counts every object).
    #[arg(long)]
    pub failures_only: bool,
    /// Caps every policy's enforcement action, as `serve --mode` does.
    #[arg(long, value_enum, default_value_t = Mode::Enforce)]
    pub mode: Mode,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Case files or directories of case files. The policy directory's Rego unit tests
    /// (`*_test.rego`) run as well.
    pub cases: Vec<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BenchOutput {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Manifest files or directories (walked recursively; AdmissionReview files are used as
    /// they are); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Cluster state file(s), as for `serve`.
    #[arg(long, value_delimiter = ',')]
    pub cluster_snapshot: Vec<PathBuf>,
    /// Namespace for objects that do not name one.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// How many times every manifest is reviewed (mutate and validate each time).
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub iterations: usize,
    /// Threads reviewing at once.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub concurrency: usize,
    /// Caps every policy's enforcement action, as `serve --mode` does.
    #[arg(long, value_enum, default_value_t = Mode::Enforce)]
    pub mode: Mode,
    /// Report format.
    #[arg(long, short = 'o', value_enum, default_value_t = BenchOutput::Text)]
    pub output: BenchOutput,
}
