# A cap on GPUs per pod and per container, beyond what a node offers: the most of each GPU
# resource (DRA GPU claims too, per DeviceClass, shared ones included) one pod (playbook.per_pod_cap.max_per_pod) and one container (max_per_container)
# may use, with per_namespace overrides ({NAMESPACE: {max_per_pod, max_per_container}}).
# Off by default (`enabled: false`).
package mlguard.policies.gpu_per_pod_cap

import data.mlguard.lib.playbook.settings
import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.describe
import data.mlguard.lib.workload.namespace
import data.mlguard.lib.workload.request
import data.mlguard.lib.workload.template_capacity_demand
import data.mlguard.lib.workload.templates
import data.mlguard.lib.workload.updating_workload
import rego.v1

cfg := settings.per_pod_cap

# The namespace's cap, else the cluster-wide one; undefined (no cap) when null.
cap(key) := v if {
	v := cfg.per_namespace[namespace][key]
	is_number(v)
} else := v if {
	not is_object(object.get(cfg.per_namespace, namespace, null))
	v := cfg[key]
	is_number(v)
}

where := sprintf("in namespace %s", [namespace]) if cfg.per_namespace[namespace]

where := "in this cluster" if not cfg.per_namespace[namespace]

findings contains msg if {
	most := cap("max_per_pod")
	some ti, t in templates
	some r, asked in template_capacity_demand[ti]
	asked > most
	msg := sprintf(
		"%s asks for %v %s in one pod, but a pod may use at most %v %s; ask for at most %v per pod and spread the work over more pods",
		[t.subject, asked, r, most, where, most],
	)
}

findings contains msg if {
	most := cap("max_per_container")
	some entry in containers
	some r in entry.extended
	asked := request(entry.container, r)
	asked > most
	msg := sprintf(
		"%s: %s asks for %v %s, but a container may use at most %v %s; ask for at most %v",
		[entry.subject, describe(entry), asked, r, most, where, most],
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
