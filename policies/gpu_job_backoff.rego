# Retries cost GPU hours: a GPU Job (or a CronJob's Job template) whose backoffLimit is above
# playbook.max_backoff_limit (default 3) is warned; set the action to deny to enforce.
# Kubernetes defaults backoffLimit to 6 before webhooks see the Job, so an unset backoffLimit
# is 6 here too and cannot be told apart from a 6 written by hand.
package mlguard.policies.gpu_job_backoff

import data.mlguard.lib.playbook.settings
import data.mlguard.lib.workload.is_gpu_workload
import data.mlguard.lib.workload.kind
import data.mlguard.lib.workload.obj
import data.mlguard.lib.workload.subject
import rego.v1

job_spec := obj.spec if kind == "Job"

job_spec := obj.spec.jobTemplate.spec if kind == "CronJob"

field := "spec.backoffLimit" if kind == "Job"

field := "spec.jobTemplate.spec.backoffLimit" if kind == "CronJob"

deny contains msg if {
	is_gpu_workload
	limit := object.get(job_spec, "backoffLimit", 6)
	is_number(limit)
	most := settings.max_backoff_limit
	limit > most
	msg := sprintf(
		"%s: %s is %v%s, above the %v retries a GPU Job may take here; each retry runs the pods again on GPUs: set %s to %v or less (a failure that repeats is rarely fixed by a retry)",
		[subject, field, limit, unset_note, most, field, most],
	)
}

unset_note := " (Kubernetes' default when it is unset)" if not is_number(job_spec.backoffLimit)

unset_note := "" if is_number(job_spec.backoffLimit)
