//! `mlguard audit`: manifests in, a report of what the API server would do with them out.
//!
//! - `crate::sim::manifests` reads files, directories and standard input into documents;
//! - `objects` turns each document into what the API server would admit for it: the Pod or
//!   Job itself, or the pods (and Jobs) a workload's controller would create;
//! - this module runs each through [`crate::sim::simulate`] (mutate, apply the patch,
//!   validate the mutated object) on all cores, with one evaluator built once;
//! - `report` renders the result as text, JSON or JUnit XML.
//!
//! Exit status: 0 when nothing would be denied, 1 when something would be, 2 when the audit
//! cannot run (unreadable or invalid file, bad policies or cluster snapshot).

pub mod objects;
pub mod policyreport;
pub mod report;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;

use crate::admission::{object_name, Mode};
use crate::cluster::snapshot;
use crate::policy::{Evaluator, PolicySet};
use crate::sim::{manifests, simulate, Request};
use objects::{Identity, Manifest, Plan, Source};

/// What happened to one manifest object, from most to least serious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// The API server would reject it (or a pod it creates).
    Denied,
    /// Admitted with warnings, or with records of what a dry-run policy would have done.
    Warned,
    /// Admitted with changes.
    Mutated,
    /// Admitted unchanged.
    Clean,
    /// A kind mlguard does not admit.
    Skipped,
    /// Not a Kubernetes object, or it could not be evaluated.
    Error,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Denied,
        Status::Warned,
        Status::Mutated,
        Status::Clean,
        Status::Skipped,
        Status::Error,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Denied => "denied",
            Status::Warned => "warned",
            Status::Mutated => "mutated",
            Status::Clean => "clean",
            Status::Skipped => "skipped",
            Status::Error => "error",
        }
    }
}

/// One patch operation and the policy that asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub policy: String,
    pub op: Json,
}

/// One object the API server admits: the manifest's Pod or Job, or a pod (or Job) its
/// controller creates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admission {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub denials: Vec<String>,
    pub warnings: Vec<String>,
    pub would_deny: Vec<String>,
    pub would_patch: Vec<String>,
    pub patch: Vec<Change>,
    /// The object after mutation, when there was a patch.
    pub patched: Option<Json>,
    /// What mutating the mutated object changed again: a policy that is not idempotent.
    pub repatch: Vec<Json>,
}

impl Admission {
    pub fn status(&self) -> Status {
        if !self.denials.is_empty() {
            Status::Denied
        } else if !self.warnings.is_empty()
            || !self.would_deny.is_empty()
            || !self.would_patch.is_empty()
            || !self.repatch.is_empty()
        {
            Status::Warned
        } else if !self.patch.is_empty() {
            Status::Mutated
        } else {
            Status::Clean
        }
    }

    /// "Pod ml/train-*".
    pub fn subject(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The audit of one manifest object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectReport {
    pub source: Source,
    /// Empty for documents that are not Kubernetes objects.
    pub id: Identity,
    pub status: Status,
    /// Why it was skipped, or what the error is.
    pub message: Option<String>,
    pub admissions: Vec<Admission>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub mode: Mode,
    /// The policies that ran on every admission (enabled, on CREATE), in the set's order.
    pub policies: Vec<String>,
    pub objects: Vec<ObjectReport>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub objects: usize,
    pub denied: usize,
    pub warned: usize,
    pub mutated: usize,
    pub clean: usize,
    pub skipped: usize,
    pub errors: usize,
}

impl Summary {
    pub fn count(&self, status: Status) -> usize {
        match status {
            Status::Denied => self.denied,
            Status::Warned => self.warned,
            Status::Mutated => self.mutated,
            Status::Clean => self.clean,
            Status::Skipped => self.skipped,
            Status::Error => self.errors,
        }
    }
}

impl Report {
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            objects: self.objects.len(),
            ..Default::default()
        };
        for o in &self.objects {
            *match o.status {
                Status::Denied => &mut s.denied,
                Status::Warned => &mut s.warned,
                Status::Mutated => &mut s.mutated,
                Status::Clean => &mut s.clean,
                Status::Skipped => &mut s.skipped,
                Status::Error => &mut s.errors,
            } += 1;
        }
        s
    }

