//! Plays each case of a case file through the simulated API server and compares what
//! happened with what the case expects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::{CaseFile, Outcome};
use crate::admission::Mode;
use crate::cluster::{snapshot, ClusterState};
use crate::policy::layers::Layers;
use crate::policy::settings::{merge, Merge};
use crate::policy::source::{FileKind, SourceFile};
use crate::policy::{Backend, Evaluator, PolicySet};
use crate::sim::{simulate, with_namespace, Request};

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
    origin: &'a Layers,
    backend: Backend,
    compiled: BTreeMap<String, Arc<PolicySet>>,
}

impl<'a> PolicySets<'a> {
    pub fn new(base: &'a [SourceFile], origin: &'a Layers, backend: Backend) -> PolicySets<'a> {
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
                layer: 0,
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
            let from_file;
            let object = match (&case.object, &case.object_file) {
                (Some(object), None) => object,
                (None, Some(path)) => {
                    from_file = read_object_file(&dir.join(path))?;
                    &from_file
                }
                (Some(_), Some(_)) => return Err("case has both `object` and `object_file`".into()),
                (None, None) => return Err("case has no `object` (or `object_file`)".into()),
            };
            let namespace = case
                .namespace
                .clone()
                .or_else(|| object["metadata"]["namespace"].as_str().map(String::from))
                .unwrap_or_else(|| "default".into());
            let mode: Mode = case.mode.as_deref().unwrap_or("enforce").parse()?;
            let request = Request {
                namespace: &namespace,
                operation: case.operation.as_deref().unwrap_or("CREATE"),
                old_object: case.old_object.as_ref(),
                dry_run: case.dry_run,
                user_info: case.user_info.as_ref(),
            };
            let sim = simulate(&evaluator, object, &request, mode)?;
            let expect = &case.expect;
            if let Some(want) = &expect.patched {
                let want = with_namespace(want, &namespace);
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
            if let Some(want) = &expect.patch {
                let got: Vec<String> = sim
                    .mutate
                    .patch
                    .as_ref()
                    .map(|p| {
                        p.ops
                            .iter()
                            .map(|(_, op)| crate::policy::patch::describe(op))
                            .collect()
                    })
                    .unwrap_or_default();
                if &got != want {
                    failures.push(format!(
                        "patch differs\n  expected: {want:?}\n  actual:   {got:?}"
                    ));
                }
            }
            let says_patch = expect.patched.is_some() || expect.unchanged || expect.patch.is_some();
            if !says_patch && sim.mutate.patched() {
                failures.push(
                    "the case patches but says none of `patched`, `patch` or `unchanged`".into(),
                );
            }
            if !sim.second_patch.is_empty() {
                failures.push(format!(
                    "mutation is not idempotent: mutating the mutated object patched again: {:?}",
                    sim.second_patch
                ));
            }
            let denials = sim.both(|v| &v.denials);
            let warnings = sim.both(|v| &v.warnings);
            let would = sim.both(|v| &v.would_deny);
            let exempted = [&sim.mutate, &sim.validate]
                .iter()
                .filter_map(|v| v.exempted.as_ref().map(ToString::to_string))
                .collect::<Vec<_>>();
            match &expect.exempted {
                Some(want) if !exempted.iter().any(|e| e.contains(want.as_str())) => failures.push(
                    format!("expected an exemption containing {want:?}; got {exempted:?}"),
                ),
                None if !exempted.is_empty() => {
                    failures.push(format!("unexpected exemption: {}", exempted.join("; ")))
                }
                _ => {}
            }
            compare_messages("denial", &expect.deny, &denials, &mut failures);
            compare_messages("warning", &expect.warn, &warnings, &mut failures);
            compare_messages("dry-run denial", &expect.would_deny, &would, &mut failures);
            compare_messages(
                "dry-run patch",
                &expect.would_patch,
                &sim.mutate.would_patch,
                &mut failures,
            );
            // The API server stores, and validates against its schema, only what it admits.
            if denials.is_empty() {
                mutated = Some(sim.mutated);
            }
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

/// The first document of a manifest file, as a case's object.
fn read_object_file(path: &Path) -> Result<Json, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read object_file {}: {e}", path.display()))?;
    let first = serde_yaml::Deserializer::from_str(&text)
        .next()
        .ok_or_else(|| format!("object_file {} holds no document", path.display()))?;
    Json::deserialize(first).map_err(|e| format!("object_file {}: {e}", path.display()))
}
