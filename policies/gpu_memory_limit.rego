# A GPU container without a memory limit can use up its node's memory and get its GPU
# neighbours evicted. Warns by default (see config.yaml); set the action to deny to enforce.
package mlguard.policies.gpu_memory_limit

import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.describe
import data.mlguard.lib.workload.limits
import data.mlguard.lib.workload.updating_workload
import rego.v1

findings contains msg if {
	some entry in containers
	count(entry.gpu) > 0
	not limits(entry.container).memory
	msg := sprintf(
		"%s: %s uses %s but sets no memory limit; set resources.limits.memory so that it cannot take memory from other GPU jobs on its node",
		[entry.subject, describe(entry), concat(", ", entry.gpu)],
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