    /// 1 when anything would be denied, else 0.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.objects.iter().any(|o| o.status == Status::Denied))
    }
}

/// What the API server does with `object` in `namespace` on CREATE.
fn simulate_create(
    evaluator: &Evaluator,
    object: &Json,
    namespace: &str,
    mode: Mode,
) -> Result<Admission, String> {
    let sim = simulate(evaluator, object, &Request::create(namespace), mode)?;
    let patch: Vec<Change> = sim
        .mutate
        .patch
        .iter()
        .flat_map(|p| &p.ops)
        .map(|(policy, op)| Change {
            policy: policy.clone(),
            op: crate::policy::patch::op_json(op),
        })
        .collect();
    Ok(Admission {
        kind: object["kind"].as_str().unwrap_or("").to_string(),
        namespace: namespace.to_string(),
        name: object_name(
            object["metadata"]["name"].as_str().unwrap_or(""),
            object["metadata"]["generateName"].as_str().unwrap_or(""),
        ),
        denials: sim.both(|v| &v.denials),
        warnings: sim.both(|v| &v.warnings),
        would_deny: sim.both(|v| &v.would_deny),
        would_patch: sim.both(|v| &v.would_patch),
        patched: (!patch.is_empty()).then_some(sim.mutated),
        patch,
        repatch: sim.second_patch,
    })
}

/// For a Pod that already runs: an evaluator whose quota figures no longer count the pod's
/// own charges, so that it is not found to exceed a quota it is itself part of.
fn credited(
    evaluator: &Evaluator,
    object: &Json,
    namespace: &str,
) -> Result<Option<Evaluator>, String> {
    if object["kind"] != "Pod" {
        return Ok(None);
    }
    let charges = crate::cluster::ledger::charges(&evaluator.cluster, namespace, object);
    if charges.is_empty() {
        return Ok(None);
    }
    let state = crate::cluster::ledger::credit(&evaluator.cluster, namespace, &charges);
    evaluator
        .with_namespace_quotas(Arc::new(state), namespace)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Everything the API server admits for one manifest object. A Job's pods are made from the
/// Job as it is stored, after mutation.
fn admissions(
    evaluator: &Evaluator,
    id: &Identity,
    plan: &Plan,
    mode: Mode,
) -> Result<Vec<Admission>, String> {
    let ns = id.namespace.as_str();
    match plan {
        Plan::Pod(pod) | Plan::Template(pod) => {
            Ok(vec![simulate_create(evaluator, pod, ns, mode)?])
        }
        Plan::Running(object) => {
            let credited = credited(evaluator, object, ns)?;
            Ok(vec![simulate_create(
                credited.as_ref().unwrap_or(evaluator),
                object,
                ns,
                mode,
            )?])
        }
        Plan::Job(job) => {
            let first = simulate_create(evaluator, job, ns, mode)?;
            let stored = first.patched.as_ref().unwrap_or(job);
            let pod = objects::pod_of_job(stored);
            let mut out = vec![first];
            if let Some(pod) = pod {
                out.push(simulate_create(evaluator, &pod, ns, mode)?);
            }
            Ok(out)
        }
        Plan::Workload { object, then } => {
            let mut out = vec![simulate_create(evaluator, object, ns, mode)?];
            if let Some(then) = then {
                out.extend(admissions(evaluator, id, then, mode)?);
            }
            Ok(out)
        }
    }
}

/// Audits one manifest document.
pub fn audit_one(
    evaluator: &Evaluator,
    source: Source,
    manifest: &Manifest,
    mode: Mode,
) -> ObjectReport {
    let report = |id: Identity, status, message: Option<String>, admissions| ObjectReport {
        source: source.clone(),
        id,
        status,
        message,
        admissions,
    };
    match manifest {
        Manifest::Invalid { id, message } => {
            report(id.clone(), Status::Error, Some(message.clone()), vec![])
        }
        Manifest::Skipped { id } => {
            let why = format!(
                "{} is not admitted by mlguard: only Pods and the workload kinds of the policies' kinds table (workloads.kinds) are audited",
                id.kind
            );
            report(id.clone(), Status::Skipped, Some(why), vec![])
        }
        Manifest::Audit { id, plan } => {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                admissions(evaluator, id, plan, mode)
            }))
            .unwrap_or_else(|_| Err("internal error while evaluating policies".into()));
            match result {
                Ok(list) => {
                    let status = list
                        .iter()
                        .map(Admission::status)
                        .min()
                        .unwrap_or(Status::Clean);
                    report(id.clone(), status, None, list)
                }
                Err(e) => report(
                    id.clone(),
                    Status::Error,
                    Some(format!("cannot evaluate: {e}")),
                    vec![],
                ),
            }
        }
    }
}

