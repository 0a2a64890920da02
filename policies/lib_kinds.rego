# The workload kinds table (data.mlguard.config.workloads.kinds) read for the object under
# review: its pod templates, how many pods each makes at most at once and in the smallest
# useful group (the gang), and its lifecycle fields. Part of data.mlguard.lib.workload; the
# table's format is described in config.yaml, and mlguard checks it when it loads the policies.
package mlguard.lib.workload

import rego.v1

workloads_config := object.get(data.mlguard.config, "workloads", {})

# The table's entry for the object's kind (kinds are matched by API group and kind; any version).
kind_entry := entry if {
	not is_pod
	some entry in object.get(workloads_config, "kinds", [])
	entry.kind == kind
	object.get(entry, "group", "") == object.get(input.review.kind, "group", "")
}

is_workload if kind_entry

# --- Paths and counts ----------------------------------------------------------------------

# A path is dot-separated keys (`spec.replicas`), read from the item it belongs to: the object
# itself, or one element of a template's `each`. A path that starts with `$.` is read from
# the object even inside an `each` (`$.spec.enableInTreeAutoscaling`).
value_at(path, _) := object.get(obj, split(substring(path, 2, -1), "."), null) if startswith(path, "$.")

value_at(path, item) := object.get(item, split(path, "."), null) if not startswith(path, "$.")

present(path, item) if value_at(path, item) != null

whole_count(v) if {
	is_number(v)
	v >= 0
	v == floor(v)
}

# A count expression is a number; {field: PATH, default: COUNT}, the whole number at PATH or,
# when PATH is unset, the default (no default: unset is an error); {min|max|sum|product:
# [COUNT, ...]}; or {if: PATH, then: COUNT, else: COUNT}, by whether PATH is set to anything
# but false (without else: unset when it is not). Rego has no recursion, so each nesting level
# is its own function, six deep; mlguard refuses deeper expressions when it loads the table.
# Each level is one chain of `else`: the first form that matches decides, and the others are
# not evaluated (a function's separate bodies would all be). A value that is not a whole
# number leaves the count undefined: `workload_errors` says why, and the policies refuse the
# workload rather than guess.
count_of(e, item) := count5(e, item)

count5(e, item) := e if {
	is_number(e)
} else := v if {
	v := value_at(e.field, item)
	whole_count(v)
} else := count4(e["default"], item) if {
	is_string(e.field)
	not present(e.field, item)
} else := min(vs) if {
	vs := [v | some x in e.min; v := count4(x, item)]
	count(vs) == count(e.min)
	count(vs) > 0
} else := max(vs) if {
	vs := [v | some x in e.max; v := count4(x, item)]
	count(vs) == count(e.max)
	count(vs) > 0
} else := sum(vs) if {
	vs := [v | some x in e.sum; v := count4(x, item)]
	count(vs) == count(e.sum)
} else := product(vs) if {
	vs := [v | some x in e.product; v := count4(x, item)]
	count(vs) == count(e.product)
} else := count4(e.then, item) if {
	truthy(e["if"], item)
} else := count4(e["else"], item) if {
	is_string(e["if"])
	not truthy(e["if"], item)
}

count4(e, item) := e if {
	is_number(e)
} else := v if {
	v := value_at(e.field, item)
	whole_count(v)
} else := count3(e["default"], item) if {
	is_string(e.field)
	not present(e.field, item)
} else := min(vs) if {
	vs := [v | some x in e.min; v := count3(x, item)]
	count(vs) == count(e.min)
	count(vs) > 0
} else := max(vs) if {
	vs := [v | some x in e.max; v := count3(x, item)]
	count(vs) == count(e.max)
	count(vs) > 0
} else := sum(vs) if {
	vs := [v | some x in e.sum; v := count3(x, item)]
	count(vs) == count(e.sum)
} else := product(vs) if {
	vs := [v | some x in e.product; v := count3(x, item)]
	count(vs) == count(e.product)
} else := count3(e.then, item) if {
	truthy(e["if"], item)
} else := count3(e["else"], item) if {
	is_string(e["if"])
	not truthy(e["if"], item)
}

