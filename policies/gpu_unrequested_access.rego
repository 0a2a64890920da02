# GPUs without asking: a container that sets NVIDIA_VISIBLE_DEVICES or
# NVIDIA_DRIVER_CAPABILITIES, or mounts /dev/nvidia* (or /dev) from the host, without
# requesting a GPU resource. On a GPU node the NVIDIA container runtime then hands it GPUs the
# scheduler gave to another pod. Every pod template is checked. What counts is in
# playbook.unrequested_access; node agents that read every GPU by design run as DaemonSets,
# which are exempt by default (exempt_kinds).
package mlguard.policies.gpu_unrequested_access

import data.mlguard.lib.playbook.settings
import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.describe
import data.mlguard.lib.workload.kind
import data.mlguard.lib.workload.matches
import data.mlguard.lib.workload.templates
import data.mlguard.lib.workload.updating_workload
import rego.v1

cfg := settings.unrequested_access

findings contains msg if {
	not kind in cfg.exempt_kinds
	some entry in containers
	count(entry.gpu) == 0
	some env in object.get(entry.container, "env", [])
	env.name in cfg.env
	value := object.get(env, "value", "")
	not value in cfg.allowed_env_values
	msg := sprintf(
		"%s: %s sets %s=%q but requests no GPU; on a GPU node it would use GPUs the scheduler gave to another pod: request the GPUs it uses (resources.limits[\"nvidia.com/gpu\"]) or remove %s",
		[entry.subject, describe(entry), env.name, value, env.name],
	)
}

findings contains msg if {
	not kind in cfg.exempt_kinds
	some entry in containers
	count(entry.gpu) == 0
	some mount in object.get(entry.container, "volumeMounts", [])
	some volume in object.get(templates[entry.template].spec, "volumes", [])
	volume.name == mount.name
	path := volume.hostPath.path
	some pattern in cfg.host_paths
	matches(pattern, path)
	msg := sprintf(
		"%s: %s mounts host path %s (volume %q) but requests no GPU; it could open GPUs the scheduler gave to another pod: request the GPUs it uses and drop the hostPath mount (the device plugin mounts the devices it allocates)",
		[entry.subject, describe(entry), path, volume.name],
	)
}

deny contains msg if {
	creating
	some msg in findings
}

warn contains msg if {
	updating_workload
	some msg in findings
}
