package mlguard.policies.job_ttl

import rego.v1

patch contains op if {
	input.review.kind.kind == "Job"
	not input.review.object.spec.ttlSecondsAfterFinished
	op := {"op": "add", "path": "/spec/ttlSecondsAfterFinished", "value": input.parameters.ttl_seconds}
}