count3(e, item) := e if {
	is_number(e)
} else := v if {
	v := value_at(e.field, item)
	whole_count(v)
} else := count2(e["default"], item) if {
	is_string(e.field)
	not present(e.field, item)
} else := min(vs) if {
	vs := [v | some x in e.min; v := count2(x, item)]
	count(vs) == count(e.min)
	count(vs) > 0
} else := max(vs) if {
	vs := [v | some x in e.max; v := count2(x, item)]
	count(vs) == count(e.max)
	count(vs) > 0
} else := sum(vs) if {
	vs := [v | some x in e.sum; v := count2(x, item)]
	count(vs) == count(e.sum)
} else := product(vs) if {
	vs := [v | some x in e.product; v := count2(x, item)]
	count(vs) == count(e.product)
} else := count2(e.then, item) if {
	truthy(e["if"], item)
} else := count2(e["else"], item) if {
	is_string(e["if"])
	not truthy(e["if"], item)
}

count2(e, item) := e if {
	is_number(e)
} else := v if {
	v := value_at(e.field, item)
	whole_count(v)
} else := count1(e["default"], item) if {
	is_string(e.field)
	not present(e.field, item)
} else := min(vs) if {
	vs := [v | some x in e.min; v := count1(x, item)]
	count(vs) == count(e.min)
	count(vs) > 0
} else := max(vs) if {
	vs := [v | some x in e.max; v := count1(x, item)]
	count(vs) == count(e.max)
	count(vs) > 0
} else := sum(vs) if {
	vs := [v | some x in e.sum; v := count1(x, item)]
	count(vs) == count(e.sum)
} else := product(vs) if {
	vs := [v | some x in e.product; v := count1(x, item)]
	count(vs) == count(e.product)
} else := count1(e.then, item) if {
	truthy(e["if"], item)
} else := count1(e["else"], item) if {
	is_string(e["if"])
	not truthy(e["if"], item)
}

count1(e, item) := e if {
	is_number(e)
} else := v if {
	v := value_at(e.field, item)
	whole_count(v)
} else := count0(e["default"], item) if {
	is_string(e.field)
	not present(e.field, item)
} else := min(vs) if {
	vs := [v | some x in e.min; v := count0(x, item)]
	count(vs) == count(e.min)
	count(vs) > 0
} else := max(vs) if {
	vs := [v | some x in e.max; v := count0(x, item)]
	count(vs) == count(e.max)
	count(vs) > 0
} else := sum(vs) if {
	vs := [v | some x in e.sum; v := count0(x, item)]
	count(vs) == count(e.sum)
} else := product(vs) if {
	vs := [v | some x in e.product; v := count0(x, item)]
	count(vs) == count(e.product)
} else := count0(e.then, item) if {
	truthy(e["if"], item)
} else := count0(e["else"], item) if {
	is_string(e["if"])
	not truthy(e["if"], item)
}

# The innermost level: numbers and fields whose default is a number.
count0(e, item) := e if {
	is_number(e)
} else := v if {
	v := value_at(e.field, item)
	whole_count(v)
} else := e["default"] if {
	is_string(e.field)
	not present(e.field, item)
	is_number(e["default"])
}

truthy(path, item) if {
	v := value_at(path, item)
	v != null
	v != false
}

# Every field a count expression reads whose value is set but is not a whole number, as
# `spec.replicas is "three"`.
unreadable_fields(e, item) := {sprintf("%s is %s", [shown(path), json.marshal(v)]) |
	some node in expression_nodes(e)
	path := node.field
	is_string(path)
	v := value_at(path, item)
	v != null
	not whole_count(v)
}

