package mlguard.lib.gpu

import rego.v1

# The pod spec of a Pod, or the pod template of a Job.
pod_spec := input.review.object.spec if input.review.kind.kind == "Pod"

pod_spec := input.review.object.spec.template.spec if input.review.kind.kind == "Job"

containers contains c if some c in pod_spec.containers

containers contains c if some c in pod_spec.initContainers

gpu_resource(name) if {
	some prefix in data.mlguard.config.gpu.resources
	startswith(name, prefix)
}

# Resource names a container requests or limits that are GPUs.
gpus(c) := {name |
	some section in ["requests", "limits"]
	some name, _ in object.get(c, ["resources", section], {})
	gpu_resource(name)
}

gpu_workload if {
	some c in containers
	count(gpus(c)) > 0
}
