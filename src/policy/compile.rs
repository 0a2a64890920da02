//! Files in, an immutable compiled [`PolicySet`] out. Runs at start-up and on reload, never on
//! the request path; any problem refuses the whole set, so the server never serves half of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::{Engine, Value};

use super::data::document;
use super::exemptions::Exemptions;
use super::layers::Layers;
use super::limits::eval_time_limit;
use super::set::{digest, Backend, Policy, PolicySet, RuleKind, Stage, POLICY_PACKAGE_PREFIX};
use super::settings::{build_config, policy_settings};
use super::source::{FileKind, SourceFile};
use super::{combined, lint, probe, PolicyError};

impl PolicySet {
    /// Compiles `files`. `preferred` is the VM unless a caller (tests, `--evaluator`) asks for
    /// the interpreter.
    pub fn compile(
        files: Vec<SourceFile>,
        origin: impl Into<Layers>,
        preferred: Backend,
    ) -> Result<Arc<PolicySet>, PolicyError> {
        let origin = origin.into();
        let rego: Vec<&SourceFile> = files.iter().filter(|f| f.kind == FileKind::Rego).collect();
        if rego.is_empty() {
            return Err(PolicyError::Empty(format!(
                "{origin} holds no .rego files; point --policies at a directory of policies"
            )));
        }
        let mut engine = Engine::new();
        // As in OPA by default, a builtin error makes its expression undefined; the probe below
        // and `mlguard test` are where policy authors see such mistakes.
        engine.set_strict_builtin_errors(false);
        engine.set_execution_timer_config(eval_time_limit());
        let mut packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for file in &rego {
            lint::check(&file.name, &file.text)?;
            let package = engine
                .add_policy(file.name.clone(), file.text.clone())
                .map_err(|e| PolicyError::Compile(format!("{e:#}")))?;
            packages.entry(package).or_default().push(file.name.clone());
        }

        // An import of a rule or package the set does not have would make every rule that
        // reads it undefined: the policy would load and never fire.
        let resolves = |path: &str| {
            packages.contains_key(path)
                || path.rsplit_once('.').is_some_and(|(package, rule)| {
                    packages.get(package).is_some_and(|files| {
                        files.iter().any(|file| {
                            engine
                                .has_declared_rule_rooted_at(file, rule)
                                .unwrap_or(false)
                        })
                    })
                })
        };
        for file in &rego {
            if let Some((line, path)) = lint::unresolved_imports(&file.text, resolves).pop() {
                return Err(PolicyError::Forbidden {
                    file: file.name.clone(),
                    line,
                    message: format!(
                        "`import {path}` names no rule or package of this policy set, so every \
                         rule that reads it would be undefined and the policy would never fire; \
                         check the name, and that the helper library (lib_*.rego) is in the \
                         policy directory"
                    ),
                });
            }
        }

        let hints: Vec<String> = rego
            .iter()
            .flat_map(|file| {
                lint::package_import_hints(&file.name, &file.text, |path| {
                    packages.contains_key(path)
                })
            })
            .collect();

        let mut names = Vec::new();
        let mut rules_of = BTreeMap::new();
        for (package, files_of_package) in &packages {
            let Some(name) = package.strip_prefix(POLICY_PACKAGE_PREFIX) else {
                continue; // a library package, used by policies
            };
            if name.contains('.') || name.contains('[') {
                return Err(PolicyError::Package {
                    file: files_of_package.join(", "),
                    message: format!(
                        "package {package} is nested; a policy is a package mlguard.policies.<name>, \
                         put shared helpers under mlguard.lib.<name>"
                    ),
                });
            }
            let mut rules = Vec::new();
            for kind in RuleKind::ALL {
                for file in files_of_package {
                    if engine
                        .has_declared_rule_rooted_at(file, kind.as_str())
                        .map_err(|e| PolicyError::Compile(format!("{file}: {e:#}")))?
                    {
                        rules.push(kind);
                        break;
                    }
                }
            }
            if rules.is_empty() {
                return Err(PolicyError::Package {
                    file: files_of_package.join(", "),
                    message: format!(
                        "policy {name} defines none of deny, warn, patch; a policy package must \
                         define at least one (helpers belong under mlguard.lib.<name>)"
                    ),
                });
            }
            names.push(name.to_string());
            rules_of.insert(name.to_string(), rules);
        }
        if names.is_empty() {
            return Err(PolicyError::Empty(format!(
                "{origin} defines no package under mlguard.policies"
            )));
        }

        let config = build_config(&files)?;
        let mut settings = policy_settings(&config, &names)?;
        let kinds = super::kinds::parse(&config)?;
        let exemptions = Exemptions::from_config(&config)?;
        let config_value = Value::from(config.clone());
        let data = document(config_value.clone(), None);
        engine
            .add_data(data)
            .map_err(|e| PolicyError::Compile(format!("data.mlguard.config: {e:#}")))?;

        let policies: Vec<Policy> = names
            .iter()
            .map(|name| {
                let settings = settings.remove(name).unwrap_or_default();
                Policy {
                    name: name.clone(),
                    rules: rules_of.remove(name).unwrap_or_default(),
                    parameters: Value::from(settings.parameters.clone()),
                    settings,
                }
            })
            .collect();

        let (backend, program, vm_fallback_reason) = match preferred {
            Backend::Interpreter => (Backend::Interpreter, None, None),
            Backend::Vm => match compile_vm(&mut engine, &policies) {
                Ok(program) => (Backend::Vm, Some(program), None),
                Err(reason) => (Backend::Interpreter, None, Some(reason)),
            },
        };

        let mut set = Arc::new(PolicySet {
            digest: digest(&files),
            origin,
            files: files.iter().map(|f| f.name.clone()).collect(),
            policies,
            config,
            config_value,
            kinds,
            exemptions,
            backend,
            vm_fallback_reason,
            hints,
            engine,
            program,
        });
        if let Some(reason) = probe::probe(&set)? {
            // The probe's evaluators are gone, so this is the only reference.
            if let Some(s) = Arc::get_mut(&mut set) {
                s.backend = Backend::Interpreter;
                s.program = None;
                s.vm_fallback_reason = Some(reason);
            }
        }
        Ok(set)
    }

