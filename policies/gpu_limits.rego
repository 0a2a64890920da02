# GPUs cannot be shared or overcommitted: a container that requests GPUs must set the same
# number as its limit. Pods and every pod template of the workload kinds are checked.
package mlguard.policies.gpu_limits

import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.describe
import data.mlguard.lib.workload.limits
import data.mlguard.lib.workload.qty
import data.mlguard.lib.workload.requests
import data.mlguard.lib.workload.unreadable_gpu_quantities
import data.mlguard.lib.workload.updating_workload
import data.mlguard.lib.workload.workload_errors
import rego.v1

# A workload whose templates or pod counts mlguard cannot read could hide GPUs from every
# check: refused, with what could not be read.
findings contains msg if some msg in workload_errors

# A GPU count mlguard cannot read would skip every check that counts GPUs.
findings contains msg if {
	some what in unreadable_gpu_quantities
	msg := sprintf(
		"%s is not a Kubernetes quantity (write a whole number such as 1 or 8); mlguard does not admit GPUs it cannot count",
		[what],
	)
}

findings contains msg if {
	some entry in containers
	some r, asked in requests(entry.container)
	r in entry.extended
	not limits(entry.container)[r]
	msg := sprintf(
		"%s: %s requests %v %s but sets no limit for it; GPUs are not overcommitted, so set resources.limits[%q] to %v",
		[entry.subject, describe(entry), asked, r, r, asked],
	)
}

findings contains msg if {
	some entry in containers
	some r, asked in requests(entry.container)
	r in entry.extended
	limit := limits(entry.container)[r]
	qty(asked) != qty(limit)
	msg := sprintf(
		"%s: %s requests %v %s but its limit is %v; GPU requests must equal limits, so set both to the number of GPUs it uses",
		[entry.subject, describe(entry), asked, r, limit],
	)
}

deny contains msg if {
	creating
	some msg in findings
}

warn contains msg if {
	updating_workload
	some msg in findings
}
