# PyTorch data loaders and NCCL exchange data through /dev/shm, which the container runtime
# caps at 64 MiB: multi-worker training then dies with "bus error". Every GPU container that
# has nothing mounted at /dev/shm gets a memory-backed emptyDir there.
package mlguard.policies.gpu_shm

import data.mlguard.lib.workload.containers
import data.mlguard.lib.workload.gpu_config
import data.mlguard.lib.workload.is_pod
import data.mlguard.lib.workload.obj
import rego.v1

volume_name := object.get(gpu_config, ["shm", "volume_name"], "mlguard-dshm")

size_limit := object.get(gpu_config, ["shm", "size_limit"], "")

volume := {"name": volume_name, "emptyDir": {"medium": "Memory"}} if size_limit == ""

volume := {"name": volume_name, "emptyDir": {"medium": "Memory", "sizeLimit": size_limit}} if size_limit != ""

needs_shm contains i if {
	is_pod
	some entry in containers
	entry.field == "containers"
	count(entry.gpu) > 0
	not mounts_dev_shm(entry.container)
	i := entry.index
}

mounts_dev_shm(c) if {
	some m in c.volumeMounts
	trim_suffix(m.mountPath, "/") == "/dev/shm"
}

has_volume if {
	some v in obj.spec.volumes
	v.name == volume_name
}

patch contains {"op": "add", "path": "/spec/volumes/-", "value": volume} if {
	count(needs_shm) > 0
	not has_volume
}

patch contains {"op": "add", "path": sprintf("/spec/containers/%d/volumeMounts/-", [i]), "value": {"name": volume_name, "mountPath": "/dev/shm"}} if {
	some i in needs_shm
}