/// Audits every document on up to `threads` threads; the result keeps the input order.
/// `progress` is called from the calling thread with (done, total) while the work runs.
pub fn audit_all(
    evaluator: &Evaluator,
    documents: Vec<(Source, Json)>,
    namespace: &str,
    mode: Mode,
    threads: usize,
    progress: &dyn Fn(usize, usize),
) -> Report {
    let work: Vec<(Source, Manifest)> = documents
        .into_iter()
        .map(|(s, d)| {
            let kinds = &evaluator.set.kinds;
            let m = std::panic::catch_unwind(|| objects::classify(&d, namespace, kinds))
                .unwrap_or_else(|_| Manifest::Invalid {
                    id: Identity::default(),
                    message: "internal error while reading this object".into(),
                });
            (s, m)
        })
        .collect();
    audit_manifests(evaluator, work, mode, threads, progress)
}

/// Audits the Pods and Jobs already in the cluster (from [`crate::cluster::list`]), each as
/// if it were created again next to everything else that runs: a Pod's own quota charges are
/// credited back, and a Job is admitted alone (its pods are listed and audited themselves).
pub fn audit_running(
    evaluator: &Evaluator,
    objects: Vec<Json>,
    mode: Mode,
    threads: usize,
    progress: &dyn Fn(usize, usize),
) -> Report {
    let work = objects
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let source = Source {
                file: "cluster".into(),
                index: i + 1,
            };
            (source, objects::running(o))
        })
        .collect();
    audit_manifests(evaluator, work, mode, threads, progress)
}

fn audit_manifests(
    evaluator: &Evaluator,
    work: Vec<(Source, Manifest)>,
    mode: Mode,
    threads: usize,
    progress: &dyn Fn(usize, usize),
) -> Report {
    let total = work.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let threads = threads.clamp(1, total.max(1));
    let mut results: Vec<(usize, ObjectReport)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((source, manifest)) = work.get(i) else {
                            break;
                        };
                        out.push((i, audit_one(evaluator, source.clone(), manifest, mode)));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    out
                })
            })
            .collect();
        // Small inputs finish before the first tick and show no progress at all.
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if workers.iter().all(|w| w.is_finished()) {
                break;
            }
            progress(done.load(Ordering::Relaxed), total);
        }
        progress(total, total);
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    let policies = evaluator
        .set
        .policies
        .iter()
        .filter(|p| p.settings.applies_to("CREATE"))
        .map(|p| p.name.clone())
        .collect();
    Report {
        mode,
        policies,
        objects: results.into_iter().map(|(_, r)| r).collect(),
    }
}

fn color_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Progress on stderr (a terminal): a line rewritten in place, erased when done.
fn show_progress(done: usize, total: usize) {
    static SHOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let mut err = std::io::stderr().lock();
    if done < total {
        SHOWN.store(true, Ordering::Relaxed);
        let _ = write!(err, "\rmlguard audit: {done}/{total} objects");
    } else if SHOWN.load(Ordering::Relaxed) {
        let _ = write!(err, "\r\x1b[K");
    }
    let _ = err.flush();
}

