//! Load-time checks on Rego source that the compiler does not make: portability (`import
//! rego.v1`) and builtins that have no place in an admission decision.

use super::PolicyError;

/// Builtins refused at load. Admission must be deterministic and free of side effects: the API
/// server may call the webhook several times for one object (reinvocation, retries, dry-run),
/// and every replica must answer the same.
const FORBIDDEN_BUILTINS: &[(&str, &str)] = &[
    ("http.send", "makes network calls"),
    ("net.lookup_ip_addr", "makes DNS lookups"),
    ("time.now_ns", "is nondeterministic"),
    ("rand.intn", "is nondeterministic"),
    ("uuid.rfc4122", "is nondeterministic"),
    ("opa.runtime", "exposes the host process"),
];

/// Replaces comments and string contents with spaces, keeping line structure, so that the
/// scan below neither trips over `# http.send(` in a comment nor misses a real call.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push(' ');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        '\n' => {
                            out.push('\n');
                            break;
                        }
                        _ => {}
                    }
                }
                out.push(' ');
            }
            '`' => {
                for c in chars.by_ref() {
                    if c == '`' {
                        break;
                    }
                    if c == '\n' {
                        out.push('\n');
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

pub fn check(file: &str, text: &str) -> Result<(), PolicyError> {
    let code = code_only(text);
    for (index, line) in code.lines().enumerate() {
        for (name, why) in FORBIDDEN_BUILTINS {
            if let Some(pos) = line.find(name) {
                let before = line[..pos].chars().last();
                let after = line[pos + name.len()..].trim_start();
                let is_call = after.starts_with('(')
                    && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.');
                if is_call {
                    return Err(PolicyError::Forbidden {
                        file: file.into(),
                        line: index + 1,
                        message: format!(
                            "{name} {why}; admission policies must be deterministic and side-effect \
                             free. Put the information the policy needs in a data file or in cluster state"
                        ),
                    });
                }
            }
        }
    }
    let has_v1_import = code
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["import", "rego.v1"]);
    if !has_v1_import {
        return Err(PolicyError::Forbidden {
            file: file.into(),
            line: 1,
            message:
                "missing `import rego.v1`: mlguard policies are portable Rego v1, so that OPA \
                      evaluates them the same way; add it after the package line"
                    .into(),
        });
    }
    Ok(())
}

/// The imports of rules and packages (`data.mlguard.lib.*`, `data.mlguard.policies.*`) that
/// `resolves` does not know, each with its line. Such an import makes every rule that reads it
/// undefined: the policy loads and silently never fires (a helper renamed away, or a policy
/// directory without the helper library). Data documents (`data.mlguard.config`,
/// `data.mlguard.cluster`) are not rules and are not checked.
pub fn unresolved_imports(text: &str, resolves: impl Fn(&str) -> bool) -> Vec<(usize, String)> {
    code_only(text)
        .lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let path = match words.as_slice() {
                ["import", path] | ["import", path, "as", _] => *path,
                _ => return None,
            };
            let checked = ["data.mlguard.lib.", "data.mlguard.policies."]
                .iter()
                .any(|root| path.starts_with(root));
            (checked && !resolves(path)).then(|| (index + 1, path.to_string()))
        })
        .collect()
}

