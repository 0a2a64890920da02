//! The configuration tree (`data.mlguard.config`) built from the data files, and the per-policy
//! settings read out of it: enforcement action, operations, namespace overrides, parameters.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::source::{FileKind, SourceFile};
use super::PolicyError;

/// What happens when a policy's `deny` fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Ordered from most to least strict, so a cap is a `max`.
    #[default]
    Deny,
    Warn,
    Dryrun,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Warn => "warn",
            Action::Dryrun => "dryrun",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(Action::Deny),
            "warn" => Ok(Action::Warn),
            "dryrun" => Ok(Action::Dryrun),
            other => Err(format!(
                "unknown action {other:?}: use deny, warn or dryrun"
            )),
        }
    }
}

/// A `matchLabels` / `matchExpressions` selector over namespace labels, as in Kubernetes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        for r in &self.match_expressions {
            if !matches!(
                r.operator.as_str(),
                "In" | "NotIn" | "Exists" | "DoesNotExist"
            ) {
                return Err(format!(
                    "selector operator {:?} is not one of In, NotIn, Exists, DoesNotExist",
                    r.operator
                ));
            }
        }
        Ok(())
    }
}

/// A per-namespace enforcement override; the first one that matches wins.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceOverride {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    pub action: Action,
}

impl NamespaceOverride {
    fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.names.iter().any(|n| n == namespace)
            || self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// The settings of one policy under `data.mlguard.config.policies.<name>`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    #[serde(default)]
    pub action: Action,
    #[serde(default = "default_operations")]
    pub operations: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceOverride>,
    #[serde(default = "empty_object")]
    pub parameters: Json,
    /// A policy can be switched off without deleting its file.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_operations() -> Vec<String> {
    vec!["CREATE".into()]
}
fn empty_object() -> Json {
    Json::Object(Map::new())
}
fn yes() -> bool {
    true
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            action: Action::Deny,
            operations: default_operations(),
            namespaces: Vec::new(),
            parameters: empty_object(),
            enabled: true,
        }
    }
}

impl PolicySettings {
    /// The action for a request in `namespace`, before the global `--mode` cap.
    pub fn action_for(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Action {
        self.namespaces
            .iter()
            .find(|o| o.matches(namespace, labels))
            .map_or(self.action, |o| o.action)
    }

    pub fn applies_to(&self, operation: &str) -> bool {
        self.enabled && self.operations.iter().any(|o| o == operation)
    }

    fn check(&self) -> Result<(), String> {
        for op in &self.operations {
            if !matches!(op.as_str(), "CREATE" | "UPDATE") {
                return Err(format!(
                    "operation {op:?} is not supported: policies run on CREATE and UPDATE"
                ));
            }
        }
        if !self.parameters.is_object() {
            return Err("parameters must be a mapping".into());
        }
        for o in &self.namespaces {
            if o.names.is_empty() && o.selector.is_none() {
                return Err("a namespace override needs `names` or `selector`".into());
            }
            if let Some(s) = &o.selector {
                s.check()?;
            }
        }
        Ok(())
    }
}

/// How two values for the same key combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Two data files setting the same leaf is a mistake worth stopping for.
    Strict,
    /// The right-hand side wins (test-case and command-line overrides).
    Override,
}

