//! Policy test cases in YAML, run by `mlguard test` and by the project's own test suite.
//!
//! A case is an object (or a whole AdmissionRequest) plus what mlguard must do with it. The
//! runner plays the API server: mutate, apply the patch, check that mutating again changes
//! nothing, then validate the mutated object.
//!
//! ```yaml
//! cluster: [cluster.yaml]          # snapshot files, relative to this file (optional)
//! config: {...}                    # merged over data.mlguard.config for every case (optional)
//! cases:
//!   - name: GPU pod gets a toleration
//!     namespace: ml                # default: the object's namespace, else "default"
//!     operation: CREATE            # default CREATE
//!     mode: enforce                # the global --mode (default enforce)
//!     object: {apiVersion: v1, kind: Pod, ...}
//!     expect:
//!       patched: {...}             # the whole object after mutation, or
//!       unchanged: true            # no patch at all
//!       deny: ["substring", ...]   # one substring per expected denial; none if omitted
//!       warn: ["substring", ...]   # one substring per expected warning; none if omitted
//!       would_deny: [...]          # dry-run records; none if omitted
//!       would_patch: [...]         # dry-run patch operations ("add /spec/..."); none if omitted
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::admission;
use crate::cluster::{snapshot, ClusterState};
use crate::pipeline::{admit, Mode};
use crate::policy::settings::{merge, Merge};
use crate::policy::source::{FileKind, Origin, SourceFile};
use crate::policy::verdict::Verdict;
use crate::policy::{Backend, Evaluator, PolicySet, Stage};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub cluster: Vec<PathBuf>,
    #[serde(default)]
    pub config: Option<Json>,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub object: Option<Json>,
    #[serde(default)]
    pub old_object: Option<Json>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub cluster: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub config: Option<Json>,
    pub expect: Expect,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub patched: Option<Json>,
    #[serde(default)]
    pub unchanged: bool,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub warn: Vec<String>,
    #[serde(default)]
    pub would_deny: Vec<String>,
    #[serde(default)]
    pub would_patch: Vec<String>,
}

/// The result of one case.
#[derive(Debug)]
pub struct Outcome {
    pub file: PathBuf,
    pub name: String,
    pub failures: Vec<String>,
    /// The object after mutation, for schema checks.
    pub mutated: Option<Json>,
}

/// Builds an AdmissionReview v1 body for `object`, as the API server would send it.
pub fn review_for(
    object: &Json,
    namespace: &str,
    operation: &str,
    old_object: Option<&Json>,
    dry_run: bool,
    uid: &str,
) -> Json {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let kind = object["kind"].as_str().unwrap_or("");
    let resource = format!("{}s", kind.to_lowercase());
    let mut object = object.clone();
    if object["metadata"].is_object() && object["metadata"]["namespace"].is_null() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    json!({
        "apiVersion": admission::API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": name,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "mlguard-test", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": old_object,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": if operation == "UPDATE" { "UpdateOptions" } else { "CreateOptions" }}
        }
    })
}

/// Runs one parsed review through mutate and validate as the API server does.
pub struct Simulation {
    pub mutate: Verdict,
    pub mutated: Json,
    pub validate: Verdict,
    /// The patch a second mutation produced; must be empty.
    pub second_patch: Vec<Json>,
}

pub fn simulate(
    evaluator: &Evaluator,
    object: &Json,
    namespace: &str,
    operation: &str,
    old_object: Option<&Json>,
    dry_run: bool,
    mode: Mode,
) -> Result<Simulation, String> {
    let body = review_for(object, namespace, operation, old_object, dry_run, "case");
    let parse = |b: &Json| {
        admission::parse(&serde_json::to_vec(b).unwrap_or_default()).map_err(|e| e.to_string())
    };
    let review = parse(&body)?;
    let mutate = admit(evaluator, &review, Stage::Mutate, mode);
    let mutated = mutate
        .patch
        .as_ref()
        .map_or_else(|| body["request"]["object"].clone(), |p| p.patched.clone());
    let again = parse(&review_for(
        &mutated, namespace, operation, old_object, dry_run, "case",
    ))?;
    let second_patch = admit(evaluator, &again, Stage::Mutate, mode)
        .patch
        .map(|p| p.ops.into_iter().map(|(_, op)| op).collect())
        .unwrap_or_default();
    let validate = admit(evaluator, &again, Stage::Validate, mode);
    Ok(Simulation {
        mutate,
        mutated,
        validate,
        second_patch,
    })
}

