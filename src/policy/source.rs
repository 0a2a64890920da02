//! Where policy files come from: a directory on disk (a ConfigMap volume in a cluster) or the
//! default set embedded in the binary. Both produce the same list of named files, so the
//! compiler never knows the difference.

use std::path::{Path, PathBuf};

use include_dir::{include_dir, Dir};

use super::PolicyError;

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/policies");

/// What a file in the policy directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Rego,
    Data,
}

/// One policy or data file, named by its path relative to the policy directory (or, in a set
/// of several layers, by its path: see `layers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub kind: FileKind,
    pub text: String,
    /// Which layer of the set it comes from, 0 at the bottom.
    pub layer: usize,
}

/// Where a policy set was read from; shown in logs and on the probe port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Embedded,
    Directory(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Embedded => f.write_str("embedded default policies"),
            Origin::Directory(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Policy and data files: what is compiled and served.
fn classify(name: &str) -> Option<FileKind> {
    // Rego unit tests live next to the policies but are run by `mlguard test`, never served.
    if name.ends_with("_test.rego") {
        return None;
    }
    if name.ends_with(".rego") {
        Some(FileKind::Rego)
    } else if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
        Some(FileKind::Data)
    } else {
        None
    }
}

/// Rego unit tests (`*_test.rego`), for `mlguard test`.
fn classify_test(name: &str) -> Option<FileKind> {
    name.ends_with("_test.rego").then_some(FileKind::Rego)
}

type Classify = fn(&str) -> Option<FileKind>;

/// Hidden entries are skipped: a kubelet-mounted ConfigMap holds every file twice, once behind
/// the `..data` symlink and once in the timestamped `..2024_...` directory it points to.
fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// Reads every policy and data file under `dir`, recursively, in a stable order.
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, PolicyError> {
    walk(dir, classify)
}

fn walk(dir: &Path, classify: Classify) -> Result<Vec<SourceFile>, PolicyError> {
    if !dir.is_dir() {
        return Err(PolicyError::NotADirectory {
            path: dir.display().to_string(),
        });
    }
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
    for entry in walker {
        let entry = entry.map_err(|source| PolicyError::Walk {
            path: dir.display().to_string(),
            source,
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .unwrap_or(entry.path())
            .to_string_lossy()
            .replace('\\', "/");
        let Some(kind) = classify(&rel) else { continue };
        let text = std::fs::read_to_string(entry.path()).map_err(|source| PolicyError::Io {
            path: entry.path().display().to_string(),
            source,
        })?;
        files.push(SourceFile {
            name: rel,
            kind,
            text,
            layer: 0,
        });
    }
    Ok(files)
}

/// The default policy set compiled into the binary from `policies/`.
pub fn embedded() -> Vec<SourceFile> {
    embedded_matching(classify)
}

fn embedded_matching(classify: Classify) -> Vec<SourceFile> {
    let mut files = Vec::new();
    collect_embedded(&EMBEDDED, classify, &mut files);
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
}

/// The embedded files, read by the same rules as a directory: hidden entries are skipped
/// (see `embedded_set_is_the_policies_directory`, which holds the two in step).
fn collect_embedded(dir: &Dir<'static>, classify: Classify, out: &mut Vec<SourceFile>) {
    for file in dir.files() {
        if file.path().iter().any(is_hidden) {
            continue;
        }
        let name = file.path().to_string_lossy().replace('\\', "/");
        if let (Some(kind), Some(text)) = (classify(&name), file.contents_utf8()) {
            out.push(SourceFile {
                name,
                kind,
                text: text.to_string(),
                layer: 0,
            });
        }
    }
    for sub in dir.dirs().filter(|d| !d.path().iter().any(is_hidden)) {
        collect_embedded(sub, classify, out);
    }
}

/// Reads the files of `origin`.
pub fn read(origin: &Origin) -> Result<Vec<SourceFile>, PolicyError> {
    match origin {
        Origin::Embedded => Ok(embedded()),
        Origin::Directory(dir) => read_dir(dir),
    }
}

/// Reads the Rego unit tests of `origin`.
pub fn read_tests(origin: &Origin) -> Result<Vec<SourceFile>, PolicyError> {
    match origin {
        Origin::Embedded => Ok(embedded_matching(classify_test)),
        Origin::Directory(dir) => walk(dir, classify_test),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_layout_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("..2026_01_01_00_00_00.000000001");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("a.rego"), "package x").unwrap();
        std::fs::write(real.join("a_test.rego"), "package x").unwrap();
        std::fs::write(real.join("README.md"), "docs").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&real, dir.path().join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/a.rego", dir.path().join("a.rego")).unwrap();
        }
        let files = read_dir(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].name, "a.rego");
    }

    /// The binary serves what the ConfigMap would: the embedded set is `policies/` read as a
    /// directory (a file the directory reader refuses, such as one that is not UTF-8, fails
    /// here instead of being left out of the binary silently).
    #[test]
    fn embedded_set_is_the_policies_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        assert_eq!(embedded(), read_dir(&dir).unwrap());
        assert_eq!(
            read_tests(&Origin::Embedded).unwrap(),
            read_tests(&Origin::Directory(dir)).unwrap()
        );
    }

    #[test]
    fn missing_dir_is_a_clear_error() {
        let err = read_dir(Path::new("/nonexistent/policies")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/policies"), "{err}");
    }
}
