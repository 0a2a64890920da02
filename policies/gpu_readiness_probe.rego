# Model servers say when they are ready: a GPU container of a serving workload
# (playbook.serving_kinds: Deployment, StatefulSet) without a readinessProbe gets traffic
# before its model is loaded. Warned.
package mlguard.policies.gpu_readiness_probe

import data.mlguard.lib.playbook.is_serving
import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.describe
import rego.v1

deny contains msg if {
	is_serving
	some entry in containers
	entry.field == "containers"
	count(entry.gpu) > 0
	not entry.container.readinessProbe
	msg := sprintf(
		"%s: %s serves on %s but has no readinessProbe; requests would reach it before the model is loaded: add a readinessProbe on the server's ready endpoint (e.g. httpGet /v2/health/ready for Triton, /health for TGI or vLLM)",
		[entry.subject, describe(entry), concat(", ", entry.gpu)],
	)
}
