# One big pod per node for distributed training: the pods of a multi-pod GPU training workload
# (playbook.training_kinds) that runs as a gang (its pods only useful together; a Job sweep
# of independent trials is not one) that could share a node (two of them fit on the largest GPU node)
# contend there for the node's PCIe, NVLink and network, and a node failure takes down two
# ranks. Warned when the pod template has no pod anti-affinity and no topology spread
# constraint. Pods that each take more than half of the largest node's GPUs cannot share one:
# the spread is implied and nothing is said. Needs the cluster's nodes; silent without them.
package mlguard.policies.gpu_node_spread

import data.mlguard.lib.playbook.is_training
import data.mlguard.lib.workload.is_gang
import data.mlguard.lib.workload.template_gpu_demand
import data.mlguard.lib.workload.template_gpu_resources
import data.mlguard.lib.workload.templates
import rego.v1

spread(t) if count(object.get(t.spec, ["affinity", "podAntiAffinity"], {})) > 0

spread(t) if count(object.get(t.spec, "topologySpreadConstraints", [])) > 0

deny contains msg if {
	is_training
	is_gang
	some ti, t in templates
	t.pods > 1
	not spread(t)
	some r in template_gpu_resources[ti]
	per_pod := template_gpu_demand[ti].requests[r]
	per_pod > 0
	largest := object.get(data.mlguard.cluster, ["largest_allocatable", r], 0)
	2 * per_pod <= largest
	msg := sprintf(
		"%s runs %v pods of %v %s each, and a node offers up to %v, so two of them can share a node and contend for its GPUs' links; ask for %v %s per pod (one pod per node), or spread the pods with a podAntiAffinity or topologySpreadConstraints on kubernetes.io/hostname",
		[t.subject, t.pods, per_pod, r, largest, largest, r],
	)
}
