//! Paths to manifest documents: files as given, directories walked for `*.yaml`, `*.yml` and
//! `*.json` (as `kubectl apply -f DIR` does), `-` for standard input. Any file that cannot be
//! read or parsed stops the command (`mlguard audit`, `mlguard bench`) with its name and the
//! line and column of the problem.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::cluster::snapshot::parse_objects;

/// Where a manifest object came from: its file and its 1-based position in that file (the
/// items of a `List` count one each).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub file: String,
    pub index: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.file, self.index)
    }
}

/// A file that cannot be used. `mlguard audit` exits with status 2.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InputError {
    pub path: String,
    pub message: String,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The files named by `paths`, in a stable order. Hidden files and directories (`.git`,
/// `.github`) under a directory are not manifests and are left out.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" || path.is_file() {
            out.push(path.clone());
            continue;
        }
        if !path.is_dir() {
            return Err(InputError {
                path: path.display().to_string(),
                message: "no such file or directory".into(),
            });
        }
        let before = out.len();
        let walker = walkdir::WalkDir::new(path)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for entry in walker {
            let entry = entry.map_err(|e| InputError {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            if entry.file_type().is_file() && is_manifest(entry.path()) {
                out.push(entry.into_path());
            }
        }
        if out.len() == before {
            return Err(InputError {
                path: path.display().to_string(),
                message: "directory holds no manifests (*.yaml, *.yml, *.json)".into(),
            });
        }
    }
    Ok(out)
}

/// Every object in one file's text, with its source.
pub fn documents(name: &str, text: &str) -> Result<Vec<(Source, Json)>, InputError> {
    let objects = parse_objects(text).map_err(|message| InputError {
        path: name.to_string(),
        message,
    })?;
    Ok(objects
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let source = Source {
                file: name.to_string(),
                index: i + 1,
            };
            (source, o)
        })
        .collect())
}

/// Reads every manifest under `paths`.
pub fn read(paths: &[PathBuf]) -> Result<Vec<(Source, Json)>, InputError> {
    let mut out = Vec::new();
    let mut stdin_read = false;
    for path in expand(paths)? {
        let (name, text) = if path.as_os_str() == "-" {
            if std::mem::replace(&mut stdin_read, true) {
                continue;
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| InputError {
                    path: "<stdin>".into(),
                    message: e.to_string(),
                })?;
            ("<stdin>".to_string(), text)
        } else {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| InputError {
                path: name.clone(),
                message: e.to_string(),
            })?;
            (name, text)
        };
        out.extend(documents(&name, &text)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_numbered_and_lists_flattened() {
        let text = "apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod}\n- {apiVersion: v1, kind: Service}\n";
        let docs = documents("a.yaml", text).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[2].0.to_string(), "a.yaml#3");
        assert_eq!(docs[2].1["kind"], "Service");
    }

    #[test]
    fn parse_errors_name_the_file_and_position() {
        let err = documents("bad.yaml", "kind: Pod\nspec: [1,\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("bad.yaml: line") && msg.contains("column"),
            "{msg}"
        );
    }

    #[test]
    fn directories_are_walked_for_manifests_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join(".github")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), "").unwrap();
        std::fs::write(dir.path().join("sub/a.json"), "{}").unwrap();
        std::fs::write(dir.path().join("README.md"), "").unwrap();
        std::fs::write(dir.path().join(".github/ci.yml"), "").unwrap();
        let files = expand(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| {
                f.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["b.yaml", "sub/a.json"]);
        let err = expand(&[dir.path().join("missing")]).unwrap_err();
        assert!(err.to_string().contains("missing"));
    }
}
