package mlguard.policies.gpu_toleration

import data.mlguard.lib.gpu.containers
import data.mlguard.lib.gpu.gpu_workload
import data.mlguard.lib.gpu.gpus
import rego.v1

patch contains op if {
	input.review.kind.kind == "Pod"
	gpu_workload
	some name in {n | some c in containers; some n in gpus(c)}
	op := {
		"op": "add",
		"path": "/spec/tolerations/-",
		"value": {"key": name, "operator": "Exists", "effect": "NoSchedule"},
	}
}

warn contains msg if {
	input.review.kind.kind == "Pod"
	gpu_workload
	not input.review.object.metadata.labels["app.kubernetes.io/name"]
	msg := "GPU pod has no app.kubernetes.io/name label; GPU usage reports group pods by it"
}
