//! Runs a compiled [`PolicySet`] against one review, with the cluster state as data.
//!
//! An [`Evaluator`] pairs a policy set with a cluster-state snapshot. Both change rarely and
//! independently (a policy reload, a quota update), so the server builds a new `Evaluator` when
//! either changes and swaps it in atomically; requests only read it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use json_patch::PatchOperation;
use regorus::rvm::vm::RegoVM;
use regorus::{Engine, Value};

use crate::cluster::ClusterState;

use super::combined::{self, combinable};
use super::data::{document, insert};
use super::limits::{eval_time_limit, MAX_INSTRUCTIONS};
use super::set::{Backend, Policy, PolicySet, RuleKind, Stage};
use super::PolicyError;

/// A `deny` or `warn` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub text: String,
    pub details: Option<serde_json::Value>,
}

/// What one policy said about one review.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOutput {
    pub policy: String,
    pub deny: Vec<Message>,
    pub warn: Vec<Message>,
    /// RFC 6902 operations, parsed once here; `patch` and the reply use them as they are.
    pub patch: Vec<PatchOperation>,
    /// The policy failed on this review; the verdict treats it by the policy's action, so an
    /// enforcing policy that breaks denies rather than admits.
    pub error: Option<EvalError>,
}

impl PolicyOutput {
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty()
            && self.warn.is_empty()
            && self.patch.is_empty()
            && self.error.is_none()
    }
}

/// A policy failed while evaluating a request. The caller turns it into a denial: an internal
/// error must never admit silently.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("policy {policy}: `{rule}`: {message}")]
pub struct EvalError {
    pub policy: String,
    pub rule: &'static str,
    pub message: String,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct Evaluator {
    pub set: Arc<PolicySet>,
    pub cluster: Arc<ClusterState>,
    data: Value,
    /// Interpreter engine with the full data loaded; cloned per request.
    engine: Option<Engine>,
    id: u64,
}

thread_local! {
    /// A VM per worker thread, reused while the evaluator it was loaded for is current:
    /// loading a program and data into a fresh VM is most of the cost of a small policy.
    static VM: RefCell<Option<(u64, RegoVM)>> = const { RefCell::new(None) };
}

impl Evaluator {
    pub fn new(set: Arc<PolicySet>, cluster: Arc<ClusterState>) -> Result<Evaluator, PolicyError> {
        let backend = set.backend;
        Evaluator::with_backend(set, cluster, backend)
    }