/// Deep-merges `overlay` into `base`. `path` names the key for error messages.
pub fn merge(base: &mut Json, overlay: Json, mode: Merge, path: &str) -> Result<(), String> {
    match (base, overlay) {
        (Json::Object(b), Json::Object(o)) => {
            for (k, v) in o {
                let child = format!("{path}.{k}");
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v, mode, &child)?,
                    None => {
                        b.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        (b, o) => {
            if mode == Merge::Strict && *b != o {
                return Err(format!("{path} is set twice with different values"));
            }
            *b = o;
            Ok(())
        }
    }
}

/// Parses the data files and merges them into one configuration tree. Within a layer, two
/// files setting the same leaf differently is an error; each layer's tree is then merged over
/// the layers below it, its values replacing theirs (maps merge key by key; lists and scalars
/// replace).
pub fn build_config(files: &[SourceFile]) -> Result<Json, PolicyError> {
    let mut config = empty_object();
    let mut layers: Vec<usize> = files.iter().map(|f| f.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    for layer in layers {
        let of_layer: Vec<&SourceFile> = files.iter().filter(|f| f.layer == layer).collect();
        let tree = layer_config(&of_layer)?;
        merge(&mut config, tree, Merge::Override, "data.mlguard.config").map_err(|message| {
            PolicyError::Data {
                file: format!("layer {layer}"),
                message,
            }
        })?;
    }
    Ok(config)
}

/// The configuration tree of one layer's data files.
fn layer_config(files: &[&SourceFile]) -> Result<Json, PolicyError> {
    let mut config = empty_object();
    for file in files.iter().filter(|f| f.kind == FileKind::Data) {
        let value = parse_data_file(file)?;
        if value.is_null() {
            continue; // an empty file
        }
        if !value.is_object() {
            return Err(PolicyError::Data {
                file: file.name.clone(),
                message: "a data file must hold a mapping; it is merged into data.mlguard.config"
                    .into(),
            });
        }
        merge(&mut config, value, Merge::Strict, "data.mlguard.config").map_err(|message| {
            PolicyError::Data {
                file: file.name.clone(),
                message,
            }
        })?;
    }
    Ok(config)
}

fn parse_data_file(file: &SourceFile) -> Result<Json, PolicyError> {
    if file.name.ends_with(".json") {
        serde_json::from_str(&file.text).map_err(|e| PolicyError::Data {
            file: file.name.clone(),
            message: format!("line {}, column {}: {e}", e.line(), e.column()),
        })
    } else {
        serde_yaml::from_str(&file.text).map_err(|e| PolicyError::Data {
            file: file.name.clone(),
            message: match e.location() {
                Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
                None => e.to_string(),
            },
        })
    }
}

/// Reads `policies.<name>` for every policy; a settings block naming no policy is an error
/// because it is almost always a typo that would silently leave a policy unconfigured.
pub fn policy_settings(
    config: &Json,
    policy_names: &[String],
) -> Result<BTreeMap<String, PolicySettings>, PolicyError> {
    let mut out = BTreeMap::new();
    let configured = config.get("policies").and_then(Json::as_object);
    if let Some(map) = configured {
        for name in map.keys() {
            if !policy_names.contains(name) {
                return Err(PolicyError::Settings {
                    policy: name.clone(),
                    message: format!(
                        "data.mlguard.config.policies.{name} configures a policy that does not exist \
                         (no package mlguard.policies.{name}); known policies: {}",
                        policy_names.join(", ")
                    ),
                });
            }
        }
    }
    for name in policy_names {
        let settings = match configured.and_then(|m| m.get(name)) {
            Some(v) => PolicySettings::deserialize(v).map_err(|e| PolicyError::Settings {
                policy: name.clone(),
                message: e.to_string(),
            })?,
            None => PolicySettings::default(),
        };
        settings.check().map_err(|message| PolicyError::Settings {
            policy: name.clone(),
            message,
        })?;
        out.insert(name.clone(), settings);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(name: &str, text: &str) -> SourceFile {
        SourceFile {
            name: name.into(),
            kind: FileKind::Data,
            text: text.into(),
            layer: 0,
        }
    }

    #[test]
    fn files_merge_deeply_and_conflicts_name_the_file() {
        let a = data(
            "a.yaml",
            "gpu:\n  resources: [x]\npolicies:\n  p: {action: warn}\n",
        );
        let b = data("b.json", r#"{"policies": {"q": {"action": "dryrun"}}}"#);
        let cfg = build_config(&[a.clone(), b]).unwrap();
        assert_eq!(cfg["policies"]["p"]["action"], "warn");
        assert_eq!(cfg["policies"]["q"]["action"], "dryrun");

        let c = data("c.yaml", "policies:\n  p: {action: deny}\n");
        let err = build_config(&[a, c]).unwrap_err().to_string();
        assert!(
            err.contains("c.yaml") && err.contains("policies.p.action"),
            "{err}"
        );
    }

    /// A layer's data is merged over the layers below: maps key by key, lists and scalars
    /// replaced; within a layer a conflict is still an error.
    #[test]
    fn an_upper_layer_overrides_maps_by_key_and_replaces_lists() {
        let base = data(
            "config.yaml",
            "gpu:\n  resources: [a, b]\n  shm: {volume_name: v, size_limit: \"\"}\n",
        );
        let mut admin = data(
            "/etc/p/config.yaml",
            "gpu:\n  resources: [c]\n  shm: {size_limit: 1Gi}\n",
        );
        admin.layer = 1;
        let cfg = build_config(&[base.clone(), admin.clone()]).unwrap();
        assert_eq!(cfg["gpu"]["resources"], json!(["c"]));
        assert_eq!(
            cfg["gpu"]["shm"],
            json!({"volume_name": "v", "size_limit": "1Gi"})
        );
        let mut clash = data("/etc/p/more.yaml", "gpu:\n  resources: [d]\n");
        clash.layer = 1;
        let err = build_config(&[base, admin, clash]).unwrap_err().to_string();
        assert!(
            err.contains("/etc/p/more.yaml") && err.contains("set twice"),
            "{err}"
        );
    }

    #[test]
    fn yaml_errors_carry_a_position() {
        let err = build_config(&[data("bad.yaml", "a: [1,\n")]).unwrap_err();
        assert!(err.to_string().contains("bad.yaml") && err.to_string().contains("line"));
    }

    #[test]
    fn overrides_pick_first_match_then_default() {
        let s: PolicySettings = serde_json::from_value(json!({
            "action": "deny",
            "namespaces": [
                {"names": ["research"], "action": "warn"},
                {"selector": {"matchLabels": {"stage": "trial"}}, "action": "dryrun"}
            ]
        }))
        .unwrap();
        let trial = BTreeMap::from([("stage".to_string(), "trial".to_string())]);
        assert_eq!(s.action_for("research", &trial), Action::Warn);
        assert_eq!(s.action_for("x", &trial), Action::Dryrun);
        assert_eq!(s.action_for("x", &BTreeMap::new()), Action::Deny);
    }

    #[test]
    fn settings_for_unknown_policy_are_refused() {
        let cfg = json!({"policies": {"gpu_limit": {"action": "warn"}}});
        let err = policy_settings(&cfg, &["gpu_limits".into()]).unwrap_err();
        assert!(err.to_string().contains("gpu_limit"), "{err}");
    }

    #[test]
    fn bad_action_is_refused() {
        let cfg = json!({"policies": {"p": {"action": "block"}}});
        assert!(policy_settings(&cfg, &["p".into()]).is_err());
    }

    #[test]
    fn selector_expressions() {
        let sel: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["prod"]}]
        }))
        .unwrap();
        assert!(sel.matches(&BTreeMap::new()));
        let prod = BTreeMap::from([("tier".to_string(), "prod".to_string())]);
        assert!(!sel.matches(&prod));
    }
}
