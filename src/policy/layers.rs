//! A policy set in layers: the embedded default policies at the bottom (unless turned off),
//! then each `--policies` directory in the order given. What a layer does to those below it:
//!
//! - a Rego file whose package (`package mlguard.policies.NAME`, or a helper library
//!   `mlguard.lib.NAME`) is defined below replaces every lower file of that package, so one
//!   file overrides one default policy;
//! - its data files (`config.yaml`, ...) are deep-merged over the configuration below: maps
//!   merge key by key, lists and scalars replace (`settings::build_config`);
//! - anything else adds.
//!
//! With one layer the files keep their names relative to it, as before layering; with more,
//! a directory layer's files are named by their path, so that a message names the file an
//! admin wrote, and two layers' `config.yaml` stay two files.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::source::{self, Origin, SourceFile};
use super::PolicyError;

/// The layers of a policy set, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    origins: Vec<Origin>,
    names: Vec<String>,
}

impl Layers {
    /// The embedded defaults when `defaults`, then `directories` in order.
    pub fn new(defaults: bool, directories: Vec<PathBuf>) -> Layers {
        let origins = defaults
            .then_some(Origin::Embedded)
            .into_iter()
            .chain(directories.into_iter().map(Origin::Directory))
            .collect();
        Layers::of(origins)
    }

    fn of(origins: Vec<Origin>) -> Layers {
        let names = origins
            .iter()
            .map(|o| match o {
                Origin::Embedded => "embedded".to_string(),
                Origin::Directory(dir) => dir.display().to_string(),
            })
            .collect();
        Layers { origins, names }
    }

    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }

    /// Short names, bottom first: `embedded` or the directory; for logs.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The directory layers: what the reloader watches.
    pub fn directories(&self) -> Vec<PathBuf> {
        self.origins
            .iter()
            .filter_map(|o| match o {
                Origin::Directory(dir) => Some(dir.clone()),
                Origin::Embedded => None,
            })
            .collect()
    }
}

impl From<Origin> for Layers {
    fn from(origin: Origin) -> Layers {
        Layers::of(vec![origin])
    }
}

impl std::fmt::Display for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.origins.iter().map(ToString::to_string).collect();
        match shown.is_empty() {
            true => f.write_str("no policy layers"),
            false => f.write_str(&shown.join(" + ")),
        }
    }
}

/// The policy and data files of `layers`, stacked.
pub fn read(layers: &Layers) -> Result<Vec<SourceFile>, PolicyError> {
    stack(layers, source::read)
}

/// The Rego unit tests of `layers`, stacked the same way (a test package defined in a layer
/// replaces that package's tests from below).
pub fn read_tests(layers: &Layers) -> Result<Vec<SourceFile>, PolicyError> {
    stack(layers, source::read_tests)
}

fn stack(
    layers: &Layers,
    read_one: fn(&Origin) -> Result<Vec<SourceFile>, PolicyError>,
) -> Result<Vec<SourceFile>, PolicyError> {
    let several = layers.origins.len() > 1;
    let mut out: Vec<SourceFile> = Vec::new();
    for (index, origin) in layers.origins.iter().enumerate() {
        let mut files = read_one(origin)?;
        for file in &mut files {
            file.layer = index;
            if let (true, Origin::Directory(dir)) = (several, origin) {
                file.name = dir.join(&file.name).display().to_string();
            }
        }
        let replaced: BTreeSet<&str> = files
            .iter()
            .filter(|f| f.kind == source::FileKind::Rego)
            .filter_map(|f| package_of(&f.text))
            .collect();
        out.retain(|f| {
            f.kind != source::FileKind::Rego
                || package_of(&f.text).is_none_or(|p| !replaced.contains(p))
        });
        out.extend(files);
    }
    Ok(out)
}

/// The package a Rego file declares (`package a.b.c`), or None when there is none to read.
pub fn package_of(text: &str) -> Option<&str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .find(|l| !l.is_empty())?
        .strip_prefix("package ")
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::source::FileKind;

    fn write(dir: &std::path::Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn packages_are_read_past_comments() {
        assert_eq!(
            package_of("# a comment\n\npackage mlguard.policies.x # trailing\nimport rego.v1\n"),
            Some("mlguard.policies.x")
        );
        assert_eq!(package_of("import rego.v1\npackage x\n"), None);
        assert_eq!(package_of(""), None);
    }

    /// One file replaces one default policy; a new policy adds; the defaults' other files stay.
    #[test]
    fn a_layer_replaces_a_policy_by_package_and_adds_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "my_limits.rego",
            "package mlguard.policies.gpu_limits\nimport rego.v1\ndeny contains \"x\" if false\n",
        );
        write(
            dir.path(),
            "extra.rego",
            "package mlguard.policies.extra\nimport rego.v1\ndeny contains \"x\" if false\n",
        );
        write(dir.path(), "config.yaml", "jobs:\n  limit_all_jobs: true\n");
        let layers = Layers::new(true, vec![dir.path().to_path_buf()]);
        let files = read(&layers).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert!(!names.contains(&"gpu_limits.rego"), "{names:?}");
        assert!(names.contains(&"gpu_shm.rego"), "{names:?}");
        let mine = dir.path().join("my_limits.rego").display().to_string();
        assert!(names.contains(&mine.as_str()), "{names:?}");
        let data: Vec<(&str, usize)> = files
            .iter()
            .filter(|f| f.kind == FileKind::Data)
            .map(|f| (f.name.as_str(), f.layer))
            .collect();
        let theirs = dir.path().join("config.yaml").display().to_string();
        assert_eq!(data, [("config.yaml", 0), (theirs.as_str(), 1)]);
        assert_eq!(layers.names()[0], "embedded");
        assert_eq!(layers.directories(), [dir.path().to_path_buf()]);
    }

    #[test]
    fn one_layer_keeps_relative_names() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.rego", "package mlguard.policies.a\n");
        let files = read(&Layers::new(false, vec![dir.path().to_path_buf()])).unwrap();
        assert_eq!(files[0].name, "a.rego");
        assert_eq!(read(&Origin::Embedded.into()).unwrap(), source::embedded());
    }
}