# An expression and every expression nested in it, six levels deep as count_of reads them
# (`walk` would do, but not every Rego engine offers it).
expression_nodes(e) := array.concat(array.concat(array.concat([e], n1), array.concat(n2, n3)), array.concat(array.concat(n4, n5), n6)) if {
	n1 := sub_expressions(e)
	n2 := [k | some x in n1; some k in sub_expressions(x)]
	n3 := [k | some x in n2; some k in sub_expressions(x)]
	n4 := [k | some x in n3; some k in sub_expressions(x)]
	n5 := [k | some x in n4; some k in sub_expressions(x)]
	n6 := [k | some x in n5; some k in sub_expressions(x)]
}

sub_expressions(e) := [] if not is_object(e)

sub_expressions(e) := array.concat(
	[x | some op in ["min", "max", "sum", "product"]; some x in object.get(e, op, [])],
	[x | some key in ["default", "then", "else"]; x := e[key]],
) if is_object(e)

shown(path) := substring(path, 2, -1) if startswith(path, "$.")

shown(path) := path if not startswith(path, "$.")

# --- Templates -----------------------------------------------------------------------------

# The items of a template declaration: the object itself, or each element of the map or list
# at `each`, with the name messages give it.
declared_items(decl) := [{"name": object.get(decl, "name", ""), "item": obj}] if not decl.each

declared_items(decl) := [{"name": k, "item": v} |
	some k, v in value_at(decl.each, obj)
] if is_object(value_at(decl.each, obj))

declared_items(decl) := [{"name": object.get(v, decl.name_field, sprintf("%s[%d]", [decl.each, i])), "item": v} |
	some i, v in value_at(decl.each, obj)
] if is_array(value_at(decl.each, obj))

template_paths(decl) := [decl.template] if is_string(decl.template)

template_paths(decl) := decl.template if is_array(decl.template)

# Every item a template declaration finds, with the path of its pod template (null when none
# of the declared paths is set), worked out once per review.
declared := [{"decl": decl, "name": it.name, "item": it.item, "path": path} |
	some decl in kind_entry.templates
	some it in declared_items(decl)
	path := first_or_null([p | some p in template_paths(decl); present(p, it.item)])
]

first_or_null(list) := list[0] if count(list) > 0

first_or_null(list) := null if count(list) == 0

# Every pod template the object has, in the table's order, with the declaration that found it.
template_items := [{"decl": d.decl, "name": d.name, "item": d.item, "template": value_at(d.path, d.item)} |
	some d in declared
	d.path != null
]

# How many pods each template item makes at most at once, by its index in template_items:
# counted once per review (a rule), since the templates, the gang and the errors all ask.
item_pods[i] := n if {
	some i, ti in template_items
	n := count_of(object.get(ti.decl, "pods", 1), ti.item)
}

# The pod templates of a workload kind: name and subject (for messages), the pod spec, the
# pods it makes at most at once in all, and its pods in one smallest useful group.
workload_templates := [t |
	some i, ti in template_items
	is_object(ti.template.spec)
	pods := item_pods[i]
	t := {
		"name": ti.name,
		"subject": template_subject(ti.name),
		"spec": ti.template.spec,
		"pods": pods,
		"gang_pods": gang_pods(ti.decl, ti.item, pods),
	}
]

template_subject("") := subject

template_subject(name) := sprintf("%s %s", [subject, name]) if name != ""

gang_pods(decl, item, _) := count_of(decl.gang_pods, item) if decl.gang_pods != null

gang_pods(decl, _, pods) := pods if {
	not decl.gang_pods
	is_gang
}

gang_pods(decl, _, _) := 1 if {
	not decl.gang_pods
	not is_gang
}

# What keeps mlguard from reading the workload, each as a message. The policies deny a
# workload with any of them: a template mlguard cannot count is a template it cannot check.
# A count that cannot be evaluated: what it reads that is not a whole number, else the field
# it needs that is unset. Only worked out when a count fails, since walking an expression
# costs more than evaluating it.
workload_errors contains sprintf("%s: %s; mlguard does not admit a workload it cannot count", [template_subject(ti.name), why]) if {
	some i, ti in template_items
	not item_pods[i]
	why := uncounted(object.get(ti.decl, "pods", 1), ti.item)
}

