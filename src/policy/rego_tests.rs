//! Rego unit tests, as `opa test` runs them: every rule named `test_*` in a `*_test.rego` file
//! next to the policies must evaluate to `true`. They run on the interpreter (they usually
//! mock input with `with`), against the policies and data files of the same directory.

use regorus::{Engine, Value};

use super::data::document;
use super::settings::build_config;
use super::source::{FileKind, SourceFile};
use super::PolicyError;

/// The result of one `test_*` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RegoTest {
    pub file: String,
    pub name: String,
    /// None when the rule was true; otherwise what it was, or the evaluation error.
    pub failure: Option<String>,
}

/// The `test_*` rules a file defines, in order, each once.
fn test_rules(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in text.lines() {
        if !line.starts_with("test_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Runs the tests in `tests` against `policies` (the policy set's own files). An error that
/// stops every test (a file that does not parse) is returned as such.
pub fn run(policies: &[SourceFile], tests: &[SourceFile]) -> Result<Vec<RegoTest>, PolicyError> {
    let mut engine = Engine::new();
    engine.set_strict_builtin_errors(false);
    for file in policies
        .iter()
        .filter(|f| f.kind == FileKind::Rego)
        .chain(tests)
    {
        engine
            .add_policy(file.name.clone(), file.text.clone())
            .map_err(|e| PolicyError::Compile(format!("{e:#}")))?;
    }
    let config = build_config(policies)?;
    let data = document(
        Value::from(config),
        Some(crate::cluster::ClusterState::default().to_value()),
    );
    engine
        .add_data(data)
        .map_err(|e| PolicyError::Compile(format!("data: {e:#}")))?;

    let mut results = Vec::new();
    for file in tests {
        let package = file
            .text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(str::trim)
            .ok_or_else(|| PolicyError::Package {
                file: file.name.clone(),
                message: "no package line".into(),
            })?;
        for name in test_rules(&file.text) {
            let mut engine = engine.clone();
            let failure = match engine.eval_rule(format!("data.{package}.{name}")) {
                Ok(Value::Bool(true)) => None,
                Ok(Value::Undefined) => {
                    Some("undefined: a condition in its body does not hold".into())
                }
                Ok(other) => Some(format!("evaluated to {other}, not true")),
                Err(e) => Some(format!("error: {e:#}")),
            };
            results.push(RegoTest {
                file: file.name.clone(),
                name,
                failure,
            });
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, kind: FileKind, text: &str) -> SourceFile {
        SourceFile {
            name: name.into(),
            kind,
            text: text.into(),
            layer: 0,
        }
    }

    #[test]
    fn passing_failing_and_undefined_tests_are_told_apart() {
        let policy = file(
            "p.rego",
            FileKind::Rego,
            "package mlguard.policies.p\nimport rego.v1\ndeny contains \"no\" if input.x == 1\n",
        );
        let config = file("c.yaml", FileKind::Data, "limit: 3\n");
        let tests = file(
            "p_test.rego",
            FileKind::Rego,
            "package mlguard.policies.p_test\nimport rego.v1\nimport data.mlguard.policies.p\n\
             test_denies if { \"no\" in p.deny with input as {\"x\": 1} }\n\
             test_wrong if { \"no\" in p.deny with input as {\"x\": 2} }\n\
             test_config if data.mlguard.config.limit == 3\n",
        );
        let results = run(&[policy, config], &[tests]).unwrap();
        let by_name = |n: &str| {
            results
                .iter()
                .find(|r| r.name == n)
                .unwrap()
                .failure
                .clone()
        };
        assert_eq!(by_name("test_denies"), None);
        assert!(by_name("test_wrong").unwrap().contains("undefined"));
        assert_eq!(by_name("test_config"), None);
        assert_eq!(results.len(), 3);
    }
}
