//! Policy test cases in YAML, run by `mlguard test` and by the project's own test suite.
//! This module is the format; `runner` plays each case through `crate::sim`, and `command`
//! is `mlguard test` itself.
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
//!     user_info: {username: alice, groups: [team-a]}   # the requester (optional)
//!     object: {apiVersion: v1, kind: Pod, ...}
//!     object_file: example.yaml    # or the object from a manifest file (its first document),
//!                                  # relative to this file
//!     expect:
//!       patched: {...}             # the whole object after mutation, or
//!       unchanged: true            # no patch at all, or
//!       patch: ["add /spec/x", ...] # exactly these operations (by op and path)
//!       deny: ["substring", ...]   # one substring per expected denial; none if omitted
//!       warn: ["substring", ...]   # one substring per expected warning; none if omitted
//!       would_deny: [...]          # dry-run records; none if omitted
//!       would_patch: [...]         # dry-run patch operations ("add /spec/..."); none if omitted
//!       exempted: "user alice"     # the exemption that admits it unevaluated; none if omitted
//! ```

mod command;
mod runner;

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value as Json;

pub use command::run;
pub use runner::{collect, run_file, PolicySets};

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
    pub object_file: Option<PathBuf>,
    #[serde(default)]
    pub old_object: Option<Json>,
    #[serde(default)]
    pub dry_run: bool,
    /// The review's `userInfo` (`{username, groups}`), for exemptions by user.
    #[serde(default)]
    pub user_info: Option<Json>,
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
    pub patch: Option<Vec<String>>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub warn: Vec<String>,
    #[serde(default)]
    pub would_deny: Vec<String>,
    #[serde(default)]
    pub would_patch: Vec<String>,
    /// The exemption that admits the object unevaluated (`"user alice"`, `"namespace x"`,
    /// a substring); none if omitted.
    #[serde(default)]
    pub exempted: Option<String>,
}

/// The result of one case.
#[derive(Debug)]
pub struct Outcome {
    pub file: PathBuf,
    pub name: String,
    pub failures: Vec<String>,
    /// The object after mutation, for schema checks; none when it is denied, since the API
    /// server then stores nothing.
    pub mutated: Option<Json>,
}