workload_errors contains sprintf("%s: %s; mlguard does not admit a workload it cannot count", [template_subject(ti.name), why]) if {
	some ti in template_items
	e := ti.decl.gang_pods
	not count_of(e, ti.item)
	why := uncounted(e, ti.item)
}

# The kind's gang size and gang condition may be unset (no minAvailable): only a value that
# is set but not a whole number is an error.
workload_errors contains sprintf("%s: %s, not a whole number of pods; mlguard does not admit a workload it cannot count", [subject, what]) if {
	some e in [object.get(kind_entry, "gang_size", 0), object.get(object.get(kind_entry, "gang", {}), "all_at_once", 0)]
	not count_of(e, obj)
	some what in unreadable_fields(e, obj)
}

uncounted(e, item) := sprintf("%s, not a whole number of pods", [concat(", ", unreadable_fields(e, item))]) if {
	count(unreadable_fields(e, item)) > 0
} else := sprintf("its pod count %s reads a field that is unset", [json.marshal(e)])

workload_errors contains sprintf("%s: %s is not a map or a list of replica specs; mlguard reads the pod templates there", [subject, shown(decl.each)]) if {
	some decl in kind_entry.templates
	present(decl.each, obj)
	not is_object(value_at(decl.each, obj))
	not is_array(value_at(decl.each, obj))
}

workload_errors contains sprintf("%s: no %s; mlguard checks the pods a %s makes from its pod templates (an admin can change where it looks in workloads.kinds)", [subject, shown(decl.each), kind]) if {
	some decl in kind_entry.templates
	not decl.optional
	is_string(decl.each)
	not present(decl.each, obj)
}

workload_errors contains sprintf("%s: no pod template at %s; mlguard checks the pods a %s makes from it (an admin can change where it looks in workloads.kinds)", [template_subject(it.name), concat(" or ", [shown(p) | some p in template_paths(decl)]), kind]) if {
	some d in declared
	d.path == null
	not d.decl.optional
	decl := d.decl
	it := d
}

workload_errors contains sprintf("%s: %s is not a pod template (it needs a spec with containers)", [template_subject(ti.name), concat(" or ", [shown(p) | some p in template_paths(ti.decl)])]) if {
	some ti in template_items
	not is_object(ti.template.spec)
}

# --- Gangs ---------------------------------------------------------------------------------

# A workload is a gang when its pods are only useful together. The table says so per kind
# (`gang: true`), or, for Jobs, `gang: {all_at_once: COUNT}`: a gang when all COUNT pods it
# ever runs (its completions) run at once and there is more than one, the pattern of
# distributed training where every index is a rank. The gang annotation overrides either way.
is_gang if gang_annotation == "true"

is_gang if {
	not gang_annotation
	kind_entry.gang == true
}

is_gang if {
	not gang_annotation
	total := count_of(kind_entry.gang.all_at_once, obj)
	total > 1
	at_once := [n | some i, _ in template_items; n := item_pods[i]]
	count(at_once) == count(template_items)
	total == sum(at_once)
}

gang_annotation := lower(obj.metadata.annotations[workloads_config.gang_annotation])

# A gang that is useful with fewer pods than all (Kubeflow's minAvailable, an elastic job's
# minimum): the table's `gang_size` counts them in all.
gang_size := count_of(kind_entry.gang_size, obj) if {
	is_gang
	kind_entry.gang_size
}

queued_by_kueue if obj.metadata.labels[workloads_config.kueue_queue_label]

# Jobs and other workloads made by a workload kind of the table (a CronJob's Jobs, a JobSet's
# Jobs, a RayJob's RayCluster) get their lifecycle from their owner, which was judged whole.
owned_by_workload if {
	some ref in obj.metadata.ownerReferences
	some entry in object.get(workloads_config, "kinds", [])
	ref.kind == entry.kind
	startswith(ref.apiVersion, group_prefix(entry))
}

group_prefix(entry) := "" if object.get(entry, "group", "") == ""

group_prefix(entry) := sprintf("%s/", [entry.group]) if object.get(entry, "group", "") != ""

