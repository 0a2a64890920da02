# GPU runtime class: where the cluster runs GPU containers through a RuntimeClass (the GPU
# operator's `nvidia`), GPU Pods that set no runtimeClassName get playbook.runtime_class.name.
# Off by default (`enabled: false`). Only Pods are mutated (workload pod templates never are).
#
# The API server's RuntimeClass admission plugin runs before the webhooks and, when it runs
# again, refuses a Pod whose overhead differs from its RuntimeClass's: a class with
# spec.overhead needs that overhead in playbook.runtime_class.overhead, which is set with it.
package mlguard.policies.gpu_runtime_class

import data.mlguard.lib.playbook.settings
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.is_gpu_workload
import data.mlguard.lib.workload.is_pod
import data.mlguard.lib.workload.obj
import rego.v1

cfg := settings.runtime_class

applies if {
	creating
	is_pod
	is_gpu_workload
	object.get(obj.spec, "runtimeClassName", "") == ""
	cfg.name != ""
}

patch contains {"op": "add", "path": "/spec/runtimeClassName", "value": cfg.name} if applies

patch contains {"op": "add", "path": "/spec/overhead", "value": cfg.overhead} if {
	applies
	is_object(cfg.overhead)
}
