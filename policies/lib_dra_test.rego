# Unit tests of the DRA helpers (lib_dra.rego), run by `mlguard test` (and by OPA's `opa test`).
# The quota charges are those of the API server's own tests of its ResourceClaim quota
# evaluator (kubernetes/kubernetes, pkg/quota/v1/evaluator/core/resource_claims_test.go,
# TestResourceClaimEvaluatorUsage), case by case.
package mlguard.lib.dra_test

import data.mlguard.lib.workload
import rego.v1

exact(class, extra) := {"name": "req-0", "exactly": object.union({"deviceClassName": class, "allocationMode": "ExactCount", "count": 1}, extra)}

spec(requests) := {"devices": {"requests": requests}}

prioritized(subrequests) := {"name": "req-0", "firstAvailable": subrequests}

sub(name, class, extra) := object.union({"name": name, "deviceClassName": class, "allocationMode": "ExactCount", "count": 1}, extra)

test_quota_simple if {
	workload.claim_quota(spec([exact("gpu", {})])) == {"gpu": 1}
}

test_quota_many_requests_add_up if {
	r := exact("gpu", {})
	workload.claim_quota(spec([r, r, r, r, r])) == {"gpu": 5}
}

test_quota_count if {
	workload.claim_quota(spec([exact("gpu", {"count": 5})])) == {"gpu": 5}
}

test_quota_all_is_the_largest_allocation if {
	workload.claim_quota(spec([exact("gpu", {"allocationMode": "All"})])) == {"gpu": 32}
}

test_quota_unknown_mode_charges_nothing if {
	workload.claim_quota(spec([exact("gpu", {"allocationMode": "future-mode"})])) == {"gpu": 0}
}

test_quota_admin_access_is_not_exempt if {
	workload.claim_quota(spec([exact("gpu", {"adminAccess": true})])) == {"gpu": 1}
}

test_quota_prioritized_list if {
	workload.claim_quota(spec([prioritized([sub("subreq-0", "gpu", {})])])) == {"gpu": 1}
}

test_quota_prioritized_list_takes_the_largest_alternative if {
	subs := [sub("subreq-0", "gpu", {"count": 2}), sub("subreq-1", "gpu", {})]
	workload.claim_quota(spec([prioritized(subs)])) == {"gpu": 2}
}

test_quota_prioritized_list_with_all if {
	subs := [sub("subreq-0", "gpu", {}), sub("subreq-1", "gpu", {"allocationMode": "All"})]
	workload.claim_quota(spec([prioritized(subs)])) == {"gpu": 32}
}

test_quota_prioritized_list_of_two_classes_charges_each if {
	subs := [sub("subreq-0", "gpu", {}), sub("subreq-1", "tpu", {"allocationMode": "All"})]
	workload.claim_quota(spec([prioritized(subs)])) == {"gpu": 1, "tpu": 32}
}

# Defaults as the API server applies them: ExactCount, count 1.
test_quota_defaults if {
	workload.claim_quota(spec([{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}])) == {"gpu.nvidia.com": 1}
}

# One node's share: All takes what the largest node offers of the class; firstAvailable is
# left to the check that one alternative fits.
test_capacity_counts_all_as_the_largest_node if {
	cluster := {"largest_allocatable": {"gpu.deviceclass.resource.k8s.io/devices": 8}}
	asked := workload.claim_capacity(spec([exact("gpu", {"allocationMode": "All"}), exact("gpu", {"count": 2})])) with data.mlguard.cluster as cluster
	asked == {"gpu": 10}
	workload.claim_capacity(spec([prioritized([sub("a", "gpu", {"count": 16})])])) == {}
}

test_nvidia_classes_are_gpus if {
	workload.is_gpu_class("gpu.nvidia.com")
	workload.is_gpu_class("mig.nvidia.com")
	not workload.is_gpu_class("nic.example.com")
	workload.is_gpu("gpu.nvidia.com.deviceclass.resource.k8s.io/devices")
	not workload.is_gpu("nic.example.com.deviceclass.resource.k8s.io/devices")
}

# A class that stands for a GPU extended resource is a GPU class, whatever its name.
test_a_class_mapped_to_a_gpu_resource_is_a_gpu if {
	cluster := {"dra": {"device_classes": {"accel.example.com": {"extended_resource_name": "nvidia.com/gpu"}}}}
	workload.is_gpu_class("accel.example.com") with data.mlguard.cluster as cluster
	not workload.is_gpu_class("accel.example.com")
}