# Notes the table attaches to a kind's quota messages when a field has a value, e.g. a
# CronJob's concurrencyPolicy Allow.
workload_notes := [note.text |
	some note in object.get(kind_entry, "notes", [])
	object.get(obj, split(note.when.field, "."), note.when["default"]) == note.when.equals
]

# --- Demand of a whole workload ------------------------------------------------------------

# For resource r counted by `field`, one row per template among `tis` (template indexes) whose
# pods use r: the demand of one pod, the pods at once in all, the pods in one gang.
demand_rows(field, r, tis) := [row |
	some ti in tis
	t := templates[ti]
	per_pod := template_gpu_demand[ti][field][r]
	per_pod > 0
	row := {"name": t.name, "per_pod": per_pod, "pods": t.pods, "gang_pods": t.gang_pods}
]

# "Master 1×8 + Worker 3×8": pods × demand per pod, per template.
breakdown(rows, count_key) := concat(" + ", [part |
	some row in rows
	row[count_key] > 0
	part := breakdown_part(row.name, row[count_key], row.per_pod)
])

breakdown_part("", n, per_pod) := sprintf("%v×%v", [n, per_pod])

breakdown_part(name, n, per_pod) := sprintf("%s %v×%v", [name, n, per_pod]) if name != ""

# All the pods the workload runs at once.
total_need(field, r, tis) := {"amount": sum([(row.pods * row.per_pod) | some row in rows]), "pods": sum([row.pods | some row in rows]), "breakdown": breakdown(rows, "pods")} if {
	rows := demand_rows(field, r, tis)
}

# The smallest group of pods that is of any use: a gang's pods, or the gang_size cheapest of
# them when the gang is useful with fewer; for a workload that is no gang, its largest pod.
gang_need(field, r, tis) := {"amount": sum([(row.gang_pods * row.per_pod) | some row in rows]), "breakdown": breakdown(rows, "gang_pods")} if {
	is_gang
	not gang_size
	rows := demand_rows(field, r, tis)
}

gang_need(field, r, tis) := {"amount": sum(taken), "breakdown": sprintf("the %v pods it needs at least, of %s", [size, breakdown(rows, "gang_pods")])} if {
	is_gang
	size := gang_size
	rows := demand_rows(field, r, tis)

	# The cheapest pods first; rows of templates that do not use r cost nothing and count
	# towards the gang size too, so they are taken first.
	free := sum([templates[ti].gang_pods | some ti in tis]) - sum([row.gang_pods | some row in rows])
	cheapest := sort([[row.per_pod, row.gang_pods] | some row in rows])
	counts := [pair[1] | some pair in cheapest]
	taken := [(pair[0] * n_taken) |
		some i, pair in cheapest
		before := free + sum(array.slice(counts, 0, i))
		n_taken := max({0, min({pair[1], size - before})})
	]
}

gang_need(field, r, tis) := {"amount": max([row.per_pod | some row in rows]), "breakdown": "one pod"} if {
	not is_gang
	rows := demand_rows(field, r, tis)
	count(rows) > 0
}

# --- Lifecycle -----------------------------------------------------------------------------

# The kind's lifecycle fields (ttl_seconds_after_finished, active_deadline_seconds), each as
# {path, pointer, value, unset, settable}. `settable` is false where mlguard only checks the
# field (`set_default: false`, e.g. a CronJob's Job template) or where the kind's own
# validation would refuse a value unless another field is true (`when`, e.g. a RayJob's TTL
# needs shutdownAfterJobFinishes).
lifecycle_field := {key: field |
	some key, decl in object.get(kind_entry, "lifecycle", {})
	value := value_at(decl.path, obj)
	field := {
		"path": decl.path,
		"pointer": concat("/", array.concat([""], split(decl.path, "."))),
		"value": value,
		"unset": is_null(value),
		"settable": settable(decl),
	}
}

settable(decl) := true if {
	object.get(decl, "set_default", true) == true
	not decl.when
} else := true if {
	object.get(decl, "set_default", true) == true
	value_at(decl.when, obj) == true
} else := false
