//! The webhook configurations' rules and matchConditions, derived from the policy
//! configuration: the GPU resource names (`gpu.resources`, `gpu.vendors[].resources`) and the
//! workload kinds table (`workloads.kinds`). The manifests and the Helm chart hold what
//! [`render_kustomize`] and [`render_helm`] produce (`mlguard manifests --write`), and a test
//! fails when they differ, so the policies and what the API server sends mlguard cannot drift
//! apart.
//!
//! The GPU condition is a CEL expression the API server evaluates before calling mlguard. It
//! keeps to the common subset of CEL (`has()`, `exists()`, `startsWith()`, `==`, `!`, `&&`,
//! `||`, field selection and map indexing), so that the `cel` crate evaluates it exactly as
//! the API server does (tests/match_conditions.rs). It is true when the Pod, or any pod
//! template of a workload kind, has a container or init container with a GPU resource in its
//! requests or limits: a superset of what the policies call a GPU workload, since it looks at
//! every path a template may be at (`template: [a, b]` looks at both, not only the first set).
//! It is also true when a template the table does not call optional is missing: mlguard cannot
//! tell what such a workload runs, and its policies refuse it whatever it runs.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::kinds::CLAIM_KINDS;

/// One pod template location of a kind, as the table gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TemplateAt {
    /// The map (no `name_field`) or list (`name_field`) holding one template per item.
    each: Option<(String, bool)>,
    /// The PodTemplateSpec's path(s), relative to the item of `each` or to the object.
    paths: Vec<String>,
    /// The template may be absent; otherwise the policies refuse a workload without it.
    optional: bool,
}

/// What the webhooks need of one kind of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindMatch {
    pub group: String,
    pub kind: String,
    pub resource: String,
    /// An UPDATE can raise its demand: the webhooks register UPDATE too.
    pub update: bool,
    /// mlguard sets `ttlSecondsAfterFinished` on it whether it uses GPUs or not, so the
    /// fail-open webhook for objects without GPUs registers it.
    pub ttl_default: bool,
    templates: Vec<TemplateAt>,
}

/// The GPU resource patterns and the kinds, read from a policy configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookMatch {
    /// Exact names and prefixes (a pattern's trailing `*` removed), sorted: the GPU resources,
    /// and the shared-GPU resources the playbook's `sharing_isolation` names.
    exact: Vec<String>,
    prefixes: Vec<String>,
    /// What reaches GPUs without asking for them (the playbook's `unrequested_access`): a
    /// container's environment variable names, and host paths (exact, and prefixes).
    device_env: Vec<String>,
    device_paths: Vec<String>,
    device_path_prefixes: Vec<String>,
    pub kinds: Vec<KindMatch>,
}

/// The name of the matchCondition that selects GPU workloads.
pub const GPU_CONDITION: &str = "gpu-workload";
/// The name of its negation, on the fail-open webhooks.
pub const NOT_GPU_CONDITION: &str = "not-gpu-workload";
/// The name of the condition that leaves out UPDATEs of metadata or status only.
pub const SPEC_CHANGED_CONDITION: &str = "spec-changed";
/// An UPDATE reaches the GPU webhooks only when it changes the spec: what the policies judge.
/// A label, an annotation or a finalizer removed by the garbage collector never waits on
/// mlguard.
pub const SPEC_CHANGED: &str = "request.operation != 'UPDATE' || oldObject == null || !has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec";

