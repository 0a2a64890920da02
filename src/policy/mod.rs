//! The policy engine: Rego policies (regorus) in, admission verdicts out. Knows nothing of
//! HTTP, files being watched or the API server; the cluster state comes in as plain data.
//!
//! - `set` holds the types of a compiled set: [`PolicySet`], [`Policy`], [`RuleKind`],
//!   [`Stage`], [`Backend`];
//! - `source` reads policy files (a directory or the embedded default set); `layers` stacks
//!   them: the embedded defaults, then each `--policies` directory over them;
//! - `lint` refuses non-portable or nondeterministic Rego before it is compiled;
//! - `settings` builds `data.mlguard.config` and each policy's enforcement settings;
//!   `exemptions` reads its `exemptions:` section (who and what is never evaluated);
//! - `kinds` checks the workload kinds table and says which kinds reach the policies;
//! - `data` builds the data document; `limits` bounds one evaluation;
//! - `compile` turns files into an immutable [`PolicySet`], once, off the request path, with
//!   `combined` (one VM run for many policies) and `probe` (sample reviews at load);
//! - `eval` runs a [`PolicySet`] against one review; `published` holds the one being served;
//! - `patch` makes the patches policies emit safe and idempotent;
//! - `verdict` combines outputs and enforcement actions into a [`verdict::Verdict`];
//! - `rego_tests` runs `test_*` rules in `*_test.rego` files, as `opa test` does.

pub mod combined;
pub mod compile;
pub mod data;
pub mod error;
pub mod eval;
pub mod exemptions;
pub mod kinds;
pub mod layers;
pub mod limits;
pub mod lint;
pub mod patch;
pub mod probe;
pub mod published;
pub mod rego_tests;
pub mod set;
pub mod settings;
pub mod source;
pub mod verdict;
pub mod webhooks;

pub use error::PolicyError;
pub use eval::{Evaluator, PolicyOutput};
pub use kinds::{WorkloadKind, WorkloadKinds};
pub use published::Published;
pub use set::{Backend, Policy, PolicySet, RuleKind, Stage};
pub use settings::Action;
