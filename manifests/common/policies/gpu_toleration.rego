# GPU nodes are tainted so that only GPU pods land on them. A GPU pod gets a toleration for
# the taint of each GPU vendor it uses, unless one of its tolerations already covers it.
package mlguard.policies.gpu_toleration

import data.mlguard.lib.workload.is_pod
import data.mlguard.lib.workload.obj
import data.mlguard.lib.workload.used_vendors
import rego.v1

patch contains {"op": "add", "path": "/spec/tolerations/-", "value": toleration} if {
	is_pod
	some vendor in used_vendors
	not tolerated(vendor.taint)
	toleration := {"key": vendor.taint.key, "operator": "Exists", "effect": vendor.taint.effect}
}

tolerated(taint) if {
	some t in object.get(obj.spec, "tolerations", [])
	covers(t, taint)
}

# Kubernetes' matching rule: an empty key with Exists tolerates every taint; otherwise the key
# must match and, with Equal (the default operator), the value too. An empty effect matches
# every effect.
covers(t, taint) if {
	object.get(t, "key", "") == ""
	t.operator == "Exists"
	effect_matches(t, taint)
}

covers(t, taint) if {
	t.key == taint.key
	t.operator == "Exists"
	effect_matches(t, taint)
}

covers(t, taint) if {
	t.key == taint.key
	object.get(t, "operator", "Equal") == "Equal"
	object.get(t, "value", "") == object.get(taint, "value", "")
	effect_matches(t, taint)
}

effect_matches(t, _) if object.get(t, "effect", "") == ""

effect_matches(t, taint) if t.effect == taint.effect