    /// Reads and compiles the policies of `origin` (one layer, or several).
    pub fn load(
        origin: impl Into<Layers>,
        preferred: Backend,
    ) -> Result<Arc<PolicySet>, PolicyError> {
        let origin = origin.into();
        let files = super::layers::read(&origin)?;
        PolicySet::compile(files, origin, preferred)
    }
}

fn compile_vm(engine: &mut Engine, policies: &[Policy]) -> Result<Arc<Program>, String> {
    engine
        .add_policy(
            format!("<{}>.rego", combined::PACKAGE),
            combined::module(policies),
        )
        .map_err(|e| format!("combined entry points: {e:#}"))?;
    let entry_points: Vec<String> = policies
        .iter()
        .flat_map(|p| p.rules.iter().map(|r| p.entry_point(*r)))
        .chain(
            combined::OPERATIONS
                .iter()
                .flat_map(|op| Stage::ALL.map(|stage| combined::entry_point(stage, op))),
        )
        .collect();
    let first: regorus::Rc<str> = entry_points[0].as_str().into();
    let compiled = engine
        .compile_with_entrypoint(&first)
        .map_err(|e| format!("{e:#}"))?;
    let refs: Vec<&str> = entry_points.iter().map(String::as_str).collect();
    Compiler::compile_from_policy(&compiled, &refs).map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::source::{FileKind, Origin};

    fn rego(name: &str, text: &str) -> SourceFile {
        SourceFile {
            name: name.into(),
            kind: FileKind::Rego,
            text: text.into(),
            layer: 0,
        }
    }

    /// An `else` after a body that binds an undefined value: the VM in regorus 0.14 returns
    /// undefined where OPA and the interpreter take the `else`. Such a set must not run on
    /// the VM.
    #[test]
    fn a_set_the_vm_evaluates_differently_runs_on_the_interpreter() {
        let src = "package mlguard.policies.limit\n\nimport rego.v1\n\n\
                   limit := v if {\n  v := input.review.object.metadata.annotations.x\n} else := 5\n\n\
                   deny contains sprintf(\"limit %v\", [limit]) if input.review.kind.kind == \"Pod\"\n";
        let set = PolicySet::compile(vec![rego("limit.rego", src)], Origin::Embedded, Backend::Vm)
            .unwrap();
        assert_eq!(set.backend, Backend::Interpreter);
        let reason = set.vm_fallback_reason.as_deref().unwrap();
        assert!(reason.contains("policy limit"), "{reason}");
    }

    /// A policy that runs away on some input is stopped and reported as an evaluation error
    /// (which denies under the `deny` action) on both evaluators.
    #[test]
    fn a_runaway_policy_is_stopped() {
        use crate::cluster::ClusterState;
        use crate::policy::{Evaluator, Stage};
        let src = "package mlguard.policies.slow\n\nimport rego.v1\n\n\
                   deny contains \"never\" if {\n  input.review.object.metadata.labels.slow\n  \
                   some i in numbers.range(1, 4000)\n  some j in numbers.range(1, 4000)\n  i * j < 0\n}\n";
        for backend in [Backend::Vm, Backend::Interpreter] {
            let set = PolicySet::compile(vec![rego("slow.rego", src)], Origin::Embedded, backend)
                .unwrap();
            let evaluator =
                Evaluator::new(set, std::sync::Arc::new(ClusterState::default())).unwrap();
            let review = Value::from(serde_json::json!({
                "operation": "CREATE", "kind": {"kind": "Pod"},
                "object": {"metadata": {"labels": {"slow": "yes"}}}
            }));
            let started = std::time::Instant::now();
            let outputs = evaluator.evaluate(&review, Stage::Validate);
            let error = outputs[0]
                .error
                .as_ref()
                .expect("the runaway rule is an error");
            assert_eq!(error.policy, "slow");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(3),
                "{backend:?}"
            );
        }
    }

    /// An import of a helper rule that does not exist, or of a helper library that is not in
    /// the directory, is refused at load with file and line: the policy would never fire.
    #[test]
    fn an_import_that_resolves_to_nothing_is_refused() {
        let lib = rego(
            "lib.rego",
            "package mlguard.lib.workload\n\nimport rego.v1\n\nis_pod if input.review.kind.kind == \"Pod\"\n",
        );
        let policy = |import: &str| {
            rego(
                "p.rego",
                &format!(
                    "package mlguard.policies.p\n\nimport {import}\nimport data.mlguard.config\nimport rego.v1\n\ndeny contains \"no\" if is_pod\n"
                ),
            )
        };
        let ok = PolicySet::compile(
            vec![lib.clone(), policy("data.mlguard.lib.workload.is_pod")],
            Origin::Embedded,
            Backend::Vm,
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
        for (files, why) in [
            (
                vec![lib.clone(), policy("data.mlguard.lib.workload.is_pd")],
                "a misspelt rule",
            ),
            (
                vec![policy("data.mlguard.lib.workload.is_pod")],
                "no helper library",
            ),
        ] {
            let err = PolicySet::compile(files, Origin::Embedded, Backend::Vm)
                .expect_err(why)
                .to_string();
            assert!(
                err.starts_with("p.rego:3: `import data.mlguard.lib.workload."),
                "{why}: {err}"
            );
            assert!(err.contains("would never fire"), "{err}");
        }
    }

    #[test]
    fn a_set_both_evaluators_agree_on_stays_on_the_vm() {
        let src = "package mlguard.policies.limit\n\nimport rego.v1\n\n\
                   deny contains \"no\" if input.review.kind.kind == \"Pod\"\n";
        let set = PolicySet::compile(vec![rego("limit.rego", src)], Origin::Embedded, Backend::Vm)
            .unwrap();
        assert_eq!(set.backend, Backend::Vm, "{:?}", set.vm_fallback_reason);
    }
}
