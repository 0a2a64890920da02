# Checkpoints survive the pod: a GPU training workload (playbook.training_kinds) whose GPU
# containers mount no volume that outlives the pod (playbook.checkpoint_volume_types, by
# default a PersistentVolumeClaim, NFS or a CSI volume) keeps its checkpoints on ephemeral
# storage, lost with the node along with days of GPU time. Warned, per pod template.
package mlguard.policies.gpu_checkpoint_volume

import data.mlguard.lib.playbook.is_training
import data.mlguard.lib.playbook.settings
import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.template_gpu_resources
import data.mlguard.lib.workload.templates
import rego.v1

durable_volumes(t) := {v.name |
	some v in object.get(t.spec, "volumes", [])
	some type in settings.checkpoint_volume_types
	v[type]
}

mounts_durable(ti) if {
	durable := durable_volumes(templates[ti])
	some entry in containers
	entry.template == ti
	count(entry.gpu) > 0
	some mount in object.get(entry.container, "volumeMounts", [])
	mount.name in durable
}

deny contains msg if {
	is_training
	some ti, t in templates
	count(template_gpu_resources[ti]) > 0
	not mounts_durable(ti)
	msg := sprintf(
		"%s trains on GPUs but its GPU containers mount no %s; checkpoints written to the container or an emptyDir are lost when the node goes: mount a PersistentVolumeClaim and write checkpoints there",
		[t.subject, concat(" or ", settings.checkpoint_volume_types)],
	)
}
