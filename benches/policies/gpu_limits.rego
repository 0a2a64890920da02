package mlguard.policies.gpu_limits

import data.mlguard.lib.gpu.containers
import data.mlguard.lib.gpu.gpus
import rego.v1

deny contains msg if {
	some c in containers
	some name in gpus(c)
	request := object.get(c, ["resources", "requests", name], null)
	limit := object.get(c, ["resources", "limits", name], null)
	request != null
	limit == null
	msg := sprintf("%s %s/%s: container %q requests %s %s but sets no limit for it; set limits.%s = %s",
		[input.review.kind.kind, input.review.namespace, object.get(input.review.object.metadata, "name", "(unnamed)"),
		 c.name, request, name, name, request])
}

deny contains msg if {
	some c in containers
	some name in gpus(c)
	request := c.resources.requests[name]
	limit := c.resources.limits[name]
	request != limit
	msg := sprintf("container %q: %s request %s differs from its limit %s; GPUs cannot be overcommitted",
		[c.name, name, request, limit])
}
