//! AdmissionReview v1 out, built with `kube::core::admission`: the reply for a verdict, and
//! the denial for a review mlguard could not evaluate.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, GroupVersionKind, GroupVersionResource, TypeMeta};

use super::review::ParsedReview;
use crate::policy::verdict::Verdict;

impl ParsedReview {
    fn response(&self) -> AdmissionResponse {
        let operation = match self.operation.as_str() {
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "CONNECT" => Operation::Connect,
            _ => Operation::Create,
        };
        let req: AdmissionRequest<DynamicObject> = AdmissionRequest {
            types: TypeMeta {
                api_version: self.api_version.clone(),
                kind: "AdmissionReview".into(),
            },
            uid: self.uid.clone(),
            kind: GroupVersionKind::gvk(&self.group, &self.version, &self.kind),
            resource: GroupVersionResource::gvr(&self.group, &self.version, &self.resource),
            sub_resource: None,
            request_kind: None,
            request_resource: None,
            request_sub_resource: None,
            name: self.name.clone(),
            namespace: Some(self.namespace.clone()),
            operation,
            user_info: Default::default(),
            object: None,
            old_object: None,
            dry_run: self.dry_run,
            options: None,
        };
        AdmissionResponse::from(&req)
    }

    /// Allowed, unchanged: for requests no policy looks at.
    pub fn allow(&self) -> AdmissionReview<DynamicObject> {
        self.response().into_review()
    }

    /// The reply for a verdict.
    pub fn reply(&self, verdict: &Verdict) -> AdmissionReview<DynamicObject> {
        let mut resp = self.response();
        if !verdict.allowed {
            resp = resp.deny(verdict.status_message(&self.subject()));
            resp.result.code = if verdict.had_error { 500 } else { 403 };
            resp.result.reason = if verdict.had_error {
                "InternalError"
            } else {
                "Forbidden"
            }
            .into();
        } else if let Some(patch) = verdict.patch.as_ref().filter(|p| !p.is_empty()) {
            match resp.clone().with_patch(patch.to_json_patch()) {
                Ok(r) => resp = r,
                Err(e) => {
                    resp = resp.deny(format!("mlguard could not serialize its patch: {e}"));
                    resp.result.code = 500;
                }
            }
        }
        if !verdict.warnings.is_empty() {
            resp.warnings = Some(verdict.warnings.clone());
        }
        resp.audit_annotations = verdict.audit_annotations().into_iter().collect();
        resp.into_review()
    }
}

/// A review that cannot be answered from its own content (fault in mlguard, not in policy):
/// denied, naming the error, never silently admitted.
pub fn internal_error(review: &ParsedReview, message: &str) -> AdmissionReview<DynamicObject> {
    let mut resp = review.response().deny(format!(
        "mlguard could not evaluate {}: {message}",
        review.subject()
    ));
    resp.result.code = 500;
    resp.result.reason = "InternalError".into();
    resp.into_review()
}
