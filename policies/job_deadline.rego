# A GPU Job may not reserve its GPUs for longer than its namespace allows. The maximum comes
# from the namespace's annotation (jobs.max_deadline_annotation), else
# jobs.namespace_max_active_deadline_seconds, else jobs.max_active_deadline_seconds.
package mlguard.policies.job_deadline

import data.mlguard.lib.workload
import rego.v1

applies if workload.is_gpu_workload

applies if workload.jobs_config.limit_all_jobs == true

deny contains msg if {
	workload.is_job
	applies
	asked := workload.obj.spec.activeDeadlineSeconds
	is_number(asked)
	asked > workload.max_deadline
	msg := sprintf(
		"%s: activeDeadlineSeconds is %v but namespace %s allows at most %v (%v hours); lower it, or ask a cluster admin to raise the namespace's %s annotation",
		[workload.subject, asked, workload.namespace, workload.max_deadline, round(workload.max_deadline / 3600), workload.jobs_config.max_deadline_annotation],
	)
}
