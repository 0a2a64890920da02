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

job(spec) := {"review": {"kind": {"group": "batch", "kind": "Job"}, "namespace": "ml", "object": {"metadata": {"name": "j"}, "spec": object.union({"template": {"spec": {"containers": [{"name": "c"}]}}}, spec)}}}

# A Job runs min(parallelism, completions) pods at once (the kinds table in config.yaml).
test_job_pods_at_once if {
	workload.templates[0].pods == 2 with input as job({"parallelism": 5, "completions": 2})
	workload.templates[0].pods == 5 with input as job({"parallelism": 5})
	workload.templates[0].pods == 1 with input as job({})
}

test_a_job_is_a_gang_when_every_pod_runs_at_once if {
	workload.is_gang with input as job({"parallelism": 4, "completions": 4})
	not workload.is_gang with input as job({"parallelism": 4, "completions": 16})
	not workload.is_gang with input as job({"parallelism": 4})
	not workload.is_gang with input as job({"parallelism": 1, "completions": 1})
}

test_count_expressions if {
	item := {"a": 3, "b": 4, "on": true, "off": false}
	workload.count_of(7, item) == 7
	workload.count_of({"field": "a"}, item) == 3
	workload.count_of({"field": "missing", "default": 2}, item) == 2
	workload.count_of({"field": "missing", "default": {"field": "b", "default": 1}}, item) == 4
	workload.count_of({"min": [{"field": "a"}, {"field": "b"}]}, item) == 3
	workload.count_of({"max": [{"field": "a"}, 9]}, item) == 9
	workload.count_of({"sum": [{"field": "a"}, -1]}, item) == 2
	workload.count_of({"product": [{"field": "a"}, {"field": "b"}]}, item) == 12
	workload.count_of({"if": "on", "then": 1, "else": 2}, item) == 1
	workload.count_of({"if": "off", "then": 1, "else": 2}, item) == 2
	workload.count_of({"if": "missing", "then": 1, "else": 2}, item) == 2
}

test_count_expressions_refuse_what_is_not_a_whole_number if {
	item := {"s": "three", "neg": -1, "frac": 1.5}
	not workload.count_of({"field": "s"}, item)
	not workload.count_of({"field": "neg"}, item)
	not workload.count_of({"min": [{"field": "frac"}, 2]}, item)
	not workload.count_of({"field": "missing"}, item)
	workload.unreadable_fields({"min": [{"field": "s"}, {"field": "neg"}]}, item) == {`s is "three"`, "neg is -1"}
}

# The cheapest pods of a gang that is useful with fewer than all (minAvailable): 1 Master of
# 0 GPUs, then Workers of 8.
test_a_gang_size_takes_the_cheapest_pods if {
	pytorch := {"review": {"kind": {"group": "kubeflow.org", "kind": "PyTorchJob"}, "namespace": "ml", "object": {
		"metadata": {"name": "p"},
		"spec": {
			"runPolicy": {"schedulingPolicy": {"minAvailable": 3}},
			"pytorchReplicaSpecs": {
				"Master": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c"}]}}},
				"Worker": {"replicas": 4, "template": {"spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 8}}}]}}},
			},
		},
	}}}
	need := workload.gang_need("requests", "nvidia.com/gpu", [0, 1]) with input as pytorch
	need.amount == 16
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

# Unreadable GPU quantities are listed with the container and the value: tests/cases/quantities.yaml
# (through a whole review, as the server evaluates them).
