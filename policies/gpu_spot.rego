# Spot and preemptible capacity for experiments: GPU Pods in the namespaces named in
# playbook.spot get a toleration for each spot taint and the preferred node affinity to spot
# GPU nodes, so they use cheap capacity when there is some. Serving is never placed there: a
# GPU serving workload (playbook.serving_kinds) whose pod template tolerates a spot taint is
# warned, wherever it runs. Only Pods are mutated (workload pod templates never are; their
# Pods are, when created).
package mlguard.policies.gpu_spot

import data.mlguard.lib.playbook.is_serving
import data.mlguard.lib.playbook.marked
import data.mlguard.lib.playbook.settings
import data.mlguard.lib.playbook.tolerates
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.is_gpu_workload
import data.mlguard.lib.workload.is_pod
import data.mlguard.lib.workload.template_gpu_resources
import data.mlguard.lib.workload.templates
import rego.v1

cfg := settings.spot

# The engine drops an element already in the array, so a Pod that has these gets no patch.
patch contains {"op": "add", "path": "/spec/tolerations/-", "value": toleration} if {
	creating
	is_pod
	is_gpu_workload
	marked(cfg)
	some taint in cfg.taints
	toleration := {"key": taint.key, "operator": "Equal", "value": taint.value, "effect": taint.effect}
}

patch contains {"op": "add", "path": "/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution/-", "value": term} if {
	creating
	is_pod
	is_gpu_workload
	marked(cfg)
	some term in cfg.preferred_node_affinity
}

deny contains msg if {
	is_serving
	some ti, t in templates
	count(template_gpu_resources[ti]) > 0
	some taint in cfg.taints
	some toleration in object.get(t.spec, "tolerations", [])
	tolerates(toleration, taint)
	msg := sprintf(
		"%s serves on GPUs but tolerates the spot taint %s=%s:%s; spot nodes are reclaimed at short notice and take the service down with them: remove the toleration",
		[t.subject, taint.key, taint.value, taint.effect],
	)
}
