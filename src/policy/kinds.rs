//! The workload kinds table, `data.mlguard.config.workloads.kinds`: checked when a policy set
//! loads, so that a typo in an admin's entry is refused with the entry and the field named
//! (and the last good set keeps serving) instead of making the kind silently unchecked.
//!
//! The policies read the table themselves (`policies/lib_kinds.rego`); mlguard only checks its
//! shape and keeps the list of kinds, which decides what reaches the policies at all.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value as Json;

use super::PolicyError;

/// The deepest a count expression may nest: `lib_kinds.rego` evaluates one level per function,
/// since Rego has no recursion, and has six.
pub const MAX_COUNT_DEPTH: usize = 6;

/// One kind the table names, with what the webhook configurations need of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadKind {
    pub group: String,
    pub kind: String,
    /// The plural resource name.
    pub resource: String,
    /// Whether an UPDATE can raise the kind's demand, so the webhooks register UPDATE too.
    pub update: bool,
}

/// The kinds the table names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadKinds {
    kinds: Vec<WorkloadKind>,
}

/// The claim kinds of Dynamic Resource Allocation: they decide which devices the pods that use
/// them get, so the policies judge them (`gpu_claims.rego`) as they judge Pods.
pub const CLAIM_KINDS: [(&str, &str, &str); 2] = [
    ("resource.k8s.io", "ResourceClaim", "resourceclaims"),
    (
        "resource.k8s.io",
        "ResourceClaimTemplate",
        "resourceclaimtemplates",
    ),
];

