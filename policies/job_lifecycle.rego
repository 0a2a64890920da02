# Finished Jobs and their pods pile up until someone deletes them, and a hung GPU Job holds
# its GPUs forever. Every workload kind whose table entry (workloads.kinds in config.yaml)
# names lifecycle fields gets ttlSecondsAfterFinished, and GPU workloads an
# activeDeadlineSeconds, when they set none: Jobs, the Kubeflow jobs' runPolicy, JobSets,
# RayJobs. Values the user set are never changed; workloads another workload kind owns (a
# CronJob's Jobs, a JobSet's Jobs) are left to their owner, which carries the policy.
package mlguard.policies.job_lifecycle

import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.is_gpu_workload
import data.mlguard.lib.workload.jobs_config
import data.mlguard.lib.workload.lifecycle_field
import data.mlguard.lib.workload.max_deadline
import data.mlguard.lib.workload.owned_by_workload
import data.mlguard.lib.workload.subject
import rego.v1

cfg := jobs_config

# The kind's field is looked up first: for a Pod, or a kind without the field, nothing else
# is worked out.
patch contains {"op": "add", "path": field.pointer, "value": cfg.ttl_seconds_after_finished} if {
	field := lifecycle_field.ttl_seconds_after_finished
	field.unset == true
	field.settable == true
	creating
	is_number(cfg.ttl_seconds_after_finished)
	not owned_by_workload
}

# The default deadline never exceeds what the namespace allows.
default_deadline := {"field": field, "value": deadline} if {
	field := lifecycle_field.active_deadline_seconds
	field.unset == true
	field.settable == true
	creating
	is_number(cfg.active_deadline_seconds)
	is_gpu_workload
	not owned_by_workload
	deadline := min({cfg.active_deadline_seconds, max_deadline})
}

patch contains {"op": "add", "path": default_deadline.field.pointer, "value": default_deadline.value}

# A deadline changes how the workload runs: a training run longer than it is stopped, with no
# other word to its owner. So the mutation says so (in the answer of the mutating webhook;
# kubectl prints it). The TTL is not worth a warning: it only deletes what has finished.
warn contains sprintf(
	"mlguard set %s=%v (%s) on %s; set it yourself to choose another",
	[default_deadline.field.path, default_deadline.value, duration(default_deadline.value), subject],
)

duration(s) := sprintf("%v days", [s / 86400]) if {
	s % 86400 == 0
	s != 86400
}

duration(86400) := "1 day"

duration(s) := sprintf("%v hours", [s / 3600]) if {
	s % 86400 != 0
	s % 3600 == 0
	s != 3600
}

duration(3600) := "1 hour"

duration(s) := sprintf("%v seconds", [s]) if s % 3600 != 0
