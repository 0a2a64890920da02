# Priority by purpose: GPU Pods in serving namespaces get a high PriorityClass, and in
# experiment namespaces a low, preemptible one, when they name none (playbook.priority).
# Off by default (`enabled: false`).
#
# Only Pods are mutated, for two reasons. Workload pod templates are never mutated (a GitOps
# tool would see the change as drift); their Pods are, when the controller creates them. And
# the API server's Priority admission plugin runs before the webhooks: it has already set the
# Pod's `priority` (and `preemptionPolicy`) from the class it named, or from the global default
# class (whose name it also sets), and it checks them again when the webhooks changed the Pod.
# A webhook that sets priorityClassName alone leaves a priority that does not match the class,
# and the API server refuses the Pod. So the Pod gets the class's name, its value and its
# preemption policy together, from the configuration (mlguard does not read PriorityClasses).
package mlguard.policies.gpu_priority

import data.mlguard.lib.playbook.marked
import data.mlguard.lib.playbook.settings
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.is_gpu_workload
import data.mlguard.lib.workload.is_pod
import data.mlguard.lib.workload.obj
import rego.v1

cfg := settings.priority

# The class the Pod names, if it is one: the cluster's global default counts as none, since
# the API server names it for every Pod that names none.
named_none if object.get(obj.spec, "priorityClassName", "") == ""

named_none if {
	cfg.global_default_class != ""
	obj.spec.priorityClassName == cfg.global_default_class
}

# The first purpose whose namespaces match.
purpose := [p | some p in cfg.purposes; marked(p)][0]

patch contains op if {
	creating
	is_pod
	is_gpu_workload
	named_none
	some op in [
		{"op": "add", "path": "/spec/priorityClassName", "value": purpose["class"]},
		{"op": "add", "path": "/spec/priority", "value": purpose.value},
		{"op": "add", "path": "/spec/preemptionPolicy", "value": purpose.preemption_policy},
	]
}
