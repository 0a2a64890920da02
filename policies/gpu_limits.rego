# GPUs cannot be shared or overcommitted: a container that requests GPUs must set the same
# number as its limit. Pods and the pod templates of Jobs are checked.
package mlguard.policies.gpu_limits

import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.describe
import data.mlguard.lib.workload.limits
import data.mlguard.lib.workload.qty
import data.mlguard.lib.workload.requests
import data.mlguard.lib.workload.subject
import data.mlguard.lib.workload.unreadable_gpu_quantities
import rego.v1

# A GPU count mlguard cannot read would skip every check that counts GPUs.
deny contains msg if {
	some what in unreadable_gpu_quantities
	msg := sprintf(
		"%s: %s is not a Kubernetes quantity (write a whole number such as 1 or 8); mlguard does not admit GPUs it cannot count",
		[subject, what],
	)
}

deny contains msg if {
	some entry in containers
	some r, asked in requests(entry.container)
	r in entry.gpu
	not limits(entry.container)[r]
	msg := sprintf(
		"%s: %s requests %v %s but sets no limit for it; GPUs are not overcommitted, so set resources.limits[%q] to %v",
		[subject, describe(entry), asked, r, r, asked],
	)
}

deny contains msg if {
	some entry in containers
	some r, asked in requests(entry.container)
	r in entry.gpu
	limit := limits(entry.container)[r]
	qty(asked) != qty(limit)
	msg := sprintf(
		"%s: %s requests %v %s but its limit is %v; GPU requests must equal limits, so set both to the number of GPUs it uses",
		[subject, describe(entry), asked, r, limit],
	)
}
