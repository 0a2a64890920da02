//! Turns the operations policies emit into a patch that is safe to send: missing parents are
//! created, operations whose effect is already present are dropped (so that mutating the
//! mutated object yields an empty patch, as `reinvocationPolicy: IfNeeded` needs), and every
//! operation is checked to apply, in order, before the webhook answers.

use serde_json::{json, Value as Json};

/// A policy emitted an operation that cannot apply to the object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy {policy}: patch operation {op} does not apply: {reason}")]
pub struct PatchError {
    pub policy: String,
    pub op: String,
    pub reason: String,
}

/// The patch to send and the object it produces.
#[derive(Debug, Clone, PartialEq)]
pub struct SafePatch {
    /// Each operation with the policy that asked for it.
    pub ops: Vec<(String, Json)>,
    pub patched: Json,
}

impl SafePatch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn to_json_patch(&self) -> json_patch::Patch {
        json_patch::Patch(
            self.ops
                .iter()
                .filter_map(|(_, op)| serde_json::from_value(op.clone()).ok())
                .collect(),
        )
    }

    pub fn ops_json(&self) -> Json {
        Json::Array(self.ops.iter().map(|(_, op)| op.clone()).collect())
    }
}

fn parent_of(path: &str) -> Option<(&str, &str)> {
    path.rfind('/').map(|i| (&path[..i], &path[i + 1..]))
}

/// A missing container on the way to a token is an array when the token indexes one.
fn empty_container_for(token: &str) -> Json {
    if token == "-" || (!token.is_empty() && token.bytes().all(|b| b.is_ascii_digit())) {
        json!([])
    } else {
        json!({})
    }
}

/// `add` ops for every missing ancestor of `path`, outermost first.
fn missing_parents(doc: &Json, path: &str) -> Vec<Json> {
    let mut missing = Vec::new();
    let mut current = path;
    while let Some((parent, token)) = parent_of(current) {
        if parent.is_empty() || doc.pointer(parent).is_some() {
            break;
        }
        // Only object members are created: a missing array element (`/containers/5`) means
        // the policy addressed something that is not there, and the apply check says so.
        let (_, parent_token) = parent_of(parent).unwrap_or(("", ""));
        if parent_token == "-"
            || (!parent_token.is_empty() && parent_token.bytes().all(|b| b.is_ascii_digit()))
        {
            return Vec::new();
        }
        missing.push(json!({"op": "add", "path": parent, "value": empty_container_for(token)}));
        current = parent;
    }
    missing.reverse();
    missing
}

/// Whether applying `op` to `doc` would change nothing.
fn already_in_effect(doc: &Json, op: &Json) -> bool {
    let path = op["path"].as_str().unwrap_or_default();
    match op["op"].as_str() {
        Some("add") => match path.strip_suffix("/-") {
            // Appending an element the array already holds is how a toleration or a volume
            // would be added twice on reinvocation.
            Some(array) => doc
                .pointer(array)
                .and_then(Json::as_array)
                .is_some_and(|items| items.contains(&op["value"])),
            None => doc.pointer(path) == Some(&op["value"]),
        },
        Some("replace") => doc.pointer(path) == Some(&op["value"]),
        Some("remove") => doc.pointer(path).is_none(),
        _ => false,
    }
}

fn apply_one(doc: &mut Json, policy: &str, op: &Json) -> Result<(), PatchError> {
    let parsed: json_patch::PatchOperation =
        serde_json::from_value(op.clone()).map_err(|e| PatchError {
            policy: policy.into(),
            op: op.to_string(),
            reason: e.to_string(),
        })?;
    json_patch::patch(doc, &[parsed]).map_err(|e| PatchError {
        policy: policy.into(),
        op: op.to_string(),
        reason: e.to_string(),
    })
}

/// Builds the safe patch for `object` from `(policy, operation)` pairs, in order; `object`
/// becomes the patched object.
pub fn make_safe(object: Json, requested: &[(String, Json)]) -> Result<SafePatch, PatchError> {
    let mut doc = object;
    let mut ops = Vec::new();
    for (policy, op) in requested {
        if already_in_effect(&doc, op) {
            continue;
        }
        let mut op = op.clone();
        let path = op["path"].as_str().unwrap_or_default().to_string();
        // `replace` of something absent means "make it so"; RFC 6902 would reject it.
        if op["op"] == "replace" && doc.pointer(&path).is_none() {
            op["op"] = json!("add");
        }
        if op["op"] == "add" {
            for parent in missing_parents(&doc, &path) {
                apply_one(&mut doc, policy, &parent)?;
                ops.push((policy.clone(), parent));
            }
        }
        apply_one(&mut doc, policy, &op)?;
        ops.push((policy.clone(), op));
    }
    Ok(SafePatch { ops, patched: doc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ops: Json) -> Vec<(String, Json)> {
        ops.as_array()
            .unwrap()
            .iter()
            .map(|o| ("p".to_string(), o.clone()))
            .collect()
    }

    #[test]
    fn creates_missing_parents() {
        let pod = json!({"spec": {"containers": [{"name": "c"}]}});
        let tol = json!({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"});
        let safe = make_safe(
            pod.clone(),
            &req(json!([{"op": "add", "path": "/spec/tolerations/-", "value": tol}])),
        )
        .unwrap();
        assert_eq!(safe.ops.len(), 2);
        assert_eq!(safe.ops[0].1["path"], "/spec/tolerations");
        assert_eq!(safe.patched["spec"]["tolerations"][0], tol);
    }

    #[test]
    fn is_idempotent() {
        let pod = json!({"spec": {"containers": [{"name": "c"}]}});
        let ops = req(json!([
            {"op": "add", "path": "/spec/tolerations/-", "value": {"key": "k"}},
            {"op": "add", "path": "/spec/affinity/nodeAffinity", "value": {"x": 1}},
            {"op": "replace", "path": "/spec/priority", "value": 5}
        ]));
        let first = make_safe(pod.clone(), &ops).unwrap();
        assert!(!first.is_empty());
        let second = make_safe(first.patched.clone(), &ops).unwrap();
        assert!(second.is_empty(), "{:?}", second.ops);
        // The patch applies to the original object and gives the same result.
        let mut applied = pod.clone();
        json_patch::patch(&mut applied, &first.to_json_patch()).unwrap();
        assert_eq!(applied, first.patched);
    }

    #[test]
    fn duplicate_appends_in_one_patch_collapse() {
        let pod = json!({"spec": {}});
        let ops = req(json!([
            {"op": "add", "path": "/spec/tolerations/-", "value": {"key": "k"}},
            {"op": "add", "path": "/spec/tolerations/-", "value": {"key": "k"}}
        ]));
        let safe = make_safe(pod.clone(), &ops).unwrap();
        assert_eq!(
            safe.patched["spec"]["tolerations"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn an_op_that_cannot_apply_names_the_policy() {
        let pod = json!({"spec": {"containers": []}});
        let ops = req(json!([{"op": "add", "path": "/spec/containers/5/name", "value": "x"}]));
        let err = make_safe(pod.clone(), &ops).unwrap_err();
        assert_eq!(err.policy, "p");
        assert!(err.to_string().contains("/spec/containers/5/name"), "{err}");
    }

    #[test]
    fn removing_something_absent_is_dropped() {
        let safe = make_safe(
            json!({"spec": {}}),
            &req(json!([{"op": "remove", "path": "/spec/x"}])),
        )
        .unwrap();
        assert!(safe.is_empty());
    }
}
