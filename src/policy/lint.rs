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
}
