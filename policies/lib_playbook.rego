# Helpers of the playbook policies (the practices ML platform teams write runbooks for): their
# settings, which namespaces an admin has marked for a practice, and what a workload is for.
# Policies import it as data.mlguard.lib.playbook.
package mlguard.lib.playbook

import data.mlguard.lib.workload.kind
import data.mlguard.lib.workload.namespace
import rego.v1

# The playbook's settings (config.yaml, `playbook:`). Read as shared data rather than as each
# policy's parameters: policies without parameters are evaluated together in one VM run.
settings := object.get(data.mlguard.config, "playbook", {})

# The namespace's labels, from the cluster state; empty when mlguard does not know the namespace.
namespace_labels := object.get(data.mlguard.cluster, ["namespaces", namespace, "labels"], {})

# A namespace is marked for a practice by name (`namespaces: [...]`) or by a label
# (`namespace_label: {key, value}`; without a value, any value of the key).
marked(marking) if namespace in object.get(marking, "namespaces", [])

marked(marking) if {
	label := marking.namespace_label
	is_object(label)
	namespace_labels[label.key] == label.value
}

marked(marking) if {
	label := marking.namespace_label
	is_object(label)
	not label.value
	namespace_labels[label.key]
}

# How an admin marks namespaces for a practice, for messages.
how_to_mark(section) := sprintf("add it to playbook.%s.namespaces or label the namespace %s=%s", [section, label.key, label.value]) if {
	label := settings[section].namespace_label
	is_object(label)
	label.value
} else := sprintf("add it to playbook.%s.namespaces or label the namespace %s", [section, label.key]) if {
	label := settings[section].namespace_label
	is_object(label)
} else := sprintf("add it to playbook.%s.namespaces", [section])

# Kinds whose pods train (they run to completion) and kinds whose pods serve (they run until
# replaced), by kind name.
is_training if kind in object.get(settings, "training_kinds", [])

is_serving if kind in object.get(settings, "serving_kinds", [])

# Kubernetes' toleration matching: an empty key with Exists tolerates every taint; otherwise
# the key must match and, with Equal (the default operator), the value too. An empty effect
# matches every effect.
tolerates(t, taint) if {
	object.get(t, "key", "") == ""
	t.operator == "Exists"
	effect_matches(t, taint)
}

tolerates(t, taint) if {
	t.key == taint.key
	t.operator == "Exists"
	effect_matches(t, taint)
}

tolerates(t, taint) if {
	t.key == taint.key
	object.get(t, "operator", "Equal") == "Equal"
	object.get(t, "value", "") == object.get(taint, "value", "")
	effect_matches(t, taint)
}

effect_matches(t, _) if object.get(t, "effect", "") == ""

effect_matches(t, taint) if t.effect == object.get(taint, "effect", "")
