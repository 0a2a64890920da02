# GPUs cannot be shared or overcommitted: a container that requests GPUs must set the same
# number as its limit. Pods and the pod templates of Jobs are checked.
package mlguard.policies.gpu_limits

import data.mlguard.lib.workload
import rego.v1

deny contains msg if {
	some entry in workload.containers
	some r, asked in workload.requests(entry.container)
	workload.is_gpu(r)
	not workload.limits(entry.container)[r]
	msg := sprintf(
		"%s: %s requests %v %s but sets no limit for it; GPUs are not overcommitted, so set resources.limits[%q] to %v",
		[workload.subject, workload.describe(entry), asked, r, r, asked],
	)
}

deny contains msg if {
	some entry in workload.containers
	some r, asked in workload.requests(entry.container)
	workload.is_gpu(r)
	limit := workload.limits(entry.container)[r]
	workload.qty(asked) != workload.qty(limit)
	msg := sprintf(
		"%s: %s requests %v %s but its limit is %v; GPU requests must equal limits, so set both to the number of GPUs it uses",
		[workload.subject, workload.describe(entry), asked, r, limit],
	)
}
