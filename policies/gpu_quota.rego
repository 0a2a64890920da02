# The namespace's ResourceQuotas on GPU resources (data.mlguard.cluster.quotas), checked when
# the workload is created rather than when its pods fail to start:
#   - a Pod that asks for more than remains (hard - used) is denied;
#   - a Job whose pods at once (per-pod demand x min(parallelism, completions)) need more than
#     the hard quota can never run and is denied; one that needs more than remains now is
#     warned: its pods will wait for GPUs to free up.
package mlguard.policies.gpu_quota

import data.mlguard.lib.workload
import rego.v1

quotas := object.get(data.mlguard.cluster.quotas, workload.namespace, [])

# A quota key names a resource and which figure of it is counted: `requests.R`, `limits.R`,
# or a bare `R`, which counts requests.
counted(key) := {"resource": trim_prefix(key, "requests."), "field": "requests"} if startswith(key, "requests.")

counted(key) := {"resource": trim_prefix(key, "limits."), "field": "limits"} if startswith(key, "limits.")

counted(key) := {"resource": key, "field": "requests"} if {
	not startswith(key, "requests.")
	not startswith(key, "limits.")
}

# One entry per GPU quota key the workload counts against.
charges contains {"quota": q, "key": key, "resource": c.resource, "per_pod": per_pod} if {
	some q in quotas
	some key, _ in q.hard
	c := counted(key)
	workload.is_gpu(c.resource)
	per_pod := workload.demand(workload.pod_spec, c.resource, c.field)
	per_pod > 0
}

used(charge) := object.get(charge.quota.used, charge.key, 0)

remaining(charge) := object.get(charge.quota.remaining, charge.key, charge.quota.hard[charge.key])

deny contains msg if {
	workload.is_pod
	some charge in charges
	charge.per_pod > remaining(charge)
	msg := sprintf(
		"%s asks for %v %s but namespace %s has %v left of its ResourceQuota %s (%s: hard %v, used %v); wait for running GPU pods to finish, ask for fewer, or ask a cluster admin for more quota",
		[workload.subject, charge.per_pod, charge.resource, workload.namespace, remaining(charge), charge.quota.name, charge.key, charge.quota.hard[charge.key], used(charge)],
	)
}

deny contains msg if {
	workload.is_job
	some charge in charges
	at_once := charge.per_pod * workload.job_concurrency
	at_once > charge.quota.hard[charge.key]
	msg := sprintf(
		"%s runs %v pods at once (parallelism %v, completions %v) of %v %s each, %v in all, but namespace %s's ResourceQuota %s allows %v (%s); it can never run: lower parallelism or GPUs per pod, or ask a cluster admin for more quota",
		[workload.subject, workload.job_concurrency, workload.parallelism, object.get(workload.obj.spec, "completions", "unset"), charge.per_pod, charge.resource, at_once, workload.namespace, charge.quota.name, charge.quota.hard[charge.key], charge.key],
	)
}

warn contains msg if {
	workload.is_job
	some charge in charges
	at_once := charge.per_pod * workload.job_concurrency
	at_once <= charge.quota.hard[charge.key]
	at_once > remaining(charge)
	msg := sprintf(
		"%s needs %v %s at once but namespace %s has %v left of its ResourceQuota %s (%s: hard %v, used %v); its pods will wait until GPUs are free",
		[workload.subject, at_once, charge.resource, workload.namespace, remaining(charge), charge.quota.name, charge.key, charge.quota.hard[charge.key], used(charge)],
	)
}