/// How long `--cluster` may take to read the cluster.
const CLUSTER_READ_TIMEOUT: Duration = Duration::from_secs(60);

fn execute(args: &crate::cli::AuditArgs) -> Result<Report, String> {
    let documents = manifests::read(&args.files).map_err(|e| e.to_string())?;
    let (origin, backend) =
        crate::config::policy_origin(&args.policy).map_err(|e| e.to_string())?;
    let set = PolicySet::load(origin, backend).map_err(|e| format!("policies: {e}"))?;
    let audit_running_workloads = args.cluster && args.files.is_empty();
    let (cluster, running) = if args.cluster {
        crate::cluster::list::read_blocking(
            args.kubeconfig.as_deref(),
            args.namespace.as_deref(),
            audit_running_workloads,
            CLUSTER_READ_TIMEOUT,
        )
        .map_err(|e| format!("reading the cluster: {e}"))?
    } else {
        let state = snapshot::load(&args.cluster_snapshot).map_err(|e| e.to_string())?;
        (state, Vec::new())
    };
    for problem in &cluster.problems {
        eprintln!("mlguard audit: cluster state: {problem}");
    }
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let mut cluster = cluster;
    snapshot::add_manifest_claims(&mut cluster, documents.iter().map(|(_, d)| d), namespace);
    let evaluator = Evaluator::new(set, Arc::new(cluster)).map_err(|e| e.to_string())?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let progress: &dyn Fn(usize, usize) = if std::io::stderr().is_terminal() {
        &show_progress
    } else {
        &|_, _| {}
    };
    let mode = args.mode;
    if audit_running_workloads {
        return Ok(audit_running(&evaluator, running, mode, threads, progress));
    }
    Ok(audit_all(
        &evaluator, documents, namespace, mode, threads, progress,
    ))
}