impl WorkloadKinds {
    /// Whether objects of this group and kind reach the policies. Pods and DRA claims always
    /// do; workload kinds when the table names them.
    pub fn covers(&self, group: &str, kind: &str) -> bool {
        (group.is_empty() && kind == "Pod")
            || CLAIM_KINDS
                .iter()
                .any(|(g, k, _)| *g == group && *k == kind)
            || self
                .kinds
                .iter()
                .any(|k| k.group == group && k.kind == kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = &WorkloadKind> {
        self.kinds.iter()
    }
}

// The fields the policies read and mlguard only checks the shape of are never read here.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Workloads {
    #[serde(default)]
    kueue_queue_label: Option<String>,
    #[serde(default)]
    gang_annotation: Option<String>,
    #[serde(default)]
    kinds: Vec<Json>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    group: String,
    kind: String,
    /// The plural resource name, for the webhook configurations' rules.
    resource: String,
    /// Whether the webhooks register UPDATE for the kind.
    #[serde(default)]
    update: bool,
    templates: Vec<Template>,
    #[serde(default)]
    gang: Option<Gang>,
    #[serde(default)]
    gang_size: Option<Json>,
    #[serde(default)]
    per_node: bool,
    #[serde(default)]
    lifecycle: std::collections::BTreeMap<LifecycleName, Lifecycle>,
    #[serde(default)]
    notes: Vec<Note>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Template {
    #[serde(default)]
    each: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_field: Option<String>,
    template: OneOrMany,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    pods: Option<Json>,
    #[serde(default)]
    gang_pods: Option<Json>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Gang {
    Always(bool),
    AllAtOnce(AllAtOnce),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllAtOnce {
    all_at_once: Json,
}

#[derive(Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
enum LifecycleName {
    TtlSecondsAfterFinished,
    ActiveDeadlineSeconds,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lifecycle {
    path: String,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    set_default: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Note {
    when: NoteWhen,
    text: String,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteWhen {
    field: String,
    #[serde(default)]
    default: Option<Json>,
    equals: Json,
}

fn table_error(message: String) -> PolicyError {
    PolicyError::Data {
        file: "workloads.kinds".into(),
        message,
    }
}

/// Checks the `workloads` section of the configuration and returns the kinds it names. A
/// policy set without a kinds table (one written before there was one) judges Pods and Jobs,
/// as mlguard always has: losing the Jobs would silently admit what such a set refuses.
pub fn parse(config: &Json) -> Result<WorkloadKinds, PolicyError> {
    let Some(section) = config.get("workloads").filter(|w| w.get("kinds").is_some()) else {
        return Ok(WorkloadKinds {
            kinds: vec![WorkloadKind {
                group: "batch".into(),
                kind: "Job".into(),
                resource: "jobs".into(),
                update: true,
            }],
        });
    };
    let workloads: Workloads = serde_json::from_value(section.clone())
        .map_err(|e| table_error(format!("workloads: {e}")))?;
    let mut kinds: Vec<WorkloadKind> = Vec::new();
    for (index, raw) in workloads.kinds.iter().enumerate() {
        let label = match (raw.get("group"), raw.get("kind")) {
            (Some(Json::String(g)), Some(Json::String(k))) if !g.is_empty() => {
                format!("entry {index} ({g}/{k})")
            }
            (_, Some(Json::String(k))) => format!("entry {index} ({k})"),
            _ => format!("entry {index}"),
        };
        let entry: Entry = serde_json::from_value(raw.clone())
            .map_err(|e| table_error(format!("{label}: {e}")))?;
        check_entry(&entry).map_err(|e| table_error(format!("{label}: {e}")))?;
        if kinds
            .iter()
            .any(|k| k.group == entry.group && k.kind == entry.kind)
        {
            return Err(table_error(format!(
                "{label}: the kind is listed twice; one entry per API group and kind"
            )));
        }
        kinds.push(WorkloadKind {
            group: entry.group,
            kind: entry.kind,
            resource: entry.resource,
            update: entry.update,
        });
    }
    Ok(WorkloadKinds { kinds })
}

fn check_entry(entry: &Entry) -> Result<(), String> {
    if entry.kind.is_empty() {
        return Err("`kind` is empty".into());
    }
    if entry.resource.is_empty() || entry.resource.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "`resource` must be the kind's plural resource name in lower case (e.g. {}s)",
            entry.kind.to_lowercase()
        ));
    }
    if entry.group.is_empty() && entry.kind == "Pod" {
        return Err(
            "Pods are judged as themselves; the table is for the kinds that make them".into(),
        );
    }
    if entry.templates.is_empty() {
        return Err("`templates` is empty: a workload kind needs at least one pod template".into());
    }
    for (i, t) in entry.templates.iter().enumerate() {
        let at = |field: &str| format!("templates[{i}].{field}");
        if let Some(each) = &t.each {
            check_path(each).map_err(|e| format!("{}: {e}", at("each")))?;
        }
        if t.each.is_none() && t.name_field.is_some() {
            return Err(format!(
                "{}: only a template with `each` has a name_field",
                at("name_field")
            ));
        }
        if t.each.is_some() && t.name.is_some() {
            return Err(format!(
                "{}: a template with `each` is named by the map keys or name_field",
                at("name")
            ));
        }
        let paths = match &t.template {
            OneOrMany::One(p) => std::slice::from_ref(p),
            OneOrMany::Many(ps) if ps.is_empty() => {
                return Err(format!("{}: an empty list of paths", at("template")))
            }
            OneOrMany::Many(ps) => ps.as_slice(),
        };
        for p in paths {
            check_path(p).map_err(|e| format!("{}: {e}", at("template")))?;
        }
        if let Some(pods) = &t.pods {
            check_count(pods, 1).map_err(|e| format!("{}: {e}", at("pods")))?;
        }
        if let Some(gang_pods) = &t.gang_pods {
            check_count(gang_pods, 1).map_err(|e| format!("{}: {e}", at("gang_pods")))?;
        }
    }
    if let Some(Gang::AllAtOnce(g)) = &entry.gang {
        check_count(&g.all_at_once, 1).map_err(|e| format!("gang.all_at_once: {e}"))?;
    }
    if let Some(size) = &entry.gang_size {
        check_count(size, 1).map_err(|e| format!("gang_size: {e}"))?;
    }
    if entry.per_node && matches!(entry.gang, Some(Gang::Always(true))) {
        return Err("a per_node kind (one pod per node) is not a gang".into());
    }
    for (name, field) in &entry.lifecycle {
        check_path(&field.path).map_err(|e| format!("lifecycle.{name:?}.path: {e}"))?;
        if let Some(when) = &field.when {
            check_path(when).map_err(|e| format!("lifecycle.{name:?}.when: {e}"))?;
        }
    }
    for (i, note) in entry.notes.iter().enumerate() {
        check_path(&note.when.field).map_err(|e| format!("notes[{i}].when.field: {e}"))?;
        if note.text.is_empty() {
            return Err(format!("notes[{i}].text is empty"));
        }
    }
    Ok(())
}

/// A path is dot-separated keys, optionally from the object's root (`$.`).
fn check_path(path: &str) -> Result<(), String> {
    let keys = path.strip_prefix("$.").unwrap_or(path);
    if keys.is_empty() || keys.split('.').any(str::is_empty) {
        return Err(format!(
            "{path:?} is not a path: write dot-separated keys such as spec.replicas (or \
             $.spec.replicas from the object)"
        ));
    }
    Ok(())
}

/// A count expression: a number, {field, default}, {min|max|sum|product: [...]} or
/// {if, then, else} (else optional), exactly one of them, at most `MAX_COUNT_DEPTH` deep.
fn check_count(e: &Json, depth: usize) -> Result<(), String> {
    // The same levels as lib_kinds.rego: a number is a count at any depth, a field up to the
    // last level, and min, max, sum, product and if only above it.
    let too_deep = || {
        format!(
            "nested more than {MAX_COUNT_DEPTH} deep; mlguard evaluates count expressions to \
             that depth"
        )
    };
    if depth > MAX_COUNT_DEPTH && !e.is_number() {
        return Err(too_deep());
    }
    let object = match e {
        Json::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => return Ok(()),
        Json::Number(n) => return Err(format!("{n} is not a whole number")),
        Json::Object(o) => o,
        other => {
            return Err(format!(
                "{other} is not a count: write a number, {{field: PATH, default: COUNT}}, \
                 {{min|max|sum|product: [COUNT, ...]}} or {{if: PATH, then: COUNT, else: COUNT}}"
            ))
        }
    };
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    let form = |allowed: &[&str]| keys.iter().all(|k| allowed.contains(k));
    if keys.contains("field") && form(&["field", "default"]) {
        let field = object["field"].as_str().ok_or("`field` must be a path")?;
        check_path(field)?;
        if let Some(default) = object.get("default") {
            check_count(default, depth + 1)?;
        }
        return Ok(());
    }
    if depth == MAX_COUNT_DEPTH {
        return Err(too_deep());
    }
    for op in ["min", "max", "sum", "product"] {
        if keys.len() == 1 && keys.contains(op) {
            let items = object[op]
                .as_array()
                .filter(|items| !items.is_empty())
                .ok_or_else(|| format!("`{op}` takes a non-empty list of counts"))?;
            for item in items {
                check_count(item, depth + 1)?;
            }
            return Ok(());
        }
    }
    // Without `else`, the count is unset when the condition does not hold, as a field
    // without a default is.
    if keys.contains("if") && keys.contains("then") && form(&["if", "then", "else"]) {
        let condition = object["if"].as_str().ok_or("`if` must be a path")?;
        check_path(condition)?;
        check_count(&object["then"], depth + 1)?;
        return match object.get("else") {
            Some(otherwise) => check_count(otherwise, depth + 1),
            None => Ok(()),
        };
    }
    Err(format!(
        "{e} is not a count: use exactly one of {{field, default}}, min, max, sum, product, or \
         {{if, then, else}}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(entry: Json) -> Result<WorkloadKinds, String> {
        parse(&json!({"workloads": {"kinds": [entry]}})).map_err(|e| e.to_string())
    }

    #[test]
    fn the_default_table_is_valid() {
        let config = crate::policy::settings::build_config(&crate::policy::source::embedded())
            .expect("the default configuration loads");
        let table = parse(&config).expect("the default kinds table is valid");
        for (group, kind) in [
            ("apps", "Deployment"),
            ("batch", "CronJob"),
            ("kubeflow.org", "PyTorchJob"),
            ("jobset.x-k8s.io", "JobSet"),
            ("ray.io", "RayJob"),
            ("leaderworkerset.x-k8s.io", "LeaderWorkerSet"),
        ] {
            assert!(table.covers(group, kind), "{group}/{kind}");
        }
        assert!(table.covers("", "Pod"));
        assert!(!table.covers("", "Service"));
    }

    #[test]
    fn a_set_without_a_kinds_table_judges_pods_and_jobs() {
        let kinds = parse(&json!({"gpu": {}})).unwrap();
        assert!(kinds.covers("", "Pod") && kinds.covers("batch", "Job"));
        assert!(!kinds.covers("apps", "Deployment"));
    }

    #[test]
    fn typos_and_bad_counts_are_refused_naming_the_entry() {
        let base = json!({"group": "acme.io", "kind": "Trainer", "resource": "trainers",
                          "templates": [{"template": "spec.template", "pods": {"field": "spec.replicas", "default": 1}}]});
        assert!(kinds(base.clone()).is_ok());

        let mut typo = base.clone();
        typo["templates"][0]["pod"] = json!(1);
        let err = kinds(typo).unwrap_err();
        assert!(
            err.contains("entry 0 (acme.io/Trainer)") && err.contains("pod"),
            "{err}"
        );

        let mut two_forms = base.clone();
        two_forms["templates"][0]["pods"] = json!({"field": "spec.replicas", "min": [1]});
        assert!(kinds(two_forms).unwrap_err().contains("exactly one of"));

        let mut string_count = base.clone();
        string_count["templates"][0]["pods"] = json!("spec.replicas");
        assert!(kinds(string_count).unwrap_err().contains("is not a count"));

        let mut bad_path = base.clone();
        bad_path["templates"][0]["template"] = json!("spec..template");
        assert!(kinds(bad_path).unwrap_err().contains("is not a path"));

        let mut deep = json!(1);
        for _ in 0..MAX_COUNT_DEPTH {
            deep = json!({"min": [deep]});
        }
        let mut too_deep = base.clone();
        too_deep["templates"][0]["pods"] = deep;
        assert!(kinds(too_deep).unwrap_err().contains("deep"));

        let mut no_templates = base.clone();
        no_templates["templates"] = json!([]);
        assert!(kinds(no_templates).unwrap_err().contains("templates"));

        let mut bad_lifecycle = base;
        bad_lifecycle["lifecycle"] = json!({"ttl": {"path": "spec.ttl"}});
        assert!(kinds(bad_lifecycle).is_err());
    }

    #[test]
    fn a_kind_listed_twice_is_refused() {
        let entry = json!({"group": "apps", "kind": "Deployment", "resource": "deployments",
                           "templates": [{"template": "spec.template"}]});
        let err = parse(&json!({"workloads": {"kinds": [entry.clone(), entry]}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }
}
