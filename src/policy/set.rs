//! The policy set's types: what a compiled set is made of, with no knowledge of how it was
//! compiled or how it is evaluated. `compile` builds a [`PolicySet`]; `eval` runs one.

use std::sync::Arc;

use regorus::rvm::program::Program;
use regorus::{Engine, Value};
use sha2::{Digest, Sha256};

use super::exemptions::Exemptions;
use super::layers::Layers;
use super::settings::PolicySettings;
use super::source::SourceFile;

pub const POLICY_PACKAGE_PREFIX: &str = "data.mlguard.policies.";

/// The rules a policy package may define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleKind {
    Deny,
    Warn,
    Patch,
}

impl RuleKind {
    pub const ALL: [RuleKind; 3] = [RuleKind::Deny, RuleKind::Warn, RuleKind::Patch];
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Deny => "deny",
            RuleKind::Warn => "warn",
            RuleKind::Patch => "patch",
        }
    }
}

/// Which webhook is asking: mutation runs `patch` rules, validation runs `deny` and `warn`. A
/// policy that patches also has its `warn` rules run with its patches, so that a mutation can
/// say what it did in the mutating webhook's answer (see [`Policy::rules_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Mutate,
    Validate,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::Mutate, Stage::Validate];

    pub fn rules(self) -> &'static [RuleKind] {
        match self {
            Stage::Mutate => &[RuleKind::Patch],
            Stage::Validate => &[RuleKind::Deny, RuleKind::Warn],
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Mutate => "mutate",
            Stage::Validate => "validate",
        }
    }
}

/// How policies are evaluated. The bytecode VM is several times faster; the tree-walking
/// interpreter covers every Rego construct, so it is the fallback when an admin's policy uses
/// one the VM does not compile (for example `with`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Vm,
    Interpreter,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Vm => "vm",
            Backend::Interpreter => "interpreter",
        }
    }
}

/// One policy package and what it defines.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub rules: Vec<RuleKind>,
    pub settings: PolicySettings,
    /// `input.parameters`, converted once.
    pub parameters: Value,
}

impl Policy {
    /// The rules of this policy that run at `stage`. At mutation, a patching policy's `warn`
    /// rules run too: "mlguard set activeDeadlineSeconds..." belongs with the patch that set
    /// it. They run at validation as well, on the mutated object, so such a warning must hold
    /// only before its patch applies (as "the field is unset" does), or it is said twice.
    pub fn rules_at(&self, stage: Stage) -> impl Iterator<Item = RuleKind> + '_ {
        let patches = self.rules.contains(&RuleKind::Patch);
        stage
            .rules()
            .iter()
            .chain(match stage {
                Stage::Mutate if patches => &[RuleKind::Warn][..],
                _ => &[],
            })
            .copied()
            .filter(|r| self.rules.contains(r))
    }

    pub fn entry_point(&self, rule: RuleKind) -> String {
        format!("{POLICY_PACKAGE_PREFIX}{}.{}", self.name, rule.as_str())
    }
}

/// A compiled, immutable policy set. Shared by every request through an `Arc`.
pub struct PolicySet {
    /// Where its files came from, bottom layer first.
    pub origin: Layers,
    pub files: Vec<String>,
    pub policies: Vec<Policy>,
    /// `data.mlguard.config` as merged from the data files.
    pub config: serde_json::Value,
    pub(crate) config_value: Value,
    /// The kinds the policies judge: Pods and the workload kinds table's entries.
    pub kinds: super::WorkloadKinds,
    /// `data.mlguard.config.exemptions`, checked at load.
    pub exemptions: Exemptions,
    /// Content digest of every file: a reload that changes nothing is not a new generation.
    pub digest: String,
    pub backend: Backend,
    /// Why the VM was not used, when it was not.
    pub vm_fallback_reason: Option<String>,
    /// Ways the policies could be evaluated faster (see `lint::package_import_hints`), shown
    /// at load, on `/status` and by `mlguard bench`.
    pub hints: Vec<String>,
    pub(crate) engine: Engine,
    pub(crate) program: Option<Arc<Program>>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("origin", &self.origin)
            .field("policies", &self.policy_names())
            .field("backend", &self.backend)
            .finish()
    }
}

/// Content digest of policy files, in order.
pub fn digest(files: &[SourceFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.text.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl PolicySet {
    pub fn policy_names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| p.name.as_str()).collect()
    }

    /// Logs what an admin should know about a set that loaded: why it is not on the VM, and
    /// how it could be evaluated faster.
    pub fn log_notes(&self) {
        if let Some(reason) = &self.vm_fallback_reason {
            tracing::warn!(
                reason,
                "policies use a construct the VM does not compile; using the interpreter"
            );
        }
        for hint in &self.hints {
            tracing::warn!(hint, "policy evaluation could be faster");
        }
    }

    /// Whether any policy runs on `operation`: a review no policy runs on is admitted
    /// without building its objects.
    pub fn handles(&self, operation: &str) -> bool {
        self.policies
            .iter()
            .any(|p| p.settings.applies_to(operation))
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }
}
