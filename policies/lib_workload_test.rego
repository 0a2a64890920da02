# Unit tests of the shared helpers, run by `mlguard test` (and by OPA's `opa test`).
package mlguard.lib.workload_test

import data.mlguard.lib.workload
import rego.v1

gpu(n) := {"limits": {"nvidia.com/gpu": n}}

test_gpu_resource_patterns if {
	workload.is_gpu("nvidia.com/gpu")
	workload.is_gpu("nvidia.com/mig-3g.40gb")
	workload.is_gpu("gpu.intel.com/i915")
	not workload.is_gpu("nvidia.com/gpu.shared")
	not workload.is_gpu("cpu")
}

test_request_defaults_to_limit if {
	workload.request({"resources": gpu("2")}, "nvidia.com/gpu") == 2
	workload.request({"resources": {"requests": {"nvidia.com/gpu": 3}}}, "nvidia.com/gpu") == 3
	workload.request({}, "nvidia.com/gpu") == 0
}

test_demand_sums_containers if {
	spec := {"containers": [{"resources": gpu("1")}, {"resources": gpu("2")}]}
	workload.demand(spec, "nvidia.com/gpu", "requests") == 3
}

test_demand_takes_the_largest_init_container if {
	spec := {
		"initContainers": [{"resources": gpu("4")}, {"resources": gpu("1")}],
		"containers": [{"resources": gpu("2")}],
	}
	workload.demand(spec, "nvidia.com/gpu", "requests") == 4
}

test_demand_counts_sidecars_with_containers_and_later_init_containers if {
	spec := {
		"initContainers": [
			{"restartPolicy": "Always", "resources": gpu("1")},
			{"resources": gpu("3")},
		],
		"containers": [{"resources": gpu("1")}],
	}
	# the init container runs next to the sidecar started before it: 1 + 3
	workload.demand(spec, "nvidia.com/gpu", "requests") == 4
}

test_job_concurrency if {
	workload.job_concurrency == 2 with input as {"review": {"kind": {"kind": "Job"}, "object": {"spec": {"parallelism": 5, "completions": 2}}}}
	workload.job_concurrency == 5 with input as {"review": {"kind": {"kind": "Job"}, "object": {"spec": {"parallelism": 5}}}}
	workload.job_concurrency == 1 with input as {"review": {"kind": {"kind": "Job"}, "object": {"spec": {}}}}
}

test_subject_names_generated_pods if {
	workload.subject == "Pod ml/train-*" with input as {"review": {"kind": {"kind": "Pod"}, "namespace": "ml", "object": {"metadata": {"generateName": "train-"}}}}
}

# Every suffix of the Kubernetes quantity grammar (tests/quantities.rs holds the Rego and the
# Rust reader to the same answers on a longer list).
test_quantities_every_suffix if {
	workload.quantity("8") == 8
	workload.quantity("1k") == 1000
	workload.quantity("2k") == 2000
	workload.quantity("500m") == 0.5
	workload.quantity("1Ki") == 1024
	workload.quantity("16Gi") == 17179869184
	workload.quantity("1e3") == 1000
	workload.quantity("15e-1") == 1.5
	workload.quantity(".5") == 0.5
	workload.quantity("1.") == 1
	workload.quantity("3M") == 3000000
	workload.quantity("7E") == 7000000000000000000
	workload.quantity("5u") == 0.000005
	workload.quantity("-1") == -1
	workload.quantity(" 2 ") == 2
}

test_quantities_unreadable if {
	not workload.quantity("1x")
	not workload.quantity("1e")
	not workload.quantity("1ki")
	not workload.quantity("")
	not workload.quantity("1 k")
	not workload.quantity("1e400")
}

test_unreadable_gpu_quantities_are_listed if {
	c := {"name": "train", "resources": {"limits": {"nvidia.com/gpu": "1x"}}}
	unreadable := workload.unreadable_gpu_quantities with input as {"review": {
		"kind": {"kind": "Pod"},
		"object": {"spec": {"containers": [c]}},
	}}
	unreadable == {`container "train" limits nvidia.com/gpu: 1x`}
}
