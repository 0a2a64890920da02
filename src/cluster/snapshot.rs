//! Cluster state from files, as `kubectl get resourcequotas,nodes,namespaces -A -o yaml` prints
//! them, and the Dynamic Resource Allocation objects (resource.k8s.io/v1) as
//! `kubectl get deviceclasses,resourceclaims,resourceclaimtemplates,resourceslices -A -o yaml`
//! prints them: a `List`, multi-document YAML, or JSON.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, ResourceQuota};
use k8s_openapi::api::resource::v1::{
    DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice,
};
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

/// Adds every ResourceQuota, Node, Namespace, DeviceClass, ResourceClaim,
/// ResourceClaimTemplate and ResourceSlice in `text` to `state`; other kinds are skipped (a
/// full `kubectl get all -o yaml` is fine). Returns how many objects were used. Call
/// [`ClusterState::finish_dra`] after the last text, as [`load`] does.
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
        let name = object
            .pointer("/metadata/name")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        let bad = |e: serde_json::Error| SnapshotError::Object {
            path: path.to_path_buf(),
            message: format!("{kind} {name}: {e}"),
        };
        // The DRA kinds are read only in the version mlguard knows; an older one (v1beta1)
        // has other fields, and is named rather than misread.
        let dra = matches!(
            kind.as_str(),
            "DeviceClass" | "ResourceClaim" | "ResourceClaimTemplate" | "ResourceSlice"
        );
        let api_version = object.get("apiVersion").and_then(Json::as_str);
        if dra && api_version.is_some_and(|v| v != "resource.k8s.io/v1") {
            return Err(SnapshotError::Object {
                path: path.to_path_buf(),
                message: format!(
                    "{kind} {name}: apiVersion {} is not read; mlguard reads resource.k8s.io/v1 (kubectl get {}.v1.resource.k8s.io -o yaml)",
                    api_version.unwrap_or(""),
                    kind.to_lowercase() + if kind.ends_with('s') { "es" } else { "s" }
                ),
            });
        }
        match kind.as_str() {
            "ResourceQuota" => {
                state.add_quota(&serde_json::from_value::<ResourceQuota>(object).map_err(bad)?)
            }
            "Node" => state.add_node(&serde_json::from_value::<Node>(object).map_err(bad)?),
            "Namespace" => {
                state.add_namespace(&serde_json::from_value::<Namespace>(object).map_err(bad)?)
            }
            "DeviceClass" => {
                state.add_device_class(&serde_json::from_value::<DeviceClass>(object).map_err(bad)?)
            }
            "ResourceClaim" => state
                .add_resource_claim(&serde_json::from_value::<ResourceClaim>(object).map_err(bad)?),
            "ResourceClaimTemplate" => state.add_resource_claim_template(
                &serde_json::from_value::<ResourceClaimTemplate>(object).map_err(bad)?,
            ),
            "ResourceSlice" => state
                .add_resource_slice(&serde_json::from_value::<ResourceSlice>(object).map_err(bad)?),
            _ => continue,
        }
        used += 1;
    }
    Ok(used)
}

/// Adds the ResourceClaims and ResourceClaimTemplates (resource.k8s.io/v1) among `objects`,
/// as `mlguard audit` does with the manifests it audits: a claim template shipped in the same
/// files as the pods that name it is created with them, so the pods are judged with it. One
/// without a namespace goes to `namespace`, as `kubectl apply -n` would put it. Objects that
/// do not read as their kind are left to the audit, which reports them. Returns how many were
/// added. DeviceClasses and ResourceSlices are the cluster's, not a manifest's: they come
/// from the snapshot or the live cluster only.
pub fn add_manifest_claims<'a>(
    state: &mut ClusterState,
    objects: impl IntoIterator<Item = &'a Json>,
    namespace: &str,
) -> usize {
    let mut added = 0;
    for object in objects {
        if object.get("apiVersion").and_then(Json::as_str) != Some("resource.k8s.io/v1") {
            continue;
        }
        let mut object = object.clone();
        if object.pointer("/metadata/namespace").is_none() {
            if let Some(meta) = object.get_mut("metadata").and_then(Json::as_object_mut) {
                meta.insert("namespace".into(), Json::from(namespace));
            }
        }
        match object.get("kind").and_then(Json::as_str) {
            Some("ResourceClaim") => {
                if let Ok(claim) = serde_json::from_value::<ResourceClaim>(object) {
                    state.add_resource_claim(&claim);
                    added += 1;
                }
            }
            Some("ResourceClaimTemplate") => {
                if let Ok(template) = serde_json::from_value::<ResourceClaimTemplate>(object) {
                    state.add_resource_claim_template(&template);
                    added += 1;
                }
            }
            _ => {}
        }
    }
    added
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
    state.finish_dra();
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

    /// As `kubectl get nodes,deviceclasses,resourceclaims,resourceclaimtemplates,resourceslices
    /// -A -o yaml` prints them.
    const DRA: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: gpu-1}
  status: {allocatable: {cpu: "96"}}