/// `mlguard audit`.
pub fn run(args: &crate::cli::AuditArgs) -> ExitCode {
    if args.failures_only && args.output != crate::cli::OutputFormat::Text {
        eprintln!("mlguard audit: --failures-only applies to the text report (-o text)");
        return ExitCode::from(2);
    }
    if args.show_patched && args.output == crate::cli::OutputFormat::PolicyReport {
        eprintln!("mlguard audit: --show-patched cannot be combined with -o policyreport (the output is a stream of PolicyReport objects)");
        return ExitCode::from(2);
    }
    let report = match execute(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mlguard audit: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match args.output {
        crate::cli::OutputFormat::Text => {
            let mut t = if args.failures_only {
                report::failures_text(&report, color_wanted())
            } else {
                report::text(&report, color_wanted())
            };
            if args.show_patched {
                t.push_str(&report::patched_yaml(&report));
            }
            t
        }
        crate::cli::OutputFormat::Json => report::json(&report, args.show_patched),
        crate::cli::OutputFormat::Junit => report::junit(&report, args.show_patched),
        crate::cli::OutputFormat::PolicyReport => policyreport::yaml(&policyreport::reports(
            &report,
            std::time::SystemTime::now(),
        )),
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("mlguard audit: cannot write the report: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::from(report.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterState;
    use crate::policy::source::{FileKind, Origin, SourceFile};
    use crate::policy::Backend;
    use serde_json::json;

    /// Jobs get a template label (so their pods must carry it); pods with `bad: "yes"` are
    /// denied.
    const POLICY: &str = r#"package mlguard.policies.t

import rego.v1

patch contains {"op": "add", "path": "/spec/template/metadata/labels/stamped", "value": "yes"} if {
	input.review.kind.kind == "Job"
}

deny contains "pods must not be bad" if input.review.object.metadata.labels.bad == "yes"

deny contains "Job pods must be stamped" if {
	input.review.kind.kind == "Pod"
	input.review.object.metadata.ownerReferences[0].kind == "Job"
	not input.review.object.metadata.labels.stamped
}
"#;

    fn evaluator() -> Evaluator {
        // Jobs reach the policies because the kinds table names them.
        let kinds = "workloads:\n  kinds:\n  - {group: batch, kind: Job, resource: jobs, templates: [{template: spec.template}]}\n";
        let files = vec![
            SourceFile {
                name: "t.rego".into(),
                kind: FileKind::Rego,
                text: POLICY.into(),
                layer: 0,
            },
            SourceFile {
                name: "config.yaml".into(),
                kind: FileKind::Data,
                text: kinds.into(),
                layer: 0,
            },
        ];
        let set = PolicySet::compile(files, Origin::Embedded, Backend::Vm).unwrap();
        Evaluator::new(set, Arc::new(ClusterState::default())).unwrap()
    }

    fn pod(name: &str, bad: bool) -> Json {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": {"bad": if bad { "yes" } else { "no" }}},
               "spec": {"containers": [{"name": "c", "image": "i"}]}})
    }

    fn source(index: usize) -> Source {
        Source {
            file: "t.yaml".into(),
            index,
        }
    }

    #[test]
    fn job_pods_come_from_the_mutated_job() {
        let job = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "train", "namespace": "ml"},
            "spec": {"template": {"metadata": {"labels": {"app": "t"}},
                     "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}});
        let report = audit_all(
            &evaluator(),
            vec![(source(1), job)],
            "default",
            Mode::Enforce,
            2,
            &|_, _| {},
        );
        let o = &report.objects[0];
        assert_eq!(o.admissions.len(), 2);
        assert_eq!(o.admissions[0].kind, "Job");
        assert_eq!(o.admissions[0].status(), Status::Mutated);
        let pod = &o.admissions[1];
        assert_eq!((pod.kind.as_str(), pod.name.as_str()), ("Pod", "train-*"));
        assert!(pod.denials.is_empty(), "{:?}", pod.denials);
        assert_eq!(o.status, Status::Mutated);
        assert_eq!(report.exit_code(), 0);
    }

    #[test]
    fn order_and_counts_survive_parallel_evaluation() {
        let docs: Vec<(Source, Json)> = (0..40)
            .map(|i| (source(i + 1), pod(&format!("p{i}"), i % 4 == 0)))
            .chain([(source(41), json!({"replicas": 2}))])
            .collect();
        let report = audit_all(&evaluator(), docs, "ns", Mode::Enforce, 3, &|_, _| {});
        let indexes: Vec<usize> = report.objects.iter().map(|o| o.source.index).collect();
        assert_eq!(indexes, (1..=41).collect::<Vec<_>>());
        assert_eq!(report.objects[4].id.name, "p4");
        assert_eq!(report.objects[4].status, Status::Denied);
        let s = report.summary();
        assert_eq!((s.objects, s.denied, s.clean, s.errors), (41, 10, 30, 1));
        assert_eq!(report.exit_code(), 1);
        let relaxed = audit_all(
            &evaluator(),
            vec![(source(1), pod("p", true))],
            "ns",
            Mode::Warn,
            1,
            &|_, _| {},
        );
        assert_eq!(relaxed.objects[0].status, Status::Warned);
        assert_eq!(relaxed.exit_code(), 0);
    }

    #[test]
    fn status_is_the_most_serious_finding() {
        let mut a = Admission::default();
        assert_eq!(a.status(), Status::Clean);
        a.patch.push(Change {
            policy: "p".into(),
            op: json!({"op": "add", "path": "/x", "value": 1}),
        });
        assert_eq!(a.status(), Status::Mutated);
        a.would_deny.push("[p] no".into());
        assert_eq!(a.status(), Status::Warned);
        a.denials.push("[p] no".into());
        assert_eq!(a.status(), Status::Denied);
    }
}