/// Each expected substring must match a distinct actual message, and the counts must agree.
fn compare_messages(
    what: &str,
    expected: &[String],
    actual: &[String],
    failures: &mut Vec<String>,
) {
    let mut unmatched: Vec<&String> = actual.iter().collect();
    for e in expected {
        match unmatched.iter().position(|a| a.contains(e.as_str())) {
            Some(i) => {
                unmatched.remove(i);
            }
            None => failures.push(format!(
                "expected a {what} containing {e:?}; got {actual:#?}"
            )),
        }
    }
    for a in unmatched {
        failures.push(format!("unexpected {what}: {a}"));
    }
}

/// The policy sets one policy directory yields under the case files' configuration
/// overlays, each compiled once however many case files use it.
pub struct PolicySets<'a> {
    base: &'a [SourceFile],
    origin: &'a Origin,
    backend: Backend,
    compiled: BTreeMap<String, Arc<PolicySet>>,
}

impl<'a> PolicySets<'a> {
    pub fn new(base: &'a [SourceFile], origin: &'a Origin, backend: Backend) -> PolicySets<'a> {
        PolicySets {
            base,
            origin,
            backend,
            compiled: BTreeMap::new(),
        }
    }

    /// The set with `overlay` merged over its configuration.
    pub fn get(&mut self, overlay: Option<&Json>) -> Result<Arc<PolicySet>, String> {
        let key = overlay.map(Json::to_string).unwrap_or_default();
        if let Some(set) = self.compiled.get(&key) {
            return Ok(set.clone());
        }
        let set = self.compile(overlay)?;
        self.compiled.insert(key, set.clone());
        Ok(set)
    }

    fn compile(&self, overlay: Option<&Json>) -> Result<Arc<PolicySet>, String> {
        let mut files = self.base.to_vec();
        if let Some(overlay) = overlay {
            // The overlay replaces values, so it is merged into one file that sorts last.
            let mut merged =
                crate::policy::settings::build_config(self.base).map_err(|e| e.to_string())?;
            merge(&mut merged, overlay.clone(), Merge::Override, "config")
                .map_err(|e| e.to_string())?;
            files.retain(|f| f.kind != FileKind::Data);
            files.push(SourceFile {
                name: "zz-case-config.json".into(),
                kind: FileKind::Data,
                text: merged.to_string(),
            });
        }
        PolicySet::compile(files, self.origin.clone(), self.backend).map_err(|e| e.to_string())
    }
}

