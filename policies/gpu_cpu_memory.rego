# CPU and memory next to GPUs: a GPU container without a CPU or a memory request gets its GPUs
# but is starved of the CPU that feeds them (data loading, the input pipeline) and may land on
# a node without the memory it needs. Warned. A limit counts as the request: the API server
# defaults one to the other.
package mlguard.policies.gpu_cpu_memory

import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.describe
import data.mlguard.lib.workload.limits
import data.mlguard.lib.workload.requests
import rego.v1

deny contains msg if {
	some entry in containers
	count(entry.gpu) > 0
	missing := [r |
		some r in ["cpu", "memory"]
		not requests(entry.container)[r]
		not limits(entry.container)[r]
	]
	count(missing) > 0
	msg := sprintf(
		"%s: %s uses %s but requests no %s; set resources.requests for %s (e.g. 8 CPUs and 32Gi per GPU) so its GPUs are not starved and it lands on a node that has them",
		[entry.subject, describe(entry), concat(", ", entry.gpu), concat(" or ", missing), concat(" and ", missing)],
	)
}
