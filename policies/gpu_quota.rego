# The namespace's ResourceQuotas on GPU resources (data.mlguard.cluster.quotas), checked when
# the workload is created rather than when its pods fail to start:
#   - a Pod that asks for more than remains (hard - used) is denied;
#   - a workload (Deployment, Job, PyTorchJob, ...; see workloads.kinds in config.yaml) whose
#     smallest useful group of pods (a gang, or one pod) needs more than the hard quota can
#     never run and is denied;
#   - one whose pods cannot all run at once under the hard quota is warned, with how many can;
#   - one whose pods need more than remains now is warned: they will wait for GPUs to free up,
#     unless Kueue queues the workload, which then owns the waiting.
# On UPDATE a workload is never refused: its findings are warnings.
package mlguard.policies.gpu_quota

import data.mlguard.lib.workload.claim_origin
import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.gang_need
import data.mlguard.lib.workload.is_gang
import data.mlguard.lib.workload.is_gpu
import data.mlguard.lib.workload.is_pod
import data.mlguard.lib.workload.is_workload
import data.mlguard.lib.workload.kind_entry
import data.mlguard.lib.workload.namespace
import data.mlguard.lib.workload.pod_gpu_demand
import data.mlguard.lib.workload.queued_by_kueue
import data.mlguard.lib.workload.subject
import data.mlguard.lib.workload.template_gpu_demand
import data.mlguard.lib.workload.templates
import data.mlguard.lib.workload.total_need
import data.mlguard.lib.workload.updating_workload
import data.mlguard.lib.workload.workload_notes
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
applies(q, _) if not q.scopes

applies(q, ti) if {
	q.scopes
	count([term | some term in q.scopes; not selects(term, ti)]) == 0
}

priority_class(ti) := object.get(templates[ti].spec, "priorityClassName", "")

terminating(ti) if templates[ti].spec.activeDeadlineSeconds >= 0

best_effort(ti) if {
	count([c |
		some entry in containers
		entry.template == ti
		c := entry.container
		some field in ["requests", "limits"]
		some r, _ in object.get(c, ["resources", field], {})
		r in {"cpu", "memory"}
	]) == 0
}

cross_namespace_affinity(ti) if {
	spec := templates[ti].spec
	some kind in ["podAffinity", "podAntiAffinity"]
	some term in array.concat(
		object.get(spec, ["affinity", kind, "requiredDuringSchedulingIgnoredDuringExecution"], []),
		[w.podAffinityTerm | some w in object.get(spec, ["affinity", kind, "preferredDuringSchedulingIgnoredDuringExecution"], [])],
	)
	cross_namespace_term(term)
}

cross_namespace_term(term) if count(object.get(term, "namespaces", [])) > 0

cross_namespace_term(term) if is_object(term.namespaceSelector)

selects(term, ti) if {
	term.scopeName == "Terminating"
	terminating(ti)
}

selects(term, ti) if {
	term.scopeName == "NotTerminating"
	not terminating(ti)
}

selects(term, ti) if {
	term.scopeName == "BestEffort"
	best_effort(ti)
}

selects(term, ti) if {
	term.scopeName == "NotBestEffort"
	not best_effort(ti)
}

selects(term, ti) if {
	term.scopeName == "CrossNamespacePodAffinity"
	cross_namespace_affinity(ti)
}

selects(term, ti) if {
	term.scopeName == "PriorityClass"
	term.operator == "Exists"
	priority_class(ti) != ""
}

selects(term, ti) if {
	term.scopeName == "PriorityClass"
	term.operator == "In"
	priority_class(ti) in term.values
}

selects(term, ti) if {
	term.scopeName == "PriorityClass"
	term.operator == "NotIn"
	not priority_class(ti) in term.values
}

# GPU quota keys the namespace's quotas hold, each with the resource and field it counts.
gpu_keys contains {"quota": q, "key": key, "resource": c.resource, "field": c.field} if {
	some q in quotas
	some key, _ in q.hard
	c := counted(key)
	is_gpu(c.resource)
}

used(charge) := object.get(charge.quota.used, charge.key, 0)

remaining(charge) := object.get(charge.quota.remaining, charge.key, charge.quota.hard[charge.key])

hard(charge) := charge.quota.hard[charge.key]

# --- Pods ----------------------------------------------------------------------------------