fn strings(v: &Json) -> Vec<String> {
    match v {
        Json::String(s) => vec![s.clone()],
        Json::Array(a) => a
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

impl WebhookMatch {
    /// Reads `gpu` and `workloads.kinds` of a configuration (`data.mlguard.config`). The table's
    /// shape is checked when the policies load (`kinds::parse`); this refuses only what it
    /// cannot turn into rules.
    pub fn from_config(config: &Json) -> Result<WebhookMatch, String> {
        let gpu = &config["gpu"];
        let mut patterns: BTreeSet<String> = strings(&gpu["resources"]).into_iter().collect();
        for vendor in gpu["vendors"].as_array().into_iter().flatten() {
            patterns.extend(strings(&vendor["resources"]));
        }
        if patterns.is_empty() {
            return Err("gpu.resources names no GPU resource".into());
        }
        // The playbook's policies act on objects that reach GPUs in other ways: a shared GPU
        // resource, a device variable, a host mount of the devices. They must reach the
        // webhooks that fail closed too, or a deny-by-default policy could never fire.
        let playbook = &config["playbook"];
        patterns.extend(strings(&playbook["sharing_isolation"]["shared_resources"]));
        let device_env: Vec<String> = strings(&playbook["unrequested_access"]["env"]);
        let mut device_paths = Vec::new();
        let mut device_path_prefixes = Vec::new();
        for p in strings(&playbook["unrequested_access"]["host_paths"]) {
            check_literal(&p)?;
            match p.strip_suffix('*') {
                Some(prefix) => device_path_prefixes.push(prefix.to_string()),
                None => device_paths.push(p),
            }
        }
        for e in &device_env {
            check_literal(e)?;
        }
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for p in patterns {
            check_literal(&p)?;
            match p.strip_suffix('*') {
                Some(prefix) => prefixes.push(prefix.to_string()),
                None => exact.push(p),
            }
        }
        let mut kinds = Vec::new();
        for (i, entry) in config["workloads"]["kinds"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let text = |field: &str| entry[field].as_str().unwrap_or_default().to_string();
            let (group, kind, resource) = (text("group"), text("kind"), text("resource"));
            if kind.is_empty() || resource.is_empty() {
                return Err(format!("workloads.kinds[{i}]: needs kind and resource"));
            }
            for s in [&group, &kind, &resource] {
                check_literal(s)?;
            }
            let mut templates = Vec::new();
            for t in entry["templates"].as_array().into_iter().flatten() {
                let paths = strings(&t["template"]);
                let each = t["each"]
                    .as_str()
                    .map(|e| (e.to_string(), t.get("name_field").is_some()));
                for p in paths.iter().chain(each.iter().map(|(e, _)| e)) {
                    check_path(p).map_err(|e| format!("workloads.kinds[{i}] ({kind}): {e}"))?;
                }
                let optional = t["optional"].as_bool().unwrap_or(false);
                templates.push(TemplateAt {
                    each,
                    paths,
                    optional,
                });
            }
            let ttl = &entry["lifecycle"]["ttl_seconds_after_finished"];
            kinds.push(KindMatch {
                group,
                kind,
                resource,
                update: entry["update"].as_bool().unwrap_or(false),
                ttl_default: ttl.is_object() && ttl["set_default"].as_bool() != Some(false),
                templates,
            });
        }
        Ok(WebhookMatch {
            exact,
            prefixes,
            device_env,
            device_paths,
            device_path_prefixes,
            kinds,
        })
    }

    /// `r` is a GPU resource name.
    fn is_gpu_name(&self, r: &str) -> String {
        self.exact
            .iter()
            .map(|e| format!("{r} == '{e}'"))
            .chain(
                self.prefixes
                    .iter()
                    .map(|p| format!("{r}.startsWith('{p}')")),
            )
            .collect::<Vec<_>>()
            .join(" || ")
    }

    /// The pod spec `s` has a container or init container with a GPU resource in its requests
    /// or limits, or one that reaches GPUs without asking (a device variable), or a host
    /// mount of the GPU devices.
    fn pod_spec(&self, s: &str) -> String {
        let names = self.is_gpu_name("r");
        let mut container = format!(
            "(has(c.resources) && ((has(c.resources.requests) && c.resources.requests.exists(r, {names})) || (has(c.resources.limits) && c.resources.limits.exists(r, {names}))))"
        );
        if !self.device_env.is_empty() {
            let env = self
                .device_env
                .iter()
                .map(|e| format!("e.name == '{e}'"))
                .collect::<Vec<_>>()
                .join(" || ");
            container = format!("{container} || (has(c.env) && c.env.exists(e, {env}))");
        }
        let mut spec = format!(
            "(has({s}.containers) && {s}.containers.exists(c, {container})) || (has({s}.initContainers) && {s}.initContainers.exists(c, {container}))"
        );
        let paths: Vec<String> = self
            .device_paths
            .iter()
            .map(|p| format!("v.hostPath.path == '{p}'"))
            .chain(
                self.device_path_prefixes
                    .iter()
                    .map(|p| format!("v.hostPath.path.startsWith('{p}')")),
            )
            .collect();
        if !paths.is_empty() {
            spec = format!(
                "{spec} || (has({s}.volumes) && {s}.volumes.exists(v, has(v.hostPath) && ({})))",
                paths.join(" || ")
            );
        }
        // A pod with DRA claims: whether they are GPUs is in the claims and their DeviceClasses,
        // which the API server's CEL cannot read, so every such pod goes to the webhooks that
        // fail closed; the policies tell GPU claims from others.
        spec = format!("{spec} || (has({s}.resourceClaims) && size({s}.resourceClaims) > 0)");
        format!("({spec})")
    }

    /// has() of every step of `base.<path>`.
    fn present(base: &str, path: &str) -> String {
        let mut at = base.to_string();
        path.split('.')
            .map(|step| {
                at = format!("{at}.{step}");
                format!("has({at})")
            })
            .collect::<Vec<_>>()
            .join(" && ")
    }

    /// None of the alternative template paths is set below `base`.
    fn absent(base: &str, paths: &[String]) -> String {
        paths
            .iter()
            .map(|p| format!("!({})", Self::present(base, p)))
            .collect::<Vec<_>>()
            .join(" && ")
    }

    /// The PodTemplateSpec at `path` below `base` uses GPUs: every step guarded by has().
    fn template(&self, base: &str, path: &str) -> String {
        let mut guards = Vec::new();
        let mut at = base.to_string();
        for step in path.split('.').chain(std::iter::once("spec")) {
            at = format!("{at}.{step}");
            guards.push(format!("has({at})"));
        }
        guards.push(self.pod_spec(&at));
        guards.join(" && ")
    }

    /// A template of `kind` uses GPUs, or a template the table does not call optional is
    /// missing: mlguard cannot tell what such a workload runs, and the policies refuse it
    /// whatever it runs, so it goes to the webhooks that fail closed.
    fn templates_of(&self, kind: &KindMatch) -> String {
        let mut alternatives = Vec::new();
        for t in &kind.templates {
            match &t.each {
                None => {
                    for p in &t.paths {
                        alternatives.push(self.template("object", p));
                    }
                    if !t.optional {
                        alternatives.push(Self::absent("object", &t.paths));
                    }
                }
                Some((each, is_list)) => {
                    let holder = format!("object.{each}");
                    let item = if *is_list {
                        "t".to_string()
                    } else {
                        format!("{holder}[k]")
                    };
                    let inner = t
                        .paths
                        .iter()
                        .map(|p| self.template(&item, p))
                        .collect::<Vec<_>>();
                    let inner = if inner.len() == 1 {
                        inner.join("")
                    } else {
                        format!("({})", inner.join(") || ("))
                    };
                    let var = if *is_list { "t" } else { "k" };
                    alternatives.push(format!(
                        "{} && {holder}.exists({var}, {inner})",
                        Self::present("object", each)
                    ));
                    if !t.optional {
                        alternatives.push(format!(
                            "!({}) || {holder}.exists({var}, {})",
                            Self::present("object", each),
                            Self::absent(&item, &t.paths)
                        ));
                    }
                }
            }
        }
        alternatives
            .into_iter()
            .map(|a| format!("({a})"))
            .collect::<Vec<_>>()
            .join(" || ")
    }

    /// One line per kind: the Pod first, then the table's kinds, each guarded by the request's
    /// kind so that only its own checks run.
    fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "(request.kind.group == '' && request.kind.kind == 'Pod' && has(object.spec) && {})",
            self.pod_spec("object.spec")
        )];
        // DRA claims and claim templates: all of them, for the same reason as pods with claims.
        let claim_kinds = CLAIM_KINDS
            .iter()
            .map(|(_, kind, _)| format!("request.kind.kind == '{kind}'"))
            .collect::<Vec<_>>()
            .join(" || ");
        lines.push(format!(
            "(request.kind.group == '{}' && ({claim_kinds}))",
            CLAIM_KINDS[0].0
        ));
        for k in &self.kinds {
            lines.push(format!(
                "(request.kind.group == '{}' && request.kind.kind == '{}' && ({}))",
                k.group,
                k.kind,
                self.templates_of(k)
            ));
        }
        lines
    }

    /// The GPU condition: true for a Pod or workload of the table with a GPU container.
    pub fn gpu_expression(&self) -> String {
        self.lines().join("\n|| ")
    }

    /// Its negation, for the fail-open webhooks.
    pub fn not_gpu_expression(&self) -> String {
        format!("!(\n{}\n)", self.gpu_expression())
    }

    /// The rules of the GPU webhooks: CREATE of Pods and of every kind of the table, and UPDATE
    /// of the kinds whose demand an update can raise.
    pub fn gpu_rules(&self) -> Vec<Rule> {
        let mut rules = vec![Rule::pods()];
        rules.extend(Rule::claims());
        rules.extend(self.kinds.iter().map(|k| Rule::of(k, k.update)));
        rules
    }

    /// The rules of the fail-open mutating webhook: CREATE of the kinds mlguard gives a TTL
    /// whether they use GPUs or not.
    pub fn lifecycle_rules(&self) -> Vec<Rule> {
        self.kinds
            .iter()
            .filter(|k| k.ttl_default)
            .map(|k| Rule::of(k, false))
            .collect()
    }
}

