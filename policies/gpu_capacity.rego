# A pod that asks for more of a GPU resource than any schedulable node offers stays Pending
# forever. Checked against the nodes in data.mlguard.cluster; skipped when no nodes are known.
# With the product annotation, only nodes of the requested GPU models count. Node shapes a
# cluster autoscaler can add, which do not exist yet, are listed in
# data.mlguard.config.gpu.autoscaler_node_shapes ({labels, allocatable} each) and count as nodes.
package mlguard.policies.gpu_capacity

import data.mlguard.lib.workload.gpu_config
import data.mlguard.lib.workload.obj
import data.mlguard.lib.workload.pod_gpu_demand
import data.mlguard.lib.workload.pod_gpu_resources
import data.mlguard.lib.workload.qty
import data.mlguard.lib.workload.subject
import data.mlguard.lib.workload.used_vendors
import rego.v1

cluster := data.mlguard.cluster

products := {trim_space(p) |
	some p in split(obj.metadata.annotations[gpu_config.product_annotation], ",")
	trim_space(p) != ""
}

shapes := object.get(gpu_config, "autoscaler_node_shapes", [])

# The most of resource r any one node offers, among the nodes the pod may use.
largest(r) := max({object.get(cluster.largest_allocatable, r, 0), shape_largest(r)}) if count(products) == 0

largest(r) := max({existing_largest(r), shape_largest(r)}) if count(products) > 0

existing_largest(r) := max({0} | {object.get(node.allocatable, r, 0) |
	some node in cluster.nodes
	not node.unschedulable
	of_requested_model(node)
})

shape_largest(r) := max({0} | {qty(object.get(shape.allocatable, r, 0)) |
	some shape in shapes
	of_requested_model(shape)
})

of_requested_model(_) if count(products) == 0

of_requested_model(node) if {
	count(products) > 0
	some vendor in used_vendors
	object.get(node, ["labels", vendor.product_label], "") in products
}

where := "" if count(products) == 0

where := sprintf(" with GPU model %s", [concat(" or ", products)]) if count(products) > 0

deny contains msg if {
	object.get(cluster, "node_count", 0) > 0
	some r in pod_gpu_resources
	asked := pod_gpu_demand.requests[r]
	most := largest(r)
	most > 0
	asked > most
	msg := sprintf(
		"%s asks for %v %s in one pod, but the largest schedulable node%s offers %v; it would stay Pending forever: ask for at most %v per pod and spread the work over more pods",
		[subject, asked, r, where, most, most],
	)
}

# No node offers the resource at all: "ask for at most 0" would be no advice.
deny contains msg if {
	object.get(cluster, "node_count", 0) > 0
	some r in pod_gpu_resources
	asked := pod_gpu_demand.requests[r]
	asked > 0
	largest(r) <= 0
	msg := sprintf(
		"%s asks for %v %s, but no schedulable node%s offers %s; it would stay Pending forever: ask for a GPU resource the cluster's nodes offer, or ask a cluster admin for nodes with %s",
		[subject, asked, r, where, r, r],
	)
}
