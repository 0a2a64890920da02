//! Policy outputs plus enforcement actions in, one admission verdict out. A pure function: the
//! handler, the audit command and the tests all go through [`decide`].

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::eval::PolicyOutput;
use super::exemptions::Exemption;
use super::patch::{describe, make_safe, SafePatch};
use super::set::PolicySet;
use super::settings::Action;

/// Audit annotation values are stored in every audit event: keep them short.
pub const AUDIT_ANNOTATION_LIMIT: usize = 1024;
/// Audit annotation keys; the API server prefixes them with the webhook's name, giving e.g.
/// `validate.mlguard.io/would-deny`.
pub const WOULD_DENY: &str = "would-deny";
pub const WOULD_PATCH: &str = "would-patch";
/// The exemption that admitted a review without evaluating it, e.g. `namespace kube-system`.
pub const EXEMPTED: &str = "exempted";

/// What a policy contributed to the verdict, for the decision log and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub policy: String,
    pub action: Action,
    pub finding: Finding,
    pub messages: Vec<String>,
}

impl Fired {
    /// What the finding did, whatever the policy's configured action: a denial or an error
    /// is routed to deny, warn or dryrun; a warning is a warning; a patch is applied; under
    /// dryrun each is only recorded.
    pub fn effect(&self) -> &'static str {
        match (self.finding, self.action) {
            (_, Action::Dryrun) => "dryrun",
            (Finding::Patch, _) => "patch",
            (Finding::Warn, _) => "warn",
            (_, action) => action.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    Deny,
    Warn,
    Patch,
    Error,
}

impl Finding {
    pub fn as_str(self) -> &'static str {
        match self {
            Finding::Deny => "deny",
            Finding::Warn => "warn",
            Finding::Patch => "patch",
            Finding::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// Enforced violations, each prefixed with its policy.
    pub denials: Vec<String>,
    pub warnings: Vec<String>,
    /// The patch to send (empty when nothing changes).
    pub patch: Option<SafePatch>,
    pub would_deny: Vec<String>,
    pub would_patch: Vec<String>,
    pub fired: Vec<Fired>,
    /// A policy failed: the verdict reflects it, and it is counted as an error.
    pub had_error: bool,
    /// The exemption that admitted the review before any policy ran.
    pub exempted: Option<Exemption>,
}

impl Verdict {
    /// A denial that is not a policy's: mlguard could not evaluate the review (a panic, an
    /// object it cannot read, a deadline). Counted as an error, never an admission.
    pub fn error(message: String) -> Verdict {
        Verdict {
            allowed: false,
            had_error: true,
            denials: vec![message],
            ..Default::default()
        }
    }

    /// An admission without evaluation, because `exemption` applies.
    pub fn exempt(exemption: Exemption) -> Verdict {
        Verdict {
            allowed: true,
            exempted: Some(exemption),
            ..Default::default()
        }
    }

    /// The single `status.message` of a denial.
    pub fn status_message(&self, subject: &str) -> String {
        format!("mlguard denied {subject}: {}", self.denials.join("; "))
    }

    pub fn audit_annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(exemption) = &self.exempted {
            out.insert(EXEMPTED.to_string(), bounded(&exemption.to_string()));
        }
        if !self.would_deny.is_empty() {
            out.insert(WOULD_DENY.to_string(), bounded(&self.would_deny.join("; ")));
        }
        if !self.would_patch.is_empty() {
            out.insert(
                WOULD_PATCH.to_string(),
                bounded(&self.would_patch.join("; ")),
            );
        }
        out
    }

    pub fn patched(&self) -> bool {
        self.patch.as_ref().is_some_and(|p| !p.is_empty())
    }

    /// The most important thing that happened: the metrics' outcome label, the decision
    /// log's `decision` and `mlguard bench`'s outcome.
    pub fn outcome(&self) -> &'static str {
        if self.had_error {
            "error"
        } else if !self.allowed {
            "denied"
        } else if self.patched() {
            "patched"
        } else if !self.warnings.is_empty() {
            "warned"
        } else {
            "allowed"
        }
    }
}

fn bounded(s: &str) -> String {
    if s.len() <= AUDIT_ANNOTATION_LIMIT {
        return s.to_string();
    }
    let mut end = AUDIT_ANNOTATION_LIMIT - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Where the request comes from, for per-namespace overrides, and the global `--mode` cap.
#[derive(Debug, Clone)]
pub struct Enforcement<'a> {
    pub cap: Action,
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Combines policy outputs into a verdict. `object` is the object under review, needed only
/// when a policy patches; it is patched in place (on a 256 KB pod a copy cost 0.2 ms).
pub fn decide(
    set: &PolicySet,
    outputs: Vec<PolicyOutput>,
    object: Option<Json>,
    enforcement: &Enforcement<'_>,
) -> Verdict {
    let mut v = Verdict::default();
    let mut to_apply = Vec::new();
    for out in outputs {
        let action = set
            .policy(&out.policy)
            .map_or(Action::Deny, |p| {
                p.settings
                    .action_for(enforcement.namespace, enforcement.labels)
            })
            .max(enforcement.cap);
        let tag = |m: &str| format!("[{}] {m}", out.policy);
        let fired = |finding: Finding, messages: Vec<String>| Fired {
            policy: out.policy.clone(),
            action,
            finding,
            messages,
        };
        if let Some(err) = &out.error {
            v.had_error = true;
            let msg = format!(
                "policy failed to evaluate ({}); mlguard does not admit on its own errors, \
                 ask a cluster admin to check the policy",
                err.message
            );
            route(&mut v, action, tag(&msg));
            v.fired.push(fired(Finding::Error, vec![msg]));
            continue;
        }
        if !out.deny.is_empty() {
            let texts: Vec<String> = out.deny.iter().map(|m| m.text.clone()).collect();
            for t in &texts {
                route(&mut v, action, tag(t));
            }
            v.fired.push(fired(Finding::Deny, texts));
        }
        if !out.warn.is_empty() {
            let texts: Vec<String> = out.warn.iter().map(|m| m.text.clone()).collect();
            if action != Action::Dryrun {
                v.warnings.extend(texts.iter().map(|t| tag(t)));
            }
            v.fired.push(fired(Finding::Warn, texts));
        }
        if !out.patch.is_empty() {
            let described: Vec<String> = out.patch.iter().map(describe).collect();
            if action == Action::Dryrun {
                v.would_patch.extend(described.iter().map(|d| tag(d)));
            } else {
                to_apply.extend(out.patch.into_iter().map(|op| (out.policy.clone(), op)));
            }
            v.fired.push(fired(Finding::Patch, described));
        }
    }
    if !to_apply.is_empty() {
        match object.map(|o| make_safe(o, &to_apply)) {
            Some(Ok(safe)) => v.patch = Some(safe),
            Some(Err(e)) => {
                v.had_error = true;
                v.denials.push(format!("[{}] {e}", e.policy));
            }
            None => {
                v.had_error = true;
                v.denials
                    .push("the review has no object to patch".to_string());
            }
        }
    }
    v.allowed = v.denials.is_empty();
    v
}

fn route(v: &mut Verdict, action: Action, message: String) {
    match action {
        Action::Deny => v.denials.push(message),
        Action::Warn => v.warnings.push(message),
        Action::Dryrun => v.would_deny.push(message),
    }
}