/// Places where a policy reads a rule through an import of a whole package (`import
/// data.mlguard.lib.workload`, then `workload.is_pod`). Portable and correct, but regorus's VM
/// compiles such a reference as the package's whole document: every rule in the package is
/// evaluated on each review, including those the policy never reads. On the default policies
/// that was half the evaluation time. Function calls through the alias are resolved directly
/// and are fine. One hint per import, naming the rules to import instead.
pub fn package_import_hints(
    file: &str,
    text: &str,
    is_package: impl Fn(&str) -> bool,
) -> Vec<String> {
    let code = code_only(text);
    let imports: Vec<(String, String)> = code
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["import", path] => Some((path.to_string(), path.rsplit('.').next()?.to_string())),
                ["import", path, "as", alias] => Some((path.to_string(), alias.to_string())),
                _ => None,
            }
        })
        .filter(|(path, _)| path.starts_with("data.") && is_package(path))
        .collect();
    let mut hints = Vec::new();
    for (path, alias) in imports {
        let mut first_line = None;
        let mut rules: Vec<String> = Vec::new();
        for (index, line) in code.lines().enumerate() {
            for rule in rules_read_through(line, &alias) {
                first_line.get_or_insert(index + 1);
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
        let Some(line) = first_line else { continue };
        let suggestion: Vec<String> = rules
            .iter()
            .map(|r| format!("`import {path}.{r}`"))
            .collect();
        hints.push(format!(
            "{file}:{line}: `{alias}.{}` reads a rule through the package import `{path}`, so \
             the bytecode VM evaluates every rule of that package on each review; import the \
             rules themselves ({}) and refer to them by name",
            rules[0],
            suggestion.join(", ")
        ));
    }
    hints
}

/// The rule names read as `alias.name` on `line`, leaving out function calls
/// (`alias.name(`).
fn rules_read_through(line: &str, alias: &str) -> Vec<String> {
    let prefix = format!("{alias}.");
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(pos) = rest.find(&prefix) {
        let before = rest[..pos].chars().last();
        let after = &rest[pos + prefix.len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // `other.workload.x` or `myworkload.x` is not the alias.
        let alias_starts_here =
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.');
        let is_call = after[name.len()..].trim_start().starts_with('(');
        if alias_starts_here && !name.is_empty() && !is_call {
            found.push(name.clone());
        }
        rest = &after[name.len()..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_send_is_refused_with_its_line() {
        let src = "package x\nimport rego.v1\n\ndeny contains m if {\n  r := http.send({})\n  m := r\n}\n";
        let err = check("p.rego", src).unwrap_err().to_string();
        assert!(
            err.contains("p.rego:5") && err.contains("http.send"),
            "{err}"
        );
    }

    #[test]
    fn mentions_in_comments_and_strings_are_fine() {
        let src = "package x\nimport rego.v1\n# never call http.send(x)\nmsg := \"time.now_ns() is banned\"\n";
        check("p.rego", src).unwrap();
    }

    #[test]
    fn rego_v1_import_is_required() {
        let err = check("p.rego", "package x\n").unwrap_err().to_string();
        assert!(err.contains("import rego.v1"), "{err}");
    }

    #[test]
    fn rules_read_through_a_package_import_get_a_hint() {
        let src =
            "package mlguard.policies.p\nimport data.mlguard.lib.workload\nimport rego.v1\n\n\
                   deny contains m if {\n  workload.is_pod\n  c := workload.limits(x)\n  \
                   m := workload.subject\n  n := other.workload.x\n}\n";
        let hints = package_import_hints("p.rego", src, |p| p == "data.mlguard.lib.workload");
        assert_eq!(hints.len(), 1, "{hints:?}");
        let hint = &hints[0];
        assert!(hint.starts_with("p.rego:6: `workload.is_pod`"), "{hint}");
        assert!(
            hint.contains("`import data.mlguard.lib.workload.is_pod`, `import data.mlguard.lib.workload.subject`"),
            "{hint}"
        );
        assert!(!hint.contains("limits"), "function calls are fine: {hint}");
    }

    #[test]
    fn rule_imports_and_calls_through_a_package_import_get_none() {
        let src = "package mlguard.policies.p\nimport data.mlguard.lib.workload as w\n\
                   import data.mlguard.lib.workload.is_pod\nimport rego.v1\n\n\
                   deny contains m if {\n  is_pod\n  m := w.describe(x)\n  # w.subject\n}\n";
        let hints = package_import_hints("p.rego", src, |p| p == "data.mlguard.lib.workload");
        assert_eq!(hints, Vec::<String>::new());
    }
}
