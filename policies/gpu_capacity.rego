# A pod that asks for more of a GPU resource than any schedulable node offers stays Pending
# forever; so does a gang that needs more than the whole cluster has. Checked against the
# nodes in data.mlguard.cluster, for a Pod and for every pod template of a workload; skipped
# when no nodes are known. With the product annotation on a pod (or a pod template), only
# nodes of the requested GPU models count. Node shapes a cluster autoscaler can add, which do
# not exist yet, are listed in data.mlguard.config.gpu.autoscaler_node_shapes ({labels,
# allocatable, max_count} each) and count as nodes; a shape without max_count makes the
# cluster's total unbounded for what it offers.
package mlguard.policies.gpu_capacity

import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.device_class
import data.mlguard.lib.workload.gang_need
import data.mlguard.lib.workload.gpu_config
import data.mlguard.lib.workload.is_gang
import data.mlguard.lib.workload.is_workload
import data.mlguard.lib.workload.pod_gpu_resources
import data.mlguard.lib.workload.qty
import data.mlguard.lib.workload.subject
import data.mlguard.lib.workload.all_mode_keys
import data.mlguard.lib.workload.capacity_known
import data.mlguard.lib.workload.capacity_origin
import data.mlguard.lib.workload.is_device_key
import data.mlguard.lib.workload.template_capacity_demand
import data.mlguard.lib.workload.templates
import data.mlguard.lib.workload.vendor_has
import data.mlguard.lib.workload.updating_workload
import rego.v1

cluster := data.mlguard.cluster

known if object.get(cluster, "node_count", 0) > 0

# The GPU models each template's pods are narrowed to by the product annotation, worked out
# once per template (a rule, not a function: a function is evaluated again on every call).
template_products[ti] := models if {
	some ti, t in templates
	models := {trim_space(p) |
		some p in split(object.get(t.metadata, ["annotations", gpu_config.product_annotation], ""), ",")
		trim_space(p) != ""
	}
}

no_products(ti) if count(template_products[ti]) == 0

shapes := object.get(gpu_config, "autoscaler_node_shapes", [])

# The most of resource r any one node offers, among the nodes a template's pods may use.
largest(ti, r) := max({object.get(cluster.largest_allocatable, r, 0), shape_largest(ti, r)}) if no_products(ti)

largest(ti, r) := max({existing_largest(ti, r), shape_largest(ti, r)}) if not no_products(ti)

existing_largest(ti, r) := max({0} | {object.get(node.allocatable, r, 0) |
	some node in cluster.nodes
	not node.unschedulable
	of_requested_model(ti, r, node)
})

shape_largest(ti, r) := max({0} | {qty(object.get(shape.allocatable, r, 0)) |
	some shape in shapes
	of_requested_model(ti, r, shape)
})

of_requested_model(ti, _, _) if no_products(ti)

# A node is of a requested model when the product label of the vendor of resource r names one.
of_requested_model(ti, r, node) if {
	not no_products(ti)
	some vendor in gpu_config.vendors
	vendor_has(vendor, r)
	object.get(node, ["labels", vendor.product_label], "") in template_products[ti]
}

where(ti) := "" if no_products(ti)

where(ti) := sprintf(" with GPU model %s", [concat(" or ", template_products[ti])]) if not no_products(ti)

findings contains msg if {
	known
	some ti, t in templates
	some r, asked in template_capacity_demand[ti]
	counted(r)
	most := largest(ti, r)
	most > 0
	asked > most
	msg := sprintf(
		"%s asks for %v %s in one pod%s, but the largest schedulable node%s offers %v; it would stay Pending forever: ask for at most %v per pod and spread the work over more pods",
		[t.subject, asked, r, capacity_origin(ti, r), where(ti), most, most],
	)
}

# No node offers the resource at all: "ask for at most 0" would be no advice.
findings contains msg if {
	known
	some ti, t in templates
	some r, asked in template_capacity_demand[ti]
	asked > 0
	counted(r)
	largest(ti, r) <= 0
	msg := sprintf(
		"%s asks for %v %s%s, but no schedulable node%s offers %s; it would stay Pending forever: ask for a GPU resource the cluster's nodes offer, or ask a cluster admin for nodes with %s",
		[t.subject, asked, r, capacity_origin(ti, r), where(ti), r, r],
	)
}

# --- Gangs: the whole cluster --------------------------------------------------------------

# What all schedulable nodes offer of r, and what the autoscaler can add; undefined when a
# shape that offers r has no max_count (the autoscaler can add any number). Models named by
# a product annotation are not taken into account here: the largest-node check above is.
cluster_total(r) := existing + added if {
	existing := sum([object.get(node.allocatable, r, 0) | some node in cluster.nodes; not node.unschedulable])
	unbounded := [s | some s in shapes; qty(object.get(s.allocatable, r, 0)) > 0; not is_number(s.max_count)]
	count(unbounded) == 0
	added := sum([(qty(object.get(s.allocatable, r, 0)) * s.max_count) | some s in shapes; is_number(s.max_count)])
}

all_templates := numbers.range(0, count(templates) - 1)

findings contains msg if {
	known
	is_workload
	is_gang
	some r in pod_gpu_resources
	countable_in_total(r)
	need := gang_need("requests", r, all_templates)
	total := cluster_total(r)
	need.amount > total
	msg := sprintf(
		"%s needs %v %s at once (%s), but the schedulable nodes have %v in all%s; it can never run: make the gang smaller or ask a cluster admin for more GPU nodes",
		[subject, need.amount, r, need.breakdown, total, autoscaler_note],
	)
}

# Whether the nodes' figure of r is known: every extended resource (a node without it offers
# none), and the devices of a DeviceClass whose selectors mlguard could evaluate on the
# ResourceSlices. A class it could not evaluate has no figure, and is not checked here
# (gpu_claims says so).
counted(r) if not is_device_key(r)

counted(r) if {
	is_device_key(r)
	capacity_known(device_class(r))
}

# Devices in allocationMode All are as many as a node has: a cluster total says nothing of them.
countable_in_total(r) if not is_device_key(r)

countable_in_total(r) if {
	counted(r)
	is_device_key(r)
	count([ti | some ti, keys in all_mode_keys; r in keys]) == 0
}

autoscaler_note := "" if count(shapes) == 0

autoscaler_note := ", counting the nodes the autoscaler can add" if count(shapes) > 0

deny contains msg if {
	creating
	some msg in findings
}

warn contains msg if {
	updating_workload
	some msg in findings
}
