//! The `exemptions:` section of `data.mlguard.config`: reviews mlguard admits unchanged before
//! any policy runs. Read and checked when a policy set loads, so it reloads with the rest of the
//! configuration, and a malformed section refuses the whole set (the last good one keeps
//! serving). The decision itself is `admission::exemption::check`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value as Json;

use super::settings::LabelSelector;
use super::PolicyError;

/// Who and what mlguard never evaluates.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exemptions {
    /// Namespaces by name.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces whose labels match. Needs cluster state that knows the namespace (live, or
    /// a snapshot with its Namespace object): a namespace mlguard does not know is never
    /// exempted by label.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// An object carrying any of these labels, with this value, is exempt (on UPDATE the old
    /// object must carry it too, as the webhook's objectSelector sees both).
    #[serde(default)]
    pub object_labels: BTreeMap<String, String>,
    /// Requesting users, by exact username.
    #[serde(default)]
    pub users: Vec<String>,
    /// Requesting users in any of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// ServiceAccounts as `NAMESPACE/NAME` (the user `system:serviceaccount:NAMESPACE:NAME`).
    #[serde(default)]
    pub service_accounts: Vec<String>,
}

/// Why a review was exempted: the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Namespace,
    NamespaceLabel,
    ObjectLabel,
    User,
    Group,
    ServiceAccount,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Namespace => "namespace",
            Reason::NamespaceLabel => "namespace_label",
            Reason::ObjectLabel => "object_label",
            Reason::User => "user",
            Reason::Group => "group",
            Reason::ServiceAccount => "service_account",
        }
    }
}

/// An exemption that fired: why, and the configured entry that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exemption {
    pub reason: Reason,
    pub matched: String,
}

impl std::fmt::Display for Exemption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.reason.as_str(), self.matched)
    }
}

/// The username Kubernetes gives a ServiceAccount.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

impl Exemptions {
    /// `exemptions` of the configuration tree (none when the section is absent).
    pub fn from_config(config: &Json) -> Result<Exemptions, PolicyError> {
        let refuse = |message: String| PolicyError::Exemptions(message);
        let Some(section) = config.get("exemptions") else {
            return Ok(Exemptions::default());
        };
        if section.is_null() {
            return Ok(Exemptions::default());
        }
        let exemptions = Exemptions::deserialize(section).map_err(|e| refuse(e.to_string()))?;
        exemptions.check().map_err(refuse)?;
        Ok(exemptions)
    }

    fn check(&self) -> Result<(), String> {
        let lists = [
            ("namespaces", &self.namespaces),
            ("users", &self.users),
            ("groups", &self.groups),
            ("service_accounts", &self.service_accounts),
        ];
        for (what, list) in lists {
            if list.iter().any(|s| s.trim().is_empty()) {
                return Err(format!("{what} holds an empty entry"));
            }
        }
        for sa in &self.service_accounts {
            let ok = sa.split_once('/').is_some_and(|(ns, name)| {
                !ns.is_empty() && !name.is_empty() && !name.contains('/')
            });
            if !ok {
                return Err(format!(
                    "service_accounts entry {sa:?} is not NAMESPACE/NAME (for example kube-system/job-controller)"
                ));
            }
        }
        if self.object_labels.keys().any(|k| k.trim().is_empty()) {
            return Err("object_labels holds an empty label key".into());
        }
        if let Some(selector) = &self.namespace_selector {
            if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
                return Err(
                    "namespace_selector is empty, which would match every namespace mlguard knows; \
                     remove it, or give matchLabels or matchExpressions"
                        .into(),
                );
            }
            selector
                .check()
                .map_err(|e| format!("namespace_selector: {e}"))?;
        }
        Ok(())
    }

    /// The ServiceAccounts as the usernames the API server sends.
    pub fn service_account_users(&self) -> impl Iterator<Item = (String, &str)> {
        self.service_accounts.iter().filter_map(|sa| {
            let (ns, name) = sa.split_once('/')?;
            Some((service_account_user(ns, name), sa.as_str()))
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == Exemptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(section: Json) -> Result<Exemptions, String> {
        Exemptions::from_config(&json!({ "exemptions": section })).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_section_loads() {
        let e = load(json!({
            "namespaces": ["kube-system"],
            "namespace_selector": {"matchLabels": {"mlguard.io/exempt": "true"}},
            "object_labels": {"mlguard.io/exempt": "true"},
            "users": ["admin"], "groups": ["system:masters"],
            "service_accounts": ["kube-system/job-controller"],
        }))
        .unwrap();
        assert_eq!(e.namespaces, ["kube-system"]);
        assert_eq!(
            e.service_account_users().collect::<Vec<_>>(),
            [(
                "system:serviceaccount:kube-system:job-controller".to_string(),
                "kube-system/job-controller"
            )]
        );
        assert!(Exemptions::from_config(&json!({})).unwrap().is_empty());
        assert!(load(Json::Null).unwrap().is_empty());
    }

    #[test]
    fn malformed_sections_are_refused_with_what_to_fix() {
        for (section, says) in [
            (json!({"namespace": ["x"]}), "unknown field `namespace`"),
            (json!({"namespaces": "kube-system"}), "invalid type"),
            (json!({"users": [""]}), "users holds an empty entry"),
            (
                json!({"service_accounts": ["job-controller"]}),
                "NAMESPACE/NAME",
            ),
            (json!({"service_accounts": ["a/b/c"]}), "NAMESPACE/NAME"),
            (
                json!({"namespace_selector": {}}),
                "namespace_selector is empty",
            ),
            (
                json!({"namespace_selector": {"matchExpressions": [{"key": "k", "operator": "Is"}]}}),
                "namespace_selector: selector operator",
            ),
            (json!({"object_labels": {"a": 1}}), "invalid type"),
            (json!(["kube-system"]), "invalid type"),
        ] {
            let err = load(section.clone()).expect_err(&section.to_string());
            assert!(err.starts_with("data.mlguard.config.exemptions: "), "{err}");
            assert!(err.contains(says), "{section}: {err}");
        }
    }
}