/// Runs every case of one file against the policy sets of `sets`.
pub fn run_file(path: &Path, sets: &mut PolicySets) -> Result<Vec<Outcome>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: CaseFile =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let load_cluster = |paths: &[PathBuf]| -> Result<Arc<ClusterState>, String> {
        let full: Vec<PathBuf> = paths.iter().map(|p| dir.join(p)).collect();
        snapshot::load(&full)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    let file_cluster = load_cluster(&file.cluster)?;
    let mut outcomes = Vec::new();
    for case in &file.cases {
        let mut failures = Vec::new();
        let mut mutated = None;
        let result = (|| -> Result<(), String> {
            let overlay = match (&file.config, &case.config) {
                (None, None) => None,
                (a, b) => {
                    let mut c = a.clone().unwrap_or(json!({}));
                    if let Some(b) = b {
                        merge(&mut c, b.clone(), Merge::Override, "config")?;
                    }
                    Some(c)
                }
            };
            let set = sets.get(overlay.as_ref())?;
            let cluster = match &case.cluster {
                Some(paths) => load_cluster(paths)?,
                None => file_cluster.clone(),
            };
            let evaluator = Evaluator::new(set, cluster).map_err(|e| e.to_string())?;
            let object = case.object.as_ref().ok_or("case has no `object`")?;
            let namespace = case
                .namespace
                .clone()
                .or_else(|| object["metadata"]["namespace"].as_str().map(String::from))
                .unwrap_or_else(|| "default".into());
            let mode: Mode = case.mode.as_deref().unwrap_or("enforce").parse()?;
            let sim = simulate(
                &evaluator,
                object,
                &namespace,
                case.operation.as_deref().unwrap_or("CREATE"),
                case.old_object.as_ref(),
                case.dry_run,
                mode,
            )?;
            let expect = &case.expect;
            if let Some(want) = &expect.patched {
                let mut want = want.clone();
                if want["metadata"].is_object() && want["metadata"]["namespace"].is_null() {
                    want["metadata"]["namespace"] = json!(namespace);
                }
                if sim.mutated != want {
                    failures.push(format!(
                        "mutated object differs\n  expected: {}\n  actual:   {}",
                        want, sim.mutated
                    ));
                }
            }
            if expect.unchanged && sim.mutate.patched() {
                failures.push(format!(
                    "expected no patch, got {}",
                    sim.mutate
                        .patch
                        .as_ref()
                        .map(|p| p.ops_json())
                        .unwrap_or_default()
                ));
            }
            if expect.patched.is_none() && !expect.unchanged && sim.mutate.patched() {
                failures.push("the case patches but says neither `patched` nor `unchanged`".into());
            }
            if !sim.second_patch.is_empty() {
                failures.push(format!(
                    "mutation is not idempotent: mutating the mutated object patched again: {:?}",
                    sim.second_patch
                ));
            }
            let denials: Vec<String> = sim
                .mutate
                .denials
                .iter()
                .chain(&sim.validate.denials)
                .cloned()
                .collect();
            let warnings: Vec<String> = sim
                .mutate
                .warnings
                .iter()
                .chain(&sim.validate.warnings)
                .cloned()
                .collect();
            let would: Vec<String> = sim
                .mutate
                .would_deny
                .iter()
                .chain(&sim.validate.would_deny)
                .cloned()
                .collect();
            compare_messages("denial", &expect.deny, &denials, &mut failures);
            compare_messages("warning", &expect.warn, &warnings, &mut failures);
            compare_messages("dry-run denial", &expect.would_deny, &would, &mut failures);
            compare_messages(
                "dry-run patch",
                &expect.would_patch,
                &sim.mutate.would_patch,
                &mut failures,
            );
            mutated = Some(sim.mutated);
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(e);
        }
        outcomes.push(Outcome {
            file: path.to_path_buf(),
            name: case.name.clone(),
            failures,
            mutated,
        });
    }
    Ok(outcomes)
}

/// Case files under `paths` (files, or directories walked for *.yaml).
pub fn collect(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            for e in walkdir::WalkDir::new(p)
                .sort_by_file_name()
                .into_iter()
                .flatten()
            {
                let name = e.file_name().to_string_lossy();
                if e.file_type().is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
                    out.push(e.into_path());
                }
            }
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// `mlguard test [CASES...]`: runs the policy set's Rego unit tests and the case files against
/// it, prints one line per test and a summary, and exits 0 when all pass, 1 when any fails, 2
/// when the policies, a test file or a case file cannot be read.
pub fn run(args: &crate::cli::TestArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (origin, backend) = crate::config::policy_origin(&args.policy);
    let loaded = crate::policy::source::read(&origin).and_then(|files| {
        let tests = crate::policy::source::read_tests(&origin)?;
        Ok((files, tests))
    });
    let (base, rego_tests) = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mlguard test: {e}");
            return ExitCode::from(2);
        }
    };
    let files = collect(&args.cases);
    if files.is_empty() && rego_tests.is_empty() {
        eprintln!(
            "mlguard test: nothing to run: give case files (*.yaml), or put *_test.rego files in {origin}"
        );
        return ExitCode::from(2);
    }
    let mut sets = PolicySets::new(&base, &origin, backend);
    // What the server would log about the set as it is, where policy authors look first. A
    // set that does not compile is reported by the cases themselves.
    if let Ok(set) = sets.get(None) {
        for hint in &set.hints {
            println!("hint: {hint}");
        }
    }
    let mut tally = Tally::default();
    match crate::policy::rego_tests::run(&base, &rego_tests) {
        Err(e) => tally.broken(&format!("Rego tests: {e}")),
        Ok(results) => {
            for r in results {
                tally.record(&format!("{} / {}", r.file, r.name), r.failure.as_slice());
            }
        }
    }
    for file in &files {
        match run_file(file, &mut sets) {
            Err(e) => tally.broken(&e),
            Ok(outcomes) => {
                for o in outcomes {
                    tally.record(&format!("{} / {}", o.file.display(), o.name), &o.failures);
                }
            }
        }
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.errors > 0 {
        ExitCode::from(2)
    } else if tally.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Counts and prints test results as they come.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    errors: usize,
}

impl Tally {
    fn record(&mut self, name: &str, failures: &[String]) {
        if failures.is_empty() {
            self.passed += 1;
            println!("ok    {name}");
            return;
        }
        self.failed += 1;
        println!("FAIL  {name}");
        for line in failures.iter().flat_map(|f| f.lines()) {
            println!("        {line}");
        }
    }

    fn broken(&mut self, message: &str) {
        self.errors += 1;
        println!("ERROR {message}");
    }
}
