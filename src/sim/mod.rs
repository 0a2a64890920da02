//! The API server, offline: what `mlguard audit`, `mlguard test` and `mlguard bench` use to
//! put manifests through mlguard as a cluster would, without importing each other.
//!
//! - [`review_for`] builds the AdmissionReview the API server sends for an object;
//! - [`simulate`] mutates, applies the patch, mutates the result again (which must change
//!   nothing) and validates the mutated object, as the API server does on a create;
//! - [`answer`] is the webhook's own pipeline on a request body, from the body received to
//!   the body sent, without HTTP: what `mlguard bench` and the benchmarks time;
//! - `manifests` reads manifest files, directories and standard input.

pub mod manifests;

use std::path::PathBuf;

use serde_json::{json, Value as Json};

use crate::admission::{self, admit, object_name, Mode, ParsedReview, ReviewError};
use crate::policy::verdict::Verdict;
use crate::policy::{Evaluator, Stage};

/// Builds an AdmissionReview v1 for `object`, as the API server would send it.
pub fn review_for(
    object: &Json,
    namespace: &str,
    operation: &str,
    old_object: Option<&Json>,
    dry_run: bool,
    uid: &str,
) -> Json {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    let kind = object["kind"].as_str().unwrap_or("");
    let resource = format!("{}s", kind.to_lowercase());
    let object = with_namespace(object, namespace);
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    json!({
        "apiVersion": admission::API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": name,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "mlguard-test", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": old_object,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": if operation == "UPDATE" { "UpdateOptions" } else { "CreateOptions" }}
        }
    })
}

/// The webhook's pipeline on one request body, without HTTP: what `/mutate` and `/validate`
/// compute, from the body received to the body sent.
pub fn answer(
    evaluator: &Evaluator,
    body: &[u8],
    stage: Stage,
    mode: Mode,
) -> Result<Vec<u8>, ReviewError> {
    let (parsed, verdict) =
        admission::parse_and_admit(body, |review| admit(evaluator, review, stage, mode))?;
    serde_json::to_vec(&parsed.reply(&verdict))
        .map_err(|e| ReviewError::NotAReview(format!("reply not serializable: {e}")))
}

/// One object through mutate and validate, as the API server does.
pub struct Simulation {
    pub mutate: Verdict,
    pub mutated: Json,
    pub validate: Verdict,
    /// The patch a second mutation produced; must be empty.
    pub second_patch: Vec<Json>,
}

impl Simulation {
    /// One kind of finding (`|v| &v.denials`, warnings, ...) from both webhooks, mutation's
    /// first.
    pub fn both(&self, findings: fn(&Verdict) -> &Vec<String>) -> Vec<String> {
        findings(&self.mutate)
            .iter()
            .chain(findings(&self.validate))
            .cloned()
            .collect()
    }
}

/// What a simulated review is made of besides its object.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub namespace: &'a str,
    pub operation: &'a str,
    pub old_object: Option<&'a Json>,
    pub dry_run: bool,
    /// The review's `userInfo`, when not the default test user.
    pub user_info: Option<&'a Json>,
}

impl<'a> Request<'a> {
    /// A CREATE in `namespace` by the default test user.
    pub fn create(namespace: &'a str) -> Request<'a> {
        Request {
            namespace,
            operation: "CREATE",
            old_object: None,
            dry_run: false,
            user_info: None,
        }
    }

    /// The review for `object`, serialized and parsed as the webhook receives it.
    fn parse(&self, object: &Json) -> Result<ParsedReview, String> {
        let mut review = review_for(
            object,
            self.namespace,
            self.operation,
            self.old_object,
            self.dry_run,
            "case",
        );
        if let Some(user_info) = self.user_info {
            review["request"]["userInfo"] = user_info.clone();
        }
        let body = serde_json::to_vec(&review).map_err(|e| e.to_string())?;
        admission::parse(&body).map_err(|e| e.to_string())
    }
}

pub fn simulate(
    evaluator: &Evaluator,
    object: &Json,
    request: &Request<'_>,
    mode: Mode,
) -> Result<Simulation, String> {
    let namespace = request.namespace;
    let review = request.parse(object)?;
    let mutate = admit(evaluator, &review, Stage::Mutate, mode);
    // Without a patch the stored object is the one sent: its review is the one already
    // parsed, so only a patched object is serialized and parsed again.
    let (mutated, again) = match &mutate.patch {
        Some(patch) if !patch.is_empty() => {
            (patch.patched.clone(), Some(request.parse(&patch.patched)?))
        }
        Some(patch) => (patch.patched.clone(), None),
        None => (with_namespace(object, namespace), None),
    };
    let again = again.as_ref().unwrap_or(&review);
    let second_patch = admit(evaluator, again, Stage::Mutate, mode)
        .patch
        .map(|p| p.ops_json().as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    let validate = admit(evaluator, again, Stage::Validate, mode);
    Ok(Simulation {
        mutate,
        mutated,
        validate,
        second_patch,
    })
}

/// `object` as the review carries it: with its namespace filled in, as the API server does
/// for a namespaced create.
pub fn with_namespace(object: &Json, namespace: &str) -> Json {
    let mut object = object.clone();
    if object["metadata"].is_object() && object["metadata"]["namespace"].is_null() {
        object["metadata"]["namespace"] = json!(namespace);
    }
    object
}

/// One request body of a workload, for `mlguard bench` and the benchmarks.
#[derive(Debug, Clone)]
pub struct Review {
    /// "Pod ml-team/train-0 (CREATE)", for the report.
    pub name: String,
    pub body: Vec<u8>,
}

/// Turns manifests into the reviews the API server would send on CREATE. Objects that are
/// already AdmissionReviews are taken as they are.
pub fn reviews_for(objects: &[Json], namespace: &str) -> Vec<Review> {
    objects
        .iter()
        .enumerate()
        .map(|(i, object)| {
            let review = if object["kind"] == "AdmissionReview" {
                object.clone()
            } else {
                let ns = object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(namespace);
                review_for(object, ns, "CREATE", None, false, &format!("bench-{i}"))
            };
            let request = &review["request"];
            let object = if request["object"].is_object() {
                &request["object"]
            } else {
                &request["oldObject"]
            };
            let text = |v: &Json| v.as_str().unwrap_or("").to_string();
            let name = match object_name(
                &text(&object["metadata"]["name"]),
                &text(&object["metadata"]["generateName"]),
            ) {
                n if n.is_empty() => "(unnamed)".to_string(),
                n => n,
            };
            Review {
                name: format!(
                    "{} {}/{} ({})",
                    request["kind"]["kind"].as_str().unwrap_or("?"),
                    request["namespace"].as_str().unwrap_or(""),
                    name,
                    request["operation"].as_str().unwrap_or("?"),
                ),
                body: serde_json::to_vec(&review).unwrap_or_default(),
            }
        })
        .collect()
}

/// The reviews for manifests or AdmissionReview files under `paths`.
pub fn read_reviews(paths: &[PathBuf], namespace: &str) -> Result<Vec<Review>, String> {
    // The same reader as `mlguard audit`: directories walked, `-` for standard input.
    let objects: Vec<Json> = manifests::read(paths)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(_, object)| object)
        .collect();
    if objects.is_empty() {
        return Err(format!("no Kubernetes objects in {paths:?}"));
    }
    Ok(reviews_for(&objects, namespace))
}
