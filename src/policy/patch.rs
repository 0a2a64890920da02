//! Turns the operations policies emit into a patch that is safe to send: missing parents are
//! created, operations whose effect is already present are dropped (so that mutating the
//! mutated object yields an empty patch, as `reinvocationPolicy: IfNeeded` needs), and every
//! operation is checked to apply, in order, before the webhook answers.
//!
//! Operations arrive parsed (see `eval`) and leave as they are: nothing here parses JSON
//! Patch again, so an operation cannot be lost between the check and the reply.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde_json::{json, Value as Json};

/// A policy emitted an operation that cannot apply to the object.
#[derive(Debug, thiserror::Error)]
#[error("policy {policy}: patch operation {op} does not apply: {source}")]
pub struct PatchError {
    pub policy: String,
    pub op: String,
    #[source]
    pub source: json_patch::PatchError,
}

/// The patch to send and the object it produces.
#[derive(Debug, Clone, PartialEq)]
pub struct SafePatch {
    /// Each operation with the policy that asked for it.
    pub ops: Vec<(String, PatchOperation)>,
    pub patched: Json,
}

impl SafePatch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn to_json_patch(&self) -> json_patch::Patch {
        json_patch::Patch(self.ops.iter().map(|(_, op)| op.clone()).collect())
    }

    /// The operations as JSON, for reports and tests.
    pub fn ops_json(&self) -> Json {
        Json::Array(self.ops.iter().map(|(_, op)| op_json(op)).collect())
    }
}

/// One operation as JSON (its RFC 6902 form).
pub fn op_json(op: &PatchOperation) -> Json {
    serde_json::to_value(op).unwrap_or(Json::Null)
}

/// "add /spec/tolerations/-": an operation in a few words, for logs and dry-run records.
pub fn describe(op: &PatchOperation) -> String {
    let name = match op {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    };
    format!("{name} {}", op.path().as_str())
}

fn parent_of(path: &str) -> Option<(&str, &str)> {
    path.rfind('/').map(|i| (&path[..i], &path[i + 1..]))
}

fn is_index(token: &str) -> bool {
    token == "-" || (!token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()))
}

/// A missing container on the way to a token is an array when the token indexes one.
fn empty_container_for(token: &str) -> Json {
    if is_index(token) {
        json!([])
    } else {
        json!({})
    }
}

/// At most this many missing ancestors are created for one operation. Each is an operation of
/// its own that carries its whole path, so a path of k missing levels (`/a//////...`) would
/// otherwise become k operations costing O(k^2) to check here and to apply at the API server:
/// seconds for a few thousand. Kubernetes objects are nowhere near this deep.
const MAX_MISSING_PARENTS: usize = 32;

/// `add` ops for every missing ancestor of `path`, outermost first; none when there are more
/// than `MAX_MISSING_PARENTS` (the apply check then rejects the operation).
fn missing_parents(doc: &Json, path: &str) -> Vec<PatchOperation> {
    let mut missing = Vec::new();
    let mut current = path;
    while let Some((parent, token)) = parent_of(current) {
        if parent.is_empty() || doc.pointer(parent).is_some() {
            break;
        }
        if missing.len() == MAX_MISSING_PARENTS {
            return Vec::new();
        }
        // Only object members are created: a missing array element (`/containers/5`) means
        // the policy addressed something that is not there, and the apply check says so.
        let (_, parent_token) = parent_of(parent).unwrap_or(("", ""));
        if is_index(parent_token) {
            return Vec::new();
        }
        // A prefix of a pointer that parsed is itself a valid pointer.
        let Ok(pointer) = PointerBuf::parse(parent) else {
            return Vec::new();
        };
        missing.push(PatchOperation::Add(AddOperation {
            path: pointer,
            value: empty_container_for(token),
        }));
        current = parent;
    }
    missing.reverse();
    missing
}

/// Whether applying `op` to `doc` would change nothing.
fn already_in_effect(doc: &Json, op: &PatchOperation) -> bool {
    let path = op.path().as_str();
    match op {
        // A `replace` of something absent is made an `add` (`make_safe`), so it is in effect
        // exactly when that `add` is: `replace /spec/tolerations/-` appends too.
        PatchOperation::Add(AddOperation { value, .. })
        | PatchOperation::Replace(ReplaceOperation { value, .. }) => {
            match path
                .strip_suffix("/-")
                .and_then(|array| doc.pointer(array)?.as_array())
            {
                // Appending an element the array already holds is how a toleration or a
                // volume would be added twice on reinvocation.
                Some(items) => items.contains(value),
                // Otherwise `-` is a plain member name (of an object), as any other.
                None => doc.pointer(path) == Some(value),
            }
        }
        PatchOperation::Remove(_) => doc.pointer(path).is_none(),
        _ => false,
    }
}

fn apply_one(doc: &mut Json, policy: &str, op: &PatchOperation) -> Result<(), PatchError> {
    json_patch::patch(doc, std::slice::from_ref(op)).map_err(|source| PatchError {
        policy: policy.into(),
        op: op_json(op).to_string(),
        source,
    })
}

/// Builds the safe patch for `object` from `(policy, operation)` pairs, in order; `object`
/// becomes the patched object.
pub fn make_safe(
    object: Json,
    requested: &[(String, PatchOperation)],
) -> Result<SafePatch, PatchError> {
    let mut doc = object;
    let mut ops = Vec::new();
    for (policy, op) in requested {
        if already_in_effect(&doc, op) {
            continue;
        }
        let op = match op {
            // `replace` of something absent means "make it so"; RFC 6902 would reject it.
            PatchOperation::Replace(r) if doc.pointer(r.path.as_str()).is_none() => {
                PatchOperation::Add(AddOperation {
                    path: r.path.clone(),
                    value: r.value.clone(),
                })
            }
            other => other.clone(),
        };
        if let PatchOperation::Add(add) = &op {
            for parent in missing_parents(&doc, add.path.as_str()) {
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

    fn req(ops: Json) -> Vec<(String, PatchOperation)> {
        ops.as_array()
            .unwrap()
            .iter()
            .map(|o| ("p".to_string(), serde_json::from_value(o.clone()).unwrap()))
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
        assert_eq!(safe.ops[0].1.path().as_str(), "/spec/tolerations");
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
