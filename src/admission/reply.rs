//! AdmissionReview v1 out: the reply for a verdict, and the denial for a review mlguard could
//! not evaluate.
//!
//! The reply is mlguard's own type rather than `kube::core::admission::AdmissionResponse`,
//! whose `patch` serializes as a JSON array of byte values. The API server happens to accept
//! that, but the AdmissionReview API documents a base64 string, and tools and people reading
//! replies (`jq '.response.patch | @base64d'`) expect one.

use std::collections::BTreeMap;

use base64::Engine as _;
use kube::core::Status;
use serde::Serialize;

use super::review::ParsedReview;
use crate::policy::verdict::Verdict;

/// An AdmissionReview carrying a response, as the API server reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    pub api_version: String,
    pub kind: &'static str,
    pub response: Response,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    pub status: Status,
    /// The JSON Patch, base64-encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

impl Reply {
    /// An admission with nothing else to say, echoing the review's apiVersion and uid.
    fn admitting(api_version: &str, uid: &str) -> Reply {
        Reply {
            api_version: api_version.to_string(),
            kind: "AdmissionReview",
            response: Response {
                uid: uid.to_string(),
                allowed: true,
                status: Status::default(),
                patch: None,
                patch_type: None,
                audit_annotations: BTreeMap::new(),
                warnings: None,
            },
        }
    }
}

impl Response {
    fn deny(&mut self, message: String, code: u16, reason: &str) {
        self.allowed = false;
        self.status.message = message;
        self.status.code = code;
        self.status.reason = reason.into();
        self.patch = None;
        self.patch_type = None;
    }
}

impl ParsedReview {
    fn response(&self) -> Reply {
        Reply::admitting(&self.api_version, &self.uid)
    }

    /// The reply for a verdict.
    pub fn reply(&self, verdict: &Verdict) -> Reply {
        let mut reply = self.response();
        let resp = &mut reply.response;
        if !verdict.allowed {
            let (code, reason) = match verdict.had_error {
                true => (500, "InternalError"),
                false => (403, "Forbidden"),
            };
            resp.deny(verdict.status_message(&self.subject()), code, reason);
        } else if let Some(patch) = verdict.patch.as_ref().filter(|p| !p.is_empty()) {
            match serde_json::to_vec(&patch.to_json_patch()) {
                Ok(bytes) => {
                    resp.patch = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                    resp.patch_type = Some("JSONPatch");
                }
                Err(e) => resp.deny(
                    format!("mlguard could not serialize its patch: {e}"),
                    500,
                    "InternalError",
                ),
            }
        }
        if !verdict.warnings.is_empty() {
            resp.warnings = Some(verdict.warnings.clone());
        }
        resp.audit_annotations = verdict.audit_annotations();
        reply
    }
}

/// The answer to a review mlguard did not finish evaluating (its deadline passed): refused
/// with `message`, or, where the admin chose so, admitted with `message` as a warning and an
/// audit annotation. Never a silent admission. `ids` are the review's apiVersion and uid.
pub fn unevaluated(ids: &ReviewIds, message: String, admit: bool) -> Reply {
    let mut reply = Reply::admitting(&ids.api_version, &ids.uid);
    if admit {
        reply
            .response
            .audit_annotations
            .insert(NOT_EVALUATED.into(), message.clone());
        reply.response.warnings = Some(vec![message]);
    } else {
        reply.response.deny(message, 500, "Timeout");
    }
    reply
}

/// Audit annotation key of a review admitted without its checks.
pub const NOT_EVALUATED: &str = "not-evaluated";

/// What a reply must echo, read from a body without building it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewIds {
    pub api_version: String,
    pub uid: String,
}

impl ReviewIds {
    /// The apiVersion and request uid of a body, or None when it has neither.
    pub fn read(body: &[u8]) -> Option<ReviewIds> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Envelope<'a> {
            api_version: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            request: Request<'a>,
        }
        #[derive(serde::Deserialize)]
        struct Request<'a> {
            #[serde(borrow)]
            uid: std::borrow::Cow<'a, str>,
        }
        let envelope: Envelope = serde_json::from_slice(body).ok()?;
        Some(ReviewIds {
            api_version: envelope.api_version.into_owned(),
            uid: envelope.request.uid.into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::patch::make_safe;

    fn review() -> ParsedReview {
        let body = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": "ml", "name": "p", "operation": "CREATE",
                        "object": {"metadata": {"name": "p"}, "spec": {}}}
        });
        super::super::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    /// The documented wire form: `patch` is a base64 string of the JSON Patch, with
    /// `patchType: JSONPatch`, as the API server and `jq '@base64d'` read it.
    #[test]
    fn the_patch_is_a_base64_string() {
        let op = serde_json::from_value(serde_json::json!(
            {"op": "add", "path": "/spec/priority", "value": 5}
        ))
        .unwrap();
        let patch = make_safe(serde_json::json!({"spec": {}}), &[("p".to_string(), op)]).unwrap();
        let verdict = Verdict {
            allowed: true,
            patch: Some(patch),
            ..Default::default()
        };
        let json = serde_json::to_value(review().reply(&verdict)).unwrap();
        let response = &json["response"];
        assert_eq!(json["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(json["kind"], "AdmissionReview");
        assert_eq!(response["uid"], "u1");
        assert_eq!(response["patchType"], "JSONPatch");
        let encoded = response["patch"].as_str().expect("a base64 string");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let ops: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(
            ops,
            serde_json::json!([{"op": "add", "path": "/spec/priority", "value": 5}])
        );
    }

    #[test]
    fn a_denial_carries_code_reason_and_no_patch() {
        let verdict = Verdict {
            allowed: false,
            denials: vec!["[p] no".into()],
            ..Default::default()
        };
        let json = serde_json::to_value(review().reply(&verdict)).unwrap();
        let response = &json["response"];
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 403);
        assert_eq!(response["status"]["reason"], "Forbidden");
        assert_eq!(
            response["status"]["message"],
            "mlguard denied Pod ml/p: [p] no"
        );
        assert!(response.get("patch").is_none());
    }
}
