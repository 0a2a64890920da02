# Finished Jobs and their pods pile up until someone deletes them, and a hung GPU Job holds
# its GPUs forever. Jobs get ttlSecondsAfterFinished, and GPU Jobs an activeDeadlineSeconds,
# when they set none. Values the user set are never changed; Jobs a CronJob owns are left to
# the CronJob.
package mlguard.policies.job_lifecycle

import data.mlguard.lib.workload.cron_owned
import data.mlguard.lib.workload.is_gpu_workload
import data.mlguard.lib.workload.is_job
import data.mlguard.lib.workload.jobs_config
import data.mlguard.lib.workload.max_deadline
import data.mlguard.lib.workload.obj
import rego.v1

cfg := jobs_config

unset(field) if object.get(obj.spec, field, null) == null

patch contains {"op": "add", "path": "/spec/ttlSecondsAfterFinished", "value": cfg.ttl_seconds_after_finished} if {
	is_job
	not cron_owned
	unset("ttlSecondsAfterFinished")
	is_number(cfg.ttl_seconds_after_finished)
}

# The default deadline never exceeds what the namespace allows.
patch contains {"op": "add", "path": "/spec/activeDeadlineSeconds", "value": deadline} if {
	is_job
	is_gpu_workload
	not cron_owned
	unset("activeDeadlineSeconds")
	is_number(cfg.active_deadline_seconds)
	deadline := min({cfg.active_deadline_seconds, max_deadline})
}