/// A rule of a webhook configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub update: bool,
}

impl Rule {
    fn pods() -> Rule {
        Rule {
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
            update: false,
        }
    }

    /// CREATE of ResourceClaims and ResourceClaimTemplates (their spec cannot change), in
    /// resource.k8s.io/v1 only: matchPolicy Equivalent converts requests made in a beta
    /// version, so the policies read one shape.
    fn claims() -> Vec<Rule> {
        CLAIM_KINDS
            .iter()
            .map(|(group, _, resource)| Rule {
                group: group.to_string(),
                version: "v1".into(),
                resource: resource.to_string(),
                update: false,
            })
            .collect()
    }

    fn of(kind: &KindMatch, update: bool) -> Rule {
        // Any version: the table matches a kind in every version (MPIJob v1 and v2beta1), and
        // matchPolicy Equivalent sends the request in the version it was made in.
        Rule {
            group: kind.group.clone(),
            version: "*".into(),
            resource: kind.resource.clone(),
            update,
        }
    }

    fn yaml(&self) -> String {
        let ops = if self.update {
            r#"["CREATE", "UPDATE"]"#
        } else {
            r#"["CREATE"]"#
        };
        format!(
            "- apiGroups: [\"{}\"]\n  apiVersions: [\"{}\"]\n  operations: {ops}\n  resources: [\"{}\"]\n  scope: Namespaced\n",
            self.group, self.version, self.resource
        )
    }
}

