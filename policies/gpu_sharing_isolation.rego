# GPU sharing stays within a tenant: time-sliced or MPS-shared GPUs (the shared resource names
# of the GPU operator's sharing config, playbook.sharing_isolation.shared_resources) give
# several pods one GPU's memory and compute with no isolation between them. Refused in the
# namespaces an admin marks as needing isolation; MIG slices and whole GPUs stay allowed.
# Off by default (`enabled: false`). Shared GPUs that keep the plain resource name
# (renameByDefault: false) cannot be told apart from whole GPUs in a pod spec.
package mlguard.policies.gpu_sharing_isolation

import data.mlguard.lib.playbook.marked
import data.mlguard.lib.playbook.settings
import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.describe
import data.mlguard.lib.workload.limits
import data.mlguard.lib.workload.matches
import data.mlguard.lib.workload.namespace
import data.mlguard.lib.workload.requests
import data.mlguard.lib.workload.updating_workload
import rego.v1

cfg := settings.sharing_isolation

shared(c) := shared_names(requests(c)) | shared_names(limits(c))

shared_names(resources) := {r |
	some r, _ in resources
	some pattern in cfg.shared_resources
	matches(pattern, r)
}

findings contains msg if {
	marked(cfg)
	some entry in containers
	some r in shared(entry.container)
	msg := sprintf(
		"%s: %s asks for %s, a GPU shared with other pods without memory or fault isolation, but namespace %s requires isolated GPUs; ask for a MIG slice (nvidia.com/mig-*) or a whole GPU (nvidia.com/gpu) instead",
		[entry.subject, describe(entry), r, namespace],
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