deny contains msg if {
	is_pod
	creating
	some charge in gpu_keys
	applies(charge.quota, 0)
	per_pod := pod_gpu_demand[charge.field][charge.resource]
	per_pod > remaining(charge)
	msg := sprintf(
		"%s asks for %v %s%s but namespace %s has %v left of its ResourceQuota %s (%s: hard %v, used %v); wait for running GPU pods to finish, ask for fewer, or ask a cluster admin for more quota",
		[subject, per_pod, charge.resource, claim_origin(0, charge.resource), namespace, remaining(charge), charge.quota.name, charge.key, hard(charge), used(charge)],
	)
}

# --- Workloads -----------------------------------------------------------------------------

# Per quota key, the workload's templates the quota counts (its scopes select their pods),
# the smallest useful group of pods and all its pods at once.
workload_charges contains charge if {
	is_workload
	not per_node
	some key in gpu_keys
	tis := [ti | some ti, _ in templates; applies(key.quota, ti)]
	gang := gang_need(key.field, key.resource, tis)
	all := total_need(key.field, key.resource, tis)
	all.amount > 0
	charge := object.union(key, {"gang": gang, "all": all})
}

# A DaemonSet's pods are one per node: what it needs in all depends on the nodes it selects,
# so only its one pod is checked.
per_node if kind_entry.per_node == true

workload_charges contains charge if {
	is_workload
	per_node
	some key in gpu_keys
	tis := [ti | some ti, _ in templates; applies(key.quota, ti)]
	gang := gang_need(key.field, key.resource, tis)
	charge := object.union(key, {"gang": gang, "all": {"amount": 0, "pods": 0, "breakdown": ""}})
}

notes := "" if count(workload_notes) == 0

notes := sprintf(" (%s)", [concat("; ", workload_notes)]) if count(workload_notes) > 0

never_runs contains msg if {
	some charge in workload_charges
	charge.gang.amount > hard(charge)
	msg := sprintf(
		"%s needs %v %s at once (%s), but namespace %s's ResourceQuota %s allows %v in all (%s)%s; it can never run: ask for fewer GPUs per pod or fewer pods, or ask a cluster admin for more quota",
		[subject, charge.gang.amount, charge.resource, charge.gang.breakdown, namespace, charge.quota.name, hard(charge), charge.key, notes],
	)
}

# The smallest group fits the hard quota but not all the pods do: some never run at once. A
# Job that is no gang (a sweep) runs as many at a time as fit; a Deployment's extra replicas
# never start; a gang that is useful with fewer pods (several LeaderWorkerSet groups, an
# elastic job, an autoscaled Ray cluster) starts, but never at full size.
partly_runs contains msg if {
	some charge in workload_charges
	charge.gang.amount <= hard(charge)
	charge.all.amount > hard(charge)
	msg := sprintf(
		"%s runs %v pods at once (%s), %v %s in all, but namespace %s's ResourceQuota %s allows %v (%s)%s; %s",
		[subject, charge.all.pods, charge.all.breakdown, charge.all.amount, charge.resource, namespace, charge.quota.name, hard(charge), charge.key, notes, what_runs(charge)],
	)
}

what_runs(charge) := sprintf("at most %v of its pods run at a time (%v each) and the rest wait, or never start for a controller that keeps its pods running", [floor(hard(charge) / charge.gang.amount), charge.gang.amount]) if not is_gang

what_runs(charge) := sprintf("its smallest useful part needs %v (%s), so it can start, but not all of its pods can run at the same time", [charge.gang.amount, charge.gang.breakdown]) if is_gang

# Everything fits the hard quota, but not what remains of it now: the pods will queue.
# Kueue owns the waiting of the workloads it queues, so they get no such message.
waits contains msg if {
	creating
	not queued_by_kueue
	some charge in workload_charges
	charge.all.amount <= hard(charge)
	charge.all.amount > remaining(charge)
	msg := sprintf(
		"%s needs %v %s at once (%s) but namespace %s has %v left of its ResourceQuota %s (%s: hard %v, used %v)%s; its pods will wait until GPUs are free",
		[subject, charge.all.amount, charge.resource, charge.all.breakdown, namespace, remaining(charge), charge.quota.name, charge.key, hard(charge), used(charge), notes],
	)
}

deny contains msg if {
	creating
	some msg in never_runs
}

warn contains msg if {
	updating_workload
	some msg in never_runs
}

warn contains msg if some msg in partly_runs

warn contains msg if some msg in waits