fn rules_yaml(rules: &[Rule]) -> String {
    rules.iter().map(Rule::yaml).collect()
}

/// Names and paths go into CEL string literals and field selections as they are: refuse what
/// would need quoting.
fn check_literal(s: &str) -> Result<(), String> {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '*'))
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?}: only letters, digits and . - _ / * can go into the webhooks' CEL"
        ))
    }
}

fn check_path(p: &str) -> Result<(), String> {
    let ok = !p.starts_with("$.")
        && p.split('.').all(|step| {
            let mut chars = step.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "template path {p:?}: the webhooks' CEL needs dot-separated field names"
        ))
    }
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}\n")
            }
        })
        .collect()
}

/// The header every generated file starts with.
const GENERATED: &str = "Generated by `mlguard manifests write` from policies/config.yaml (the GPU resource names\nand workloads.kinds); do not edit. A test fails when this file and the generator differ.";

fn comment(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

/// manifests/common/webhooks.yaml.
pub fn render_kustomize(m: &WebhookMatch) -> String {
    let gpu_rules = indent(&rules_yaml(&m.gpu_rules()), 2);
    let lifecycle_rules = indent(&rules_yaml(&m.lifecycle_rules()), 2);
    let gpu = indent(&m.gpu_expression(), 6);
    let not_gpu = indent(&m.not_gpu_expression(), 6);
    let common = "  admissionReviewVersions: [\"v1\"]\n  sideEffects: None\n  timeoutSeconds: 5\n  matchPolicy: Equivalent\n";
    let selectors = "  namespaceSelector:\n    matchExpressions:\n    - key: kubernetes.io/metadata.name\n      operator: NotIn\n      values: [\"kube-system\", \"mlguard-system\"]\n  objectSelector:\n    matchExpressions:\n    - key: mlguard.io/exempt\n      operator: NotIn\n      values: [\"true\"]\n";
    let client = |path: &str| {
        format!("  clientConfig:\n    service:\n      name: mlguard\n      namespace: mlguard-system\n      path: {path}\n      port: 443\n")
    };
    let mut out = comment(GENERATED, "# ");
    out.push_str(&comment(KUSTOMIZE_NOTES, "#"));
    out.push_str("apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: mlguard\nwebhooks:\n");
    out.push_str("# GPU workloads: fail closed.\n- name: mutate.mlguard.io\n");
    out.push_str(common);
    out.push_str("  failurePolicy: Fail\n  # mlguard's patches are idempotent, so being called again after another webhook\n  # changed the object is safe.\n  reinvocationPolicy: IfNeeded\n");
    out.push_str(&client("/mutate"));
    out.push_str(&format!("  rules:\n{gpu_rules}"));
    out.push_str(&gpu_conditions(&gpu));
    out.push_str(selectors);
    out.push_str("# Everything else mlguard mutates (the TTL of Jobs and the other kinds with one): fail\n# open. During an outage such an object only goes without its TTL default.\n- name: mutate-other.mlguard.io\n");
    out.push_str(common);
    out.push_str("  failurePolicy: Ignore\n  reinvocationPolicy: IfNeeded\n");
    out.push_str(&client("/mutate"));
    out.push_str(&format!("  rules:\n{lifecycle_rules}"));
    out.push_str(&format!(
        "  matchConditions:\n  - name: {NOT_GPU_CONDITION}\n    expression: |-\n{not_gpu}"
    ));
    out.push_str(selectors);
    out.push_str("---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: mlguard\nwebhooks:\n");
    out.push_str("# GPU workloads: fail closed. The default policies judge nothing else.\n- name: validate.mlguard.io\n");
    out.push_str(common);
    out.push_str("  failurePolicy: Fail\n");
    out.push_str(&client("/validate"));
    out.push_str(&format!("  rules:\n{gpu_rules}"));
    out.push_str(&gpu_conditions(&gpu));
    out.push_str(selectors);
    out
}

const KUSTOMIZE_NOTES: &str =
    " The choices, explained in manifests/README.md (\"Which requests reach mlguard\", \"If
 mlguard is down\"):
 - Three webhooks. mutate.mlguard.io and validate.mlguard.io receive GPU workloads only
   (matchConditions gpu-workload) and fail closed (failurePolicy: Fail): an mlguard outage
   cannot let a GPU workload in unchecked. mutate-other.mlguard.io receives the rest of
   what mlguard mutates (the kinds it gives a ttlSecondsAfterFinished, without GPUs) and
   fails open. Every other request (CPU Pods, CPU Deployments, ...) never reaches mlguard.
 - rules: CREATE of Pods and of every kind of workloads.kinds; UPDATE too for the kinds whose
   update can raise the demand (`update: true`). A rule naming a resource the cluster does
   not serve (a CRD not installed) is accepted and matches nothing until the CRD exists.
 - namespaceSelector keeps kube-system and mlguard-system out, so the control plane and
   mlguard itself can always be repaired, even while mlguard is down.
 - objectSelector keeps out objects labelled mlguard.io/exempt: \"true\", the opt-out label
   of mlguard's own `exemptions.object_labels` (policies/config.yaml). Keep the two in step.
 - timeoutSeconds: 5. mlguard answers in about half a millisecond (BENCHMARKS.md); 5s leaves
   room for a slow network or a pod being replaced.
";

/// manifests/components/all-objects/kustomization.yaml: the kustomize counterpart of the
/// chart's `webhooks.match=all`. Every Pod and workload of the table without GPUs goes to
/// fail-open webhooks too, for admins whose own policies judge such objects.
pub fn render_component(m: &WebhookMatch) -> String {
    let not_gpu = indent(&m.not_gpu_expression(), 10);
    let mut out = comment(GENERATED, "# ");
    out.push_str(&comment(
        " Widens what reaches mlguard (manifests/README.md, \"Widening the match\"): the fail-open
 mutating webhook gets every kind the GPU webhooks get, and a fail-open validating webhook
 validate-other.mlguard.io gets the objects without GPUs. GPU workloads still go to the
 fail-closed webhooks. Use it from an overlay: `components: [.../components/all-objects]`.",
        "#",
    ));
    out.push_str("apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\npatches:\n");
    out.push_str("- target: {group: admissionregistration.k8s.io, kind: MutatingWebhookConfiguration, name: mlguard}\n  patch: |-\n    - op: copy\n      from: /webhooks/0/rules\n      path: /webhooks/1/rules\n");
    out.push_str("- target: {group: admissionregistration.k8s.io, kind: ValidatingWebhookConfiguration, name: mlguard}\n  patch: |-\n    - op: copy\n      from: /webhooks/0\n      path: /webhooks/-\n    - op: replace\n      path: /webhooks/1/name\n      value: validate-other.mlguard.io\n    - op: replace\n      path: /webhooks/1/failurePolicy\n      value: Ignore\n    - op: replace\n      path: /webhooks/1/matchConditions/0\n      value:\n        name: ");
    out.push_str(NOT_GPU_CONDITION);
    out.push_str("\n        expression: |-\n");
    out.push_str(&not_gpu);
    out
}

/// The GPU webhooks' matchConditions, as YAML at the webhook's indentation.
fn gpu_conditions(gpu: &str) -> String {
    format!(
        "  matchConditions:\n  - name: {GPU_CONDITION}\n    expression: |-\n{gpu}  - name: {SPEC_CHANGED_CONDITION}\n    expression: \"{SPEC_CHANGED}\"\n"
    )
}

/// charts/mlguard/templates/_match.tpl: the same rules and expressions, as named templates.
pub fn render_helm(m: &WebhookMatch) -> String {
    let mut out = format!("{{{{- /*\n{GENERATED}\n*/ -}}}}\n\n");
    let define = |name: &str, body: &str| {
        format!(
            "{{{{- define \"{name}\" -}}}}\n{}{{{{- end }}}}\n\n",
            if body.ends_with('\n') {
                body.to_string()
            } else {
                format!("{body}\n")
            }
        )
    };
    out.push_str("{{- /* The GPU webhooks' rules: Pods and every kind of the table. */ -}}\n");
    out.push_str(&define("mlguard.gpuRules", &rules_yaml(&m.gpu_rules())));
    out.push_str(
        "{{- /* The fail-open mutating webhook's rules: the kinds given a TTL without GPUs. */ -}}\n",
    );
    out.push_str(&define(
        "mlguard.lifecycleRules",
        &rules_yaml(&m.lifecycle_rules()),
    ));
    out.push_str(&define("mlguard.gpuCondition", &m.gpu_expression()));
    out.push_str(&define("mlguard.notGpuCondition", &m.not_gpu_expression()));
    out.push_str(&define("mlguard.specChangedCondition", SPEC_CHANGED));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Json {
        json!({
            "gpu": {"resources": ["nvidia.com/gpu", "nvidia.com/mig-*"], "vendors": [{"resources": ["amd.com/gpu"]}]},
            "workloads": {"kinds": [
                {"group": "batch", "kind": "Job", "resource": "jobs", "update": true,
                 "templates": [{"template": "spec.template"}],
                 "lifecycle": {"ttl_seconds_after_finished": {"path": "spec.ttlSecondsAfterFinished"}}},
                {"group": "kubeflow.org", "kind": "PyTorchJob", "resource": "pytorchjobs",
                 "templates": [{"each": "spec.pytorchReplicaSpecs", "template": "template"}]},
                {"group": "ray.io", "kind": "RayCluster", "resource": "rayclusters",
                 "templates": [{"each": "spec.workerGroupSpecs", "name_field": "groupName", "template": "template"}],
                 "lifecycle": {"ttl_seconds_after_finished": {"path": "x", "set_default": false}}}
            ]}
        })
    }

    #[test]
    fn patterns_split_into_names_and_prefixes() {
        let m = WebhookMatch::from_config(&config()).unwrap();
        assert_eq!(m.exact, ["amd.com/gpu", "nvidia.com/gpu"]);
        assert_eq!(m.prefixes, ["nvidia.com/mig-"]);
        assert_eq!(
            m.is_gpu_name("r"),
            "r == 'amd.com/gpu' || r == 'nvidia.com/gpu' || r.startsWith('nvidia.com/mig-')"
        );
    }

    #[test]
    fn maps_iterate_keys_and_lists_items() {
        let e = WebhookMatch::from_config(&config())
            .unwrap()
            .gpu_expression();
        assert!(e.contains("object.spec.pytorchReplicaSpecs.exists(k, has(object.spec.pytorchReplicaSpecs[k].template) && has(object.spec.pytorchReplicaSpecs[k].template.spec)"), "{e}");
        assert!(
            e.contains(
                "object.spec.workerGroupSpecs.exists(t, has(t.template) && has(t.template.spec)"
            ),
            "{e}"
        );
    }

    #[test]
    fn rules_follow_the_table() {
        let m = WebhookMatch::from_config(&config()).unwrap();
        let gpu: Vec<_> = m
            .gpu_rules()
            .iter()
            .map(|r| (r.resource.clone(), r.update))
            .collect();
        assert_eq!(
            gpu,
            [
                ("pods".into(), false),
                ("resourceclaims".into(), false),
                ("resourceclaimtemplates".into(), false),
                ("jobs".into(), true),
                ("pytorchjobs".into(), false),
                ("rayclusters".into(), false)
            ]
        );
        let ttl: Vec<_> = m
            .lifecycle_rules()
            .into_iter()
            .map(|r| r.resource)
            .collect();
        assert_eq!(ttl, ["jobs"], "set_default: false gets no default");
    }

    #[test]
    fn what_cannot_go_into_cel_is_refused() {
        let mut c = config();
        c["gpu"]["resources"] = json!(["x' || true || '"]);
        assert!(WebhookMatch::from_config(&c).is_err());
        let mut c = config();
        c["workloads"]["kinds"][0]["templates"][0]["template"] = json!("spec.te mplate");
        assert!(WebhookMatch::from_config(&c).is_err());
    }
}
