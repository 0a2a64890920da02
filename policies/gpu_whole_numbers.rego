# What the API server refuses anyway: a GPU (an extended resource) is counted in whole devices,
# so a fractional request or limit (0.5, 500m) is invalid and the object is rejected. Refused
# here too, so that `mlguard audit` and `mlguard test` never report such a manifest as fine.
# (A GPU request that differs from its limit, the API server's other rule for extended
# resources, is gpu_limits' finding.)
package mlguard.policies.gpu_whole_numbers

import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.describe
import data.mlguard.lib.workload.qty
import data.mlguard.lib.workload.updating_workload
import rego.v1

findings contains msg if {
	some entry in containers
	some r in entry.extended
	some field in ["requests", "limits"]
	q := entry.container.resources[field][r]
	n := qty(q)
	n != floor(n)
	msg := sprintf(
		"%s: %s %s %v %s, but GPUs are counted in whole devices and the API server refuses a fraction; ask for %v, or for part of a GPU through a MIG slice (nvidia.com/mig-*) or a shared GPU (time-slicing or MPS)",
		[entry.subject, describe(entry), field, q, r, max({1, ceil(n)})],
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
