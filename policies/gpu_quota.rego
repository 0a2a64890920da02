# The namespace's ResourceQuotas on GPU resources (data.mlguard.cluster.quotas), checked when
# the workload is created rather than when its pods fail to start:
#   - a Pod that asks for more than remains (hard - used) is denied;
#   - a Job whose pods at once (per-pod demand x min(parallelism, completions)) need more than
#     the hard quota can never run and is denied; one that needs more than remains now is
#     warned: its pods will wait for GPUs to free up.
package mlguard.policies.gpu_quota

import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.is_gpu
import data.mlguard.lib.workload.is_job
import data.mlguard.lib.workload.is_pod
import data.mlguard.lib.workload.job_concurrency
import data.mlguard.lib.workload.namespace
import data.mlguard.lib.workload.obj
import data.mlguard.lib.workload.parallelism
import data.mlguard.lib.workload.pod_gpu_demand
import data.mlguard.lib.workload.pod_spec
import data.mlguard.lib.workload.subject
import rego.v1

quotas := object.get(data.mlguard.cluster.quotas, namespace, [])

# A quota key names a resource and which figure of it is counted: `requests.R`, `limits.R`,
# or a bare `R`, which counts requests.
counted(key) := {"resource": trim_prefix(key, "requests."), "field": "requests"} if startswith(key, "requests.")

counted(key) := {"resource": trim_prefix(key, "limits."), "field": "limits"} if startswith(key, "limits.")

counted(key) := {"resource": key, "field": "requests"} if {
	not startswith(key, "requests.")
	not startswith(key, "limits.")
}

# A scoped quota (spec.scopes, spec.scopeSelector) counts only the pods every scope selects,
# as Kubernetes' quota plugin does.
applies(q) if not q.scopes

applies(q) if {
	q.scopes
	count([term | some term in q.scopes; not selects(term)]) == 0
}

spec := pod_spec

priority_class := object.get(spec, "priorityClassName", "")

terminating if spec.activeDeadlineSeconds >= 0

best_effort if {
	count([c |
		some entry in containers
		c := entry.container
		some field in ["requests", "limits"]
		some r, _ in object.get(c, ["resources", field], {})
		r in {"cpu", "memory"}
	]) == 0
}

cross_namespace_affinity if {
	some kind in ["podAffinity", "podAntiAffinity"]
	some term in array.concat(
		object.get(spec, ["affinity", kind, "requiredDuringSchedulingIgnoredDuringExecution"], []),
		[w.podAffinityTerm | some w in object.get(spec, ["affinity", kind, "preferredDuringSchedulingIgnoredDuringExecution"], [])],
	)
	cross_namespace_term(term)
}

cross_namespace_term(term) if count(object.get(term, "namespaces", [])) > 0

cross_namespace_term(term) if is_object(term.namespaceSelector)

selects(term) if {
	term.scopeName == "Terminating"
	terminating
}

selects(term) if {
	term.scopeName == "NotTerminating"
	not terminating
}

selects(term) if {
	term.scopeName == "BestEffort"
	best_effort
}

selects(term) if {
	term.scopeName == "NotBestEffort"
	not best_effort
}

selects(term) if {
	term.scopeName == "CrossNamespacePodAffinity"
	cross_namespace_affinity
}

selects(term) if {
	term.scopeName == "PriorityClass"
	term.operator == "Exists"
	priority_class != ""
}

selects(term) if {
	term.scopeName == "PriorityClass"
	term.operator == "In"
	priority_class in term.values
}

selects(term) if {
	term.scopeName == "PriorityClass"
	term.operator == "NotIn"
	not priority_class in term.values
}

# One entry per GPU quota key the workload counts against.
charges contains {"quota": q, "key": key, "resource": c.resource, "per_pod": per_pod} if {
	some q in quotas
	applies(q)
	some key, _ in q.hard
	c := counted(key)
	is_gpu(c.resource)
	per_pod := pod_gpu_demand[c.field][c.resource]
	per_pod > 0
}

used(charge) := object.get(charge.quota.used, charge.key, 0)

remaining(charge) := object.get(charge.quota.remaining, charge.key, charge.quota.hard[charge.key])

deny contains msg if {
	is_pod
	some charge in charges
	charge.per_pod > remaining(charge)
	msg := sprintf(
		"%s asks for %v %s but namespace %s has %v left of its ResourceQuota %s (%s: hard %v, used %v); wait for running GPU pods to finish, ask for fewer, or ask a cluster admin for more quota",
		[subject, charge.per_pod, charge.resource, namespace, remaining(charge), charge.quota.name, charge.key, charge.quota.hard[charge.key], used(charge)],
	)
}

deny contains msg if {
	is_job
	some charge in charges
	at_once := charge.per_pod * job_concurrency
	at_once > charge.quota.hard[charge.key]
	msg := sprintf(
		"%s runs %v pods at once (parallelism %v, completions %v) of %v %s each, %v in all, but namespace %s's ResourceQuota %s allows %v (%s); it can never run: lower parallelism or GPUs per pod, or ask a cluster admin for more quota",
		[subject, job_concurrency, parallelism, object.get(obj.spec, "completions", "unset"), charge.per_pod, charge.resource, at_once, namespace, charge.quota.name, charge.quota.hard[charge.key], charge.key],
	)
}

warn contains msg if {
	is_job
	some charge in charges
	at_once := charge.per_pod * job_concurrency
	at_once <= charge.quota.hard[charge.key]
	at_once > remaining(charge)
	msg := sprintf(
		"%s needs %v %s at once but namespace %s has %v left of its ResourceQuota %s (%s: hard %v, used %v); its pods will wait until GPUs are free",
		[subject, at_once, charge.resource, namespace, remaining(charge), charge.quota.name, charge.key, charge.quota.hard[charge.key], used(charge)],
	)
}
