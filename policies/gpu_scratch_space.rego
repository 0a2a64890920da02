# Scratch space is asked for: a GPU training container (playbook.training_kinds) without an
# ephemeral-storage request is warned. Without one, the scheduler places it on a node whatever
# its free disk, and the kubelet evicts it when its scratch data fills the node's disk.
package mlguard.policies.gpu_scratch_space

import data.mlguard.lib.playbook.is_training
import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.describe
import data.mlguard.lib.workload.limits
import data.mlguard.lib.workload.requests
import rego.v1

deny contains msg if {
	is_training
	some entry in containers
	count(entry.gpu) > 0
	not requests(entry.container)["ephemeral-storage"]
	not limits(entry.container)["ephemeral-storage"]
	msg := sprintf(
		"%s: %s trains on %s but requests no ephemeral-storage; set resources.requests[\"ephemeral-storage\"] to the scratch space it writes (e.g. 100Gi), so it lands on a node with that much disk and is not evicted when the disk fills",
		[entry.subject, describe(entry), concat(", ", entry.gpu)],
	)
}