- apiVersion: resource.k8s.io/v1
  kind: DeviceClass
  metadata:
    name: gpu.nvidia.com
    managedFields: [{manager: helm}]
  spec:
    extendedResourceName: nvidia.com/gpu
    selectors:
    - cel:
        expression: device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'
- apiVersion: resource.k8s.io/v1
  kind: ResourceClaimTemplate
  metadata: {name: one-gpu, namespace: ml}
  spec:
    spec:
      devices:
        requests:
        - name: gpu
          exactly: {deviceClassName: gpu.nvidia.com, allocationMode: ExactCount, count: 1}
- apiVersion: resource.k8s.io/v1
  kind: ResourceClaim
  metadata: {name: shared, namespace: ml}
  spec:
    devices:
      requests:
      - name: gpu
        exactly: {deviceClassName: gpu.nvidia.com, adminAccess: false}
  status:
    allocation:
      devices:
        results: [{request: gpu, driver: gpu.nvidia.com, pool: gpu-1, device: gpu-0}]
    reservedFor: [{resource: pods, name: p, uid: u}]
- apiVersion: resource.k8s.io/v1
  kind: ResourceSlice
  metadata: {name: gpu-1-gpu.nvidia.com-x7k2p}
  spec:
    driver: gpu.nvidia.com
    nodeName: gpu-1
    pool: {name: gpu-1, generation: 1, resourceSliceCount: 1}
    devices:
    - name: gpu-0
      attributes:
        type: {string: gpu}
        productName: {string: NVIDIA H100 80GB HBM3}
        cudaComputeCapability: {version: 9.0.0}
      capacity:
        memory: {value: 80Gi}
    - name: gpu-1
      attributes:
        type: {string: gpu}
"#;

    #[test]
    fn reads_the_dra_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dra.yaml");
        std::fs::write(&path, DRA).unwrap();
        let s = load(&[path]).unwrap();
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let j = s.to_json();
        let dra = &j["dra"];
        assert_eq!(
            dra["device_classes"]["gpu.nvidia.com"],
            serde_json::json!({"extended_resource_name": "nvidia.com/gpu"})
        );
        assert_eq!(
            dra["claim_templates"]["ml"]["one-gpu"]["spec"]["devices"]["requests"][0]["exactly"],
            serde_json::json!({"deviceClassName": "gpu.nvidia.com",
                               "allocationMode": "ExactCount", "count": 1})
        );
        assert_eq!(
            dra["claims"]["ml"]["shared"],
            serde_json::json!({"spec": {"devices": {"requests": [{"name": "gpu",
                "exactly": {"deviceClassName": "gpu.nvidia.com", "adminAccess": false}}]}},
                "reserved_for": 1, "allocated": true})
        );
        assert_eq!(
            dra["capacity"]["gpu.nvidia.com"],
            serde_json::json!({"largest": 2, "total": 2, "nodes": 1})
        );
        // Merged into the node: the class's resource, and nvidia.com/gpu, which no device
        // plugin offers on it.
        let node = &j["nodes"]["gpu-1"]["allocatable"];
        assert_eq!(
            node["gpu.nvidia.com.deviceclass.resource.k8s.io/devices"],
            2
        );
        assert_eq!(node["nvidia.com/gpu"], 2);
        assert_eq!(j["largest_allocatable"]["nvidia.com/gpu"], 2);
    }

    #[test]
    fn an_older_dra_version_is_named_not_misread() {
        let mut s = ClusterState::default();
        let text = "apiVersion: resource.k8s.io/v1beta1\nkind: DeviceClass\nmetadata: {name: gpu.nvidia.com}\n";
        let msg = add_text(&mut s, Path::new("snap.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("resource.k8s.io/v1beta1")
                && msg.contains("deviceclasses.v1.resource.k8s.io"),
            "{msg}"
        );
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
