# GPU entitlement: GPU workloads only in the namespaces an admin has entitled, by name or by a
# namespace label (playbook.entitlement). Off by default (`enabled: false`): switch it on once
# the namespaces are named. The namespace's labels come from mlguard's cluster state, so there
# is no race with a namespace cache of its own.
package mlguard.policies.gpu_entitlement

import data.mlguard.lib.playbook.how_to_mark
import data.mlguard.lib.playbook.marked
import data.mlguard.lib.playbook.settings
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.is_gpu_workload
import data.mlguard.lib.workload.namespace
import data.mlguard.lib.workload.pod_gpu_resources
import data.mlguard.lib.workload.subject
import data.mlguard.lib.workload.updating_workload
import rego.v1

findings contains msg if {
	is_gpu_workload
	not marked(settings.entitlement)
	msg := sprintf(
		"%s uses %s, but namespace %s is not entitled to GPUs; run it in a namespace that is, or ask a cluster admin to entitle %s (%s)",
		[subject, concat(", ", pod_gpu_resources), namespace, namespace, how_to_mark("entitlement")],
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
