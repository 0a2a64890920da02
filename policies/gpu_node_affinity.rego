# A GPU pod must land on a GPU node. It gets a required node affinity to the label that marks
# its vendor's GPU nodes, ANDed into every required node selector term it already has (a term
# is an alternative, so each one must require a GPU node), without dropping or duplicating
# anything. A term that already names a GPU label is the user's choice and left alone. The
# product annotation (data.mlguard.config.gpu.product_annotation) narrows to GPU models.
package mlguard.policies.gpu_node_affinity

import data.mlguard.lib.workload.gpu_config
import data.mlguard.lib.workload.is_pod
import data.mlguard.lib.workload.obj
import data.mlguard.lib.workload.used_vendors
import rego.v1

required_path := "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"

required := obj.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution

# The expressions a GPU pod's node must satisfy, in a stable order.
wanted := [expr | some expr in wanted_set]

wanted_set contains {"key": vendor.node_label.key, "operator": "In", "values": [vendor.node_label.value]} if {
	some vendor in used_vendors
}

wanted_set contains {"key": vendor.product_label, "operator": "In", "values": products} if {
	some vendor in used_vendors
	count(products) > 0
}

products := [trim_space(p) |
	some p in split(obj.metadata.annotations[gpu_config.product_annotation], ",")
	trim_space(p) != ""
]

gpu_label_keys contains vendor.node_label.key if some vendor in gpu_config.vendors

gpu_label_keys contains vendor.product_label if some vendor in gpu_config.vendors

names_gpu_label(term) if {
	some expr in object.get(term, "matchExpressions", [])
	expr.key in gpu_label_keys
}

# No required node affinity yet: add one term.
patch contains {"op": "add", "path": required_path, "value": {"nodeSelectorTerms": [{"matchExpressions": wanted}]}} if {
	is_pod
	count(wanted) > 0
	not required.nodeSelectorTerms
}

# Existing terms: AND the GPU expressions into each.
patch contains {"op": "add", "path": sprintf("%s/nodeSelectorTerms/%d/matchExpressions/-", [required_path, i]), "value": expr} if {
	is_pod
	some i, term in required.nodeSelectorTerms
	not names_gpu_label(term)
	some expr in wanted
}
