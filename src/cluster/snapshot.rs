//! Cluster state from files, as `kubectl get resourcequotas,nodes,namespaces -A -o yaml` prints
//! them: a `List`, multi-document YAML, or JSON.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, ResourceQuota};
use serde::Deserialize;
use serde_json::Value as Json;

use super::ClusterState;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cluster snapshot {path}: {source} (check the --cluster-snapshot path)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster snapshot {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cluster snapshot {path}: {message}")]
    Object { path: PathBuf, message: String },
}

/// Every Kubernetes object in a YAML or JSON text, with `List` kinds flattened. Shared with the
/// audit command, which reads manifests the same way. Errors carry line and column.
pub fn parse_objects(text: &str) -> Result<Vec<Json>, String> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Json::deserialize(document).map_err(|e| match e.location() {
            Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
            None => e.to_string(),
        })?;
        flatten(value, &mut out);
    }
    Ok(out)
}

fn flatten(value: Json, out: &mut Vec<Json>) {
    match value {
        Json::Null => {}
        Json::Object(ref map)
            if map
                .get("kind")
                .and_then(Json::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && map.get("items").is_some_and(Json::is_array) =>
        {
            if let Some(Json::Array(items)) = value.get("items").cloned() {
                for item in items {
                    flatten(item, out);
                }
            }
        }
        other => out.push(other),
    }
}

/// Adds every ResourceQuota, Node and Namespace in `text` to `state`; other kinds are skipped
/// (a full `kubectl get all -o yaml` is fine). Returns how many objects were used.
pub fn add_text(state: &mut ClusterState, path: &Path, text: &str) -> Result<usize, SnapshotError> {
    let objects = parse_objects(text).map_err(|message| SnapshotError::Parse {
        path: path.to_path_buf(),
        message,
    })?;
    let mut used = 0;
    for object in objects {
        let kind = object
            .get("kind")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        let bad = |e: serde_json::Error| SnapshotError::Object {
            path: path.to_path_buf(),
            message: format!("{kind}: {e}"),
        };
        match kind.as_str() {
            "ResourceQuota" => {
                state.add_quota(&serde_json::from_value::<ResourceQuota>(object).map_err(bad)?)
            }
            "Node" => state.add_node(&serde_json::from_value::<Node>(object).map_err(bad)?),
            "Namespace" => {
                state.add_namespace(&serde_json::from_value::<Namespace>(object).map_err(bad)?)
            }
            _ => continue,
        }
        used += 1;
    }
    Ok(used)
}

/// Loads and merges several snapshot files.
pub fn load(paths: &[PathBuf]) -> Result<ClusterState, SnapshotError> {
    let mut state = ClusterState::default();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Read {
            path: path.clone(),
            source,
        })?;
        add_text(&mut state, path, &text)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ResourceQuota
  metadata: {name: gpu, namespace: ml}
  spec: {hard: {requests.nvidia.com/gpu: "8"}}
  status: {hard: {requests.nvidia.com/gpu: "8"}, used: {requests.nvidia.com/gpu: "2"}}
- apiVersion: v1
  kind: Namespace
  metadata: {name: ml, labels: {team: vision}}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored}
---
apiVersion: v1
kind: Node
metadata: {name: gpu-1}
status: {allocatable: {nvidia.com/gpu: "8", cpu: 96}}
"#;

    #[test]
    fn reads_lists_and_documents() {
        let mut s = ClusterState::default();
        let n = add_text(&mut s, Path::new("snap.yaml"), LIST).unwrap();
        assert_eq!(n, 3);
        assert_eq!(s.quotas["ml"][0].used["requests.nvidia.com/gpu"], 2.0);
        assert_eq!(s.namespaces["ml"].labels["team"], "vision");
        assert_eq!(s.nodes["gpu-1"].allocatable["cpu"], 96.0);
    }

    #[test]
    fn yaml_errors_name_file_and_line() {
        let mut s = ClusterState::default();
        let err = add_text(&mut s, Path::new("snap.yaml"), "kind: Node\n  bad: [").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("snap.yaml") && msg.contains("line"), "{msg}");
    }

    #[test]
    fn missing_file_says_which() {
        let err = load(&[PathBuf::from("/nope/snap.yaml")]).unwrap_err();
        assert!(err.to_string().contains("/nope/snap.yaml"));
    }
}
