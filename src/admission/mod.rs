//! The admission layer: the AdmissionReview wire format (`review` parses a body once, `reply`
//! answers it), `exemption` (who and what is never evaluated) and [`admit`], the pure
//! decision of one review against one evaluator. The
//! webhook handlers, `mlguard audit`, `mlguard test` and `mlguard bench` all decide here.

pub mod exemption;
pub mod reply;
pub mod review;

pub use reply::{unevaluated, Reply, ReviewIds};
pub use review::{object_name, parse, ParsedReview, ReviewError, UnreadableObject, API_VERSION};

use std::time::Instant;

use crate::policy::verdict::{decide, Enforcement, Verdict};
use crate::policy::{Action, Evaluator, Stage};

/// The global `--mode`: caps every policy's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    #[default]
    Enforce,
    Warn,
    Dryrun,
}

impl Mode {
    pub fn cap(self) -> Action {
        match self {
            Mode::Enforce => Action::Deny,
            Mode::Warn => Action::Warn,
            Mode::Dryrun => Action::Dryrun,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Dryrun => "dryrun",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "warn" => Ok(Mode::Warn),
            "dryrun" => Ok(Mode::Dryrun),
            other => Err(format!(
                "unknown mode {other:?}: use enforce, warn or dryrun"
            )),
        }
    }
}

/// The verdict for `review` at `stage`. Requests that are not policy subjects, or whose
/// operation no policy runs on, are allowed unchanged; so are exempted ones (the policy
/// set's `exemptions`, see [`exemption::check`]), whose verdict names the exemption. A server-side dry-run (`dryRun: true`)
/// is answered exactly as the real request: mlguard has no side effects to skip.
pub fn admit(evaluator: &Evaluator, review: &ParsedReview, stage: Stage, mode: Mode) -> Verdict {
    admit_until(evaluator, review, stage, mode, None)
}

/// [`admit`], with policies not yet run by `deadline` counted as failed (see
/// `Evaluator::evaluate_until`).
pub fn admit_until(
    evaluator: &Evaluator,
    review: &ParsedReview,
    stage: Stage,
    mode: Mode,
    deadline: Option<Instant>,
) -> Verdict {
    if !review.is_policy_subject(&evaluator.set.kinds) || !evaluator.set.handles(&review.operation)
    {
        return Verdict {
            allowed: true,
            ..Default::default()
        };
    }
    let known_labels = evaluator.cluster.known_namespace_labels(&review.namespace);
    if let Some(exemption) = exemption::check(&evaluator.set.exemptions, review, known_labels) {
        return Verdict::exempt(exemption);
    }
    let request = match review.request() {
        Ok(request) => request,
        Err(unreadable) => return Verdict::error(unreadable.to_string()),
    };
    let outputs = evaluator.evaluate_until(request, stage, deadline);
    let object = outputs
        .iter()
        .any(|o| !o.patch.is_empty())
        .then(|| review.object_json())
        .flatten();
    let labels = evaluator.cluster.namespace_labels(&review.namespace);
    decide(
        &evaluator.set,
        outputs,
        object,
        &Enforcement {
            cap: mode.cap(),
            namespace: &review.namespace,
            labels,
        },
    )
}

/// A request body as the webhook answers it: parsed once, then decided by `admit_parsed`. A
/// panic while deciding becomes a denial that names an internal error, never an admission.
pub fn parse_and_admit(
    body: &[u8],
    admit_parsed: impl FnOnce(&ParsedReview) -> Verdict,
) -> Result<(ParsedReview, Verdict), ReviewError> {
    let parsed = parse(body)?;
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| admit_parsed(&parsed)))
        .unwrap_or_else(|_| {
            Verdict::error("internal error while evaluating policies (see mlguard's log)".into())
        });
    Ok((parsed, verdict))
}
