//! The policy engine: Rego policies (regorus) in, admission verdicts out.
//!
//! - `source` reads policy files (a directory or the embedded default set);
//! - `lint` refuses non-portable or nondeterministic Rego before it is compiled;
//! - `settings` builds `data.mlguard.config` and each policy's enforcement settings;
//! - `compile` turns files into an immutable [`PolicySet`], once, off the request path;
//! - `eval` runs a [`PolicySet`] against one review;
//! - `patch` makes the patches policies emit safe and idempotent;
//! - `rego_tests` runs `test_*` rules in `*_test.rego` files, as `opa test` does;
//! - `verdict` combines outputs and enforcement actions into a [`verdict::Verdict`].

pub mod compile;
pub mod eval;
pub mod lint;
pub mod patch;
pub mod rego_tests;
pub mod settings;
pub mod source;
pub mod verdict;

pub use compile::{Backend, PolicySet};
pub use eval::{Evaluator, PolicyOutput, Stage};
pub use settings::Action;

/// Everything that can make a policy set unloadable. Each names the file (or policy) and says
/// what to change.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{file}:{line}: {message}")]
    Forbidden {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Compile(String),
    #[error("{file}: {message}")]
    Package { file: String, message: String },
    #[error("data file {file}: {message}")]
    Data { file: String, message: String },
    #[error("policy {policy}: settings: {message}")]
    Settings { policy: String, message: String },
    #[error("policy {policy}: `{rule}` {message}")]
    Shape {
        policy: String,
        rule: String,
        message: String,
    },
    #[error("no policies: {0}")]
    Empty(String),
}