    /// An evaluator on a given backend; the VM needs the set to have a compiled program.
    pub(crate) fn with_backend(
        set: Arc<PolicySet>,
        cluster: Arc<ClusterState>,
        backend: Backend,
    ) -> Result<Evaluator, PolicyError> {
        let data = document(set.config_value.clone(), Some(cluster.to_value()));
        let engine = match backend {
            Backend::Vm => None,
            Backend::Interpreter => Some(interpreter(&set, &data)?),
        };
        Ok(Evaluator {
            set,
            cluster,
            data,
            engine,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// This evaluator with `cluster`, which must differ from its own state only in
    /// `quotas[namespace]`: only that entry of the data is converted again. Quota reservations
    /// change one namespace per admitted pod, and converting a large cluster's whole state
    /// each time would cost milliseconds on the request path.
    pub fn with_namespace_quotas(
        &self,
        cluster: Arc<ClusterState>,
        namespace: &str,
    ) -> Result<Evaluator, PolicyError> {
        let mut data = self.data.clone();
        let mut node = &mut data;
        for key in ["mlguard", "cluster", "quotas"] {
            match node
                .as_object_mut()
                .ok()
                .and_then(|m| m.get_mut(&Value::from(key)))
            {
                Some(next) => node = next,
                None => return Evaluator::new(self.set.clone(), cluster),
            }
        }
        let Ok(quotas) = node.as_object_mut() else {
            return Evaluator::new(self.set.clone(), cluster);
        };
        match cluster.namespace_quotas_json(namespace) {
            Some(list) => quotas.insert(Value::from(namespace), Value::from(list)),
            None => quotas.remove(&Value::from(namespace)),
        };
        let engine = match self.engine {
            None => None,
            Some(_) => Some(interpreter(&self.set, &data)?),
        };
        Ok(Evaluator {
            set: self.set.clone(),
            cluster,
            data,
            engine,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Evaluates every policy that applies to the review's operation. `review` is the
    /// AdmissionRequest as a regorus value (see `admission::ParsedReview`). A failing policy
    /// yields an output with `error` set; the others still run.
    pub fn evaluate(&self, review: &Value, stage: Stage) -> Vec<PolicyOutput> {
        self.evaluate_until(review, stage, None)
    }

    /// [`Evaluator::evaluate`], giving up on the policies not yet run once `deadline` has
    /// passed: each is then an error, so the verdict never admits for want of time.
    pub fn evaluate_until(
        &self,
        review: &Value,
        stage: Stage,
        deadline: Option<Instant>,
    ) -> Vec<PolicyOutput> {
        let operation = review["operation"]
            .as_string()
            .map(|s| s.as_ref())
            .unwrap_or("");
        let mut input = Value::new_object();
        insert(&mut input, "review", review.clone());
        let combined = self.run_combined(&mut input, stage, operation);
        self.set
            .policies
            .iter()
            .filter(|policy| policy.settings.applies_to(operation))
            .map(
                |policy| match combined.as_ref().filter(|_| combinable(policy)) {
                    Some(values) => self.policy_output(policy, stage, |rule| {
                        Ok(values[policy.name.as_str()][rule.as_str()].clone())
                    }),
                    None if deadline.is_some_and(|d| Instant::now() >= d) => {
                        self.policy_output(policy, stage, |_| {
                            Err("not evaluated: the review's deadline passed".into())
                        })
                    }
                    None => self.run_policy(policy, &mut input, stage),
                },
            )
            .filter(|out| !out.is_empty())
            .collect()
    }

    /// On the VM, the values of every combinable policy's rules for `stage` from one run (see
    /// `compile::combined_module`). `None` on the interpreter, or when the run fails: the
    /// policies then run one by one, so that an error names the policy it comes from.
    fn run_combined(&self, input: &mut Value, stage: Stage, operation: &str) -> Option<Value> {
        if self.engine.is_some() || !matches!(operation, "CREATE" | "UPDATE") {
            return None;
        }
        insert(input, "parameters", Value::new_object());
        // Undefined when any policy's rule is (a complete rule with no value): run them apart.
        self.run(&combined::entry_point(stage, operation), input)
            .ok()
            .filter(|v| matches!(v, Value::Object(_)))
    }

    /// The output of one policy's rules for `stage`, whether or not the policy applies to the
    /// review's operation: `mlguard bench` times policies one at a time with it. `None` when
    /// the set has no policy of that name.
    pub fn evaluate_policy(
        &self,
        review: &Value,
        stage: Stage,
        name: &str,
    ) -> Option<PolicyOutput> {
        let policy = self.set.policy(name)?;
        let mut input = Value::new_object();
        insert(&mut input, "review", review.clone());
        Some(self.run_policy(policy, &mut input, stage))
    }

    fn run_policy(&self, policy: &Policy, input: &mut Value, stage: Stage) -> PolicyOutput {
        insert(input, "parameters", policy.parameters.clone());
        self.policy_output(policy, stage, |rule| {
            self.run(&policy.entry_point(rule), input)
        })
    }

    /// A policy's output for `stage`, from `value_of` each of its rules.
    fn policy_output(
        &self,
        policy: &Policy,
        stage: Stage,
        mut value_of: impl FnMut(RuleKind) -> Result<Value, String>,
    ) -> PolicyOutput {
        let mut out = PolicyOutput {
            policy: policy.name.clone(),
            ..Default::default()
        };
        for rule in policy.rules_at(stage) {
            let result = value_of(rule).and_then(|value| match rule {
                RuleKind::Deny => messages(&value).map(|m| out.deny = m),
                RuleKind::Warn => messages(&value).map(|m| out.warn = m),
                RuleKind::Patch => patch_ops(&value).map(|p| out.patch = p),
            });
            if let Err(message) = result {
                out.error = Some(EvalError {
                    policy: policy.name.clone(),
                    rule: rule.as_str(),
                    message,
                });
                break;
            }
        }
        out
    }

    fn run(&self, entry: &str, input: &Value) -> Result<Value, String> {
        match (&self.engine, &self.set.program) {
            (Some(base), _) => {
                let mut engine = base.clone();
                engine.set_input(input.clone());
                engine
                    .eval_rule(entry.to_string())
                    .map_err(|e| format!("{e:#}"))
            }
            (None, Some(program)) => VM.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.as_ref().is_none_or(|(id, _)| *id != self.id) {
                    let mut vm = RegoVM::new();
                    vm.load_program(program.clone());
                    vm.set_max_instructions(MAX_INSTRUCTIONS);
                    vm.set_execution_timer_config(Some(eval_time_limit()));
                    vm.set_data(self.data.clone()).map_err(|e| e.to_string())?;
                    *slot = Some((self.id, vm));
                }
                let (_, vm) = slot.as_mut().expect("VM slot was just filled");
                vm.set_input(input.clone());
                vm.execute_entry_point_by_name(entry)
                    .map_err(|e| e.to_string())
            }),
            (None, None) => Err("policy set has no evaluator (internal error)".into()),
        }
    }
}

/// An interpreter engine with `data` loaded.
fn interpreter(set: &PolicySet, data: &Value) -> Result<Engine, PolicyError> {
    let mut engine = set.engine.clone();
    engine.clear_data();
    engine
        .add_data(data.clone())
        .map_err(|e| PolicyError::Compile(format!("cluster data: {e:#}")))?;
    Ok(engine)
}

fn to_json(value: &Value) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn elements(value: &Value) -> Result<Vec<&Value>, String> {
    match value {
        Value::Undefined => Ok(Vec::new()),
        Value::Set(s) => Ok(s.iter().collect()),
        Value::Array(a) => Ok(a.iter().collect()),
        other => Err(format!(
            "must be a set (`contains`), found {}",
            to_json(other)
        )),
    }
}

fn messages(value: &Value) -> Result<Vec<Message>, String> {
    elements(value)?
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(Message {
                text: s.to_string(),
                details: None,
            }),
            Value::Object(o) => match o.get(&Value::from("msg")) {
                Some(Value::String(s)) => Ok(Message {
                    text: s.to_string(),
                    details: o.get(&Value::from("details")).map(to_json),
                }),
                _ => Err(format!(
                    "entries must be strings or objects with a string `msg`, found {}",
                    to_json(v)
                )),
            },
            other => Err(format!(
                "entries must be strings or objects with a string `msg`, found {}",
                to_json(other)
            )),
        })
        .collect()
}

fn patch_ops(value: &Value) -> Result<Vec<PatchOperation>, String> {
    elements(value)?
        .into_iter()
        .map(|v| {
            let op = to_json(v);
            <PatchOperation as serde::Deserialize>::deserialize(&op)
                .map_err(|e| format!("entries must be RFC 6902 operations ({e}), found {op}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::source::Origin;

    fn state(used: &str, with_team: bool) -> ClusterState {
        let mut s = ClusterState::default();
        let mut quotas = vec![serde_json::json!({
            "metadata": {"name": "gpu", "namespace": "ml"},
            "spec": {"hard": {"requests.nvidia.com/gpu": "8"}},
            "status": {"used": {"requests.nvidia.com/gpu": used}}})];
        if with_team {
            quotas.push(
                serde_json::json!({"metadata": {"name": "gpu", "namespace": "team"},
                "spec": {"hard": {"requests.nvidia.com/gpu": "2"}}}),
            );
        }
        for q in quotas {
            s.add_quota(&serde_json::from_value(q).unwrap());
        }
        s
    }

    #[test]
    fn a_namespace_quota_update_equals_a_full_rebuild() {
        let set = PolicySet::load(Origin::Embedded, Backend::Vm).unwrap();
        let before = Evaluator::new(set.clone(), Arc::new(state("1", true))).unwrap();
        for (after, namespace) in [(state("5", true), "ml"), (state("1", false), "team")] {
            let after = Arc::new(after);
            let updated = before
                .with_namespace_quotas(after.clone(), namespace)
                .unwrap();
            let rebuilt = Evaluator::new(set.clone(), after).unwrap();
            assert_eq!(updated.data, rebuilt.data, "{namespace}");
            assert_ne!(updated.id, before.id);
        }
    }
}
