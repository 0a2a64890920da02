# A GPU workload may not reserve its GPUs for longer than its namespace allows: the
# activeDeadlineSeconds of a Job, of a CronJob's Job template, of a Kubeflow job's runPolicy
# or of a RayJob (wherever the kind's table entry puts it). The maximum comes from the
# namespace's annotation (jobs.max_deadline_annotation), else
# jobs.namespace_max_active_deadline_seconds, else jobs.max_active_deadline_seconds.
package mlguard.policies.job_deadline

import data.mlguard.lib.workload.is_gpu_workload
import data.mlguard.lib.workload.jobs_config
import data.mlguard.lib.workload.lifecycle_field
import data.mlguard.lib.workload.max_deadline
import data.mlguard.lib.workload.namespace
import data.mlguard.lib.workload.subject
import rego.v1

applies if is_gpu_workload

applies if jobs_config.limit_all_jobs == true

deny contains msg if {
	field := lifecycle_field.active_deadline_seconds
	asked := field.value
	is_number(asked)
	applies
	asked > max_deadline
	msg := sprintf(
		"%s: %s is %v but namespace %s allows at most %v (%v hours); lower it, or ask a cluster admin to raise the namespace's %s annotation",
		[subject, field.path, asked, namespace, max_deadline, round(max_deadline / 3600), jobs_config.max_deadline_annotation],
	)
}
