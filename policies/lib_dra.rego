# GPUs requested through Dynamic Resource Allocation (resource.k8s.io/v1): a pod's
# spec.resourceClaims name a ResourceClaimTemplate (each pod gets its own claim made from it)
# or a ResourceClaim (shared by every pod that names it), whose requests ask for devices of a
# DeviceClass. This file turns them into the same per-resource counts as `resources.limits`,
# under the names ResourceQuota gives them: `<class>.deviceclass.resource.k8s.io/devices`
# (a "device key"). The cluster's claims, templates, classes and per-node devices are in
# data.mlguard.cluster.dra and in the nodes' allocatable (src/cluster/dra.rs).
package mlguard.lib.workload

import rego.v1

dra_config := object.get(gpu_config, "dra", {})

dra := object.get(data.mlguard.cluster, "dra", {})

device_suffix := ".deviceclass.resource.k8s.io/devices"

device_key(class) := concat("", [class, device_suffix])

is_device_key(r) if endswith(r, device_suffix)

device_class(key) := trim_suffix(key, device_suffix) if is_device_key(key)

# Whether any pod template of the object has claims. Most pods have none, and every helper
# below that reads a pod's claims is skipped for them.
any_claims if {
	some t in templates
	count(object.get(t.spec, "resourceClaims", [])) > 0
}

# The extended resources DeviceClasses stand for (KEP-5004).
mapped_resources := {e |
	some c in object.get(dra, "device_classes", {})
	e := c.extended_resource_name
}

# --- Which classes are GPUs -----------------------------------------------------------------

gpu_class_patterns contains p if {
	some vendor in gpu_config.vendors
	some p in object.get(vendor, "device_classes", [])
}

gpu_class_patterns contains p if some p in object.get(dra_config, "device_classes", [])

# The extended resource a DeviceClass stands for (KEP-5004), when it names one.
mapped_resource(class) := dra.device_classes[class].extended_resource_name

# The classes that stand for extended resource r.
mapped_classes(r) := {class |
	some class, c in object.get(dra, "device_classes", {})
	c.extended_resource_name == r
}

is_gpu_class(class) if {
	some p in gpu_class_patterns
	matches(p, class)
}

is_gpu_class(class) if is_extended_gpu(mapped_resource(class))

# A vendor's GPUs: its resource names, its DeviceClasses, and classes that stand for its
# resource names.
vendor_has(vendor, r) if {
	not is_device_key(r)
	some p in vendor.resources
	matches(p, r)
}

vendor_has(vendor, r) if {
	is_device_key(r)
	some p in object.get(vendor, "device_classes", [])
	matches(p, device_class(r))
}

vendor_has(vendor, r) if {
	is_device_key(r)
	e := mapped_resource(device_class(r))
	some p in vendor.resources
	matches(p, e)
}

# --- A claim's requests ---------------------------------------------------------------------

claim_requests(spec) := object.get(spec, ["devices", "requests"], [])

# What one request may be given: its `exactly`, or each alternative of its `firstAvailable`,
# with the API server's defaults (allocationMode ExactCount, count 1).
alternatives(req) := [device_ask(req.exactly)] if is_object(req.exactly)

alternatives(req) := [device_ask(s) | some s in object.get(req, "firstAvailable", [])] if not is_object(object.get(req, "exactly", null))

device_ask(r) := {
	"class": object.get(r, "deviceClassName", ""),
	"mode": object.get(r, "allocationMode", "ExactCount"),
	"count": object.get(r, "count", 1),
	"admin": object.get(r, "adminAccess", false) == true,
}

claim_classes(spec) := {a.class |
	some req in claim_requests(spec)
	some a in alternatives(req)
}

# The classes the request named `name` may take devices of.
request_classes(spec, name) := {a.class |
	some req in claim_requests(spec)
	req.name == name
	some a in alternatives(req)
}

# What ResourceQuota charges a claim, per class, as the API server's evaluator does
# (pkg/quota/v1/evaluator/core/resource_claims.go): ExactCount its count, All the 32 devices
# an allocation holds at most (AllocationResultsMaxSize), an unknown mode nothing; a
# firstAvailable request its largest alternative of each class; the requests add up.
all_mode_quota := 32

quota_charge(a) := a.count if a.mode == "ExactCount"

quota_charge(a) := all_mode_quota if a.mode == "All"

quota_charge(a) := 0 if not a.mode in {"ExactCount", "All"}

claim_quota(spec) := {class: n |
	some class in claim_classes(spec)
	n := sum([largest_charge(req, class) |
		some req in claim_requests(spec)
		class in {a.class | some a in alternatives(req)}
	])
}

largest_charge(req, class) := max([quota_charge(a) | some a in alternatives(req); a.class == class])

# What a claim needs of one node, per class: ExactCount its count, All what the largest node
# offers of the class (All takes every matching device of the node it lands on). A
# firstAvailable request is left out: the scheduler takes whichever alternative fits, and
# `unsatisfiable_requests` checks that one does.
capacity_ask(a) := a.count if a.mode == "ExactCount"

capacity_ask(a) := class_largest(a.class) if a.mode == "All"

capacity_ask(a) := 0 if not a.mode in {"ExactCount", "All"}

class_largest(class) := object.get(data.mlguard.cluster, ["largest_allocatable", device_key(class)], 0)

exact_asks(spec) := [device_ask(req.exactly) |
	some req in claim_requests(spec)
	is_object(req.exactly)
]

claim_capacity(spec) := {class: n |
	asks := exact_asks(spec)
	some class in {a.class | some a in asks}
	n := sum([capacity_ask(a) | some a in asks; a.class == class])
}

# Whether the cluster's ResourceSlices say how many devices of the class a node offers.
capacity_known(class) if dra.capacity[class]

# A firstAvailable request none of whose alternatives fits the largest node.
unsatisfiable_requests(spec) := [req.name |
	some req in claim_requests(spec)
	not is_object(req.exactly)
	alts := alternatives(req)
	count(alts) > 0
	count([a | some a in alts; not too_large(a)]) == 0
]

too_large(a) if {
	a.mode == "ExactCount"
	capacity_known(a.class)
	a.count > class_largest(a.class)
}

# --- The claims of a pod --------------------------------------------------------------------

claim_source(ref) := {"kind": "ResourceClaimTemplate", "name": ref.resourceClaimTemplateName, "shared": false} if {
	is_string(ref.resourceClaimTemplateName)
	not ref.resourceClaimName
}

claim_source(ref) := {"kind": "ResourceClaim", "name": ref.resourceClaimName, "shared": true} if {
	not ref.resourceClaimTemplateName
	is_string(ref.resourceClaimName)
}

claim_collection("ResourceClaimTemplate") := "claim_templates"

claim_collection("ResourceClaim") := "claims"

# Each template's pod claims: {claim (its name in the pod), kind, name, shared, spec, known}.
# A claim the cluster state does not hold has no spec and is `known: false`.
template_claims[ti] := [object.union(src, {"claim": ref.name, "spec": spec, "known": spec != null}) |
	some ref in as_list(object.get(templates[ti].spec, "resourceClaims", []))
	is_object(ref)
	src := claim_source(ref)
	spec := object.get(dra, [claim_collection(src.kind), namespace, src.name, "spec"], null)
] if {
	some ti, _ in templates
}

# GPU devices each new pod of template ti adds to its namespace's quota, by device key: the
# claims made from its templates. A ResourceClaim the pods share was charged once, when it
# was created, and adds nothing.
template_claim_quota[ti] := per_device_key([[class, n] |
	some claim in template_claims[ti]
	claim.known
	not claim.shared
	some class, n in claim_quota(claim.spec)
	is_gpu_class(class)
]) if {
	some ti, _ in templates
}

# GPU devices one pod of template ti needs on its node, by device key: all its claims,
# shared ones too.
template_claim_capacity[ti] := per_device_key([[class, n] |
	some claim in template_claims[ti]
	claim.known
	some class, n in claim_capacity(claim.spec)
	is_gpu_class(class)
]) if {
	some ti, _ in templates
}

# [[class, n], ...] summed per class, by device key.
per_device_key(pairs) := {device_key(class): sum([n | some [c, n] in pairs; c == class]) |
	some [class, _] in pairs
}

# The device keys of the GPU classes any claim of template ti may take devices of.
template_claim_keys[ti] := {device_key(class) |
	some claim in template_claims[ti]
	claim.known
	some class in claim_classes(claim.spec)
	is_gpu_class(class)
} if {
	some ti, _ in templates
}

# The device keys a container reaches through `resources.claims`: a whole claim, or one
# request of it.
container_claim_keys(ti, c) := {device_key(class) |
	some use in as_list(object.get(c, ["resources", "claims"], []))
	is_object(use)
	some claim in template_claims[ti]
	claim.claim == use.name
	claim.known
	some class in used_classes(claim.spec, use)
	is_gpu_class(class)
}

used_classes(spec, use) := request_classes(spec, use.request) if use.request

used_classes(spec, use) := claim_classes(spec) if not use.request

# Whether template ti asks for devices of key in allocationMode All (for messages, and for
# the cluster-total check, which cannot count All).
all_mode_keys[ti] := {device_key(a.class) |
	some claim in template_claims[ti]
	claim.known
	some req in claim_requests(claim.spec)
	some a in alternatives(req)
	a.mode == "All"
} if {
	some ti, _ in templates
}

# Where a pod's quota charge of r comes from, for messages: " (through ResourceClaimTemplate
# x; allocationMode All counts as 32 devices, ...)" for a device key, and what the other name
# of the same devices adds where a DeviceClass stands for an extended resource.
claim_origin(ti, r) := "" if not dra_in_play

claim_origin(ti, r) := concat("", [" (", concat("; ", parts), ")"]) if {
	dra_in_play
	parts := origin_parts(ti, r)
	count(parts) > 0
}

claim_origin(ti, r) := "" if {
	dra_in_play
	count(origin_parts(ti, r)) == 0
}

origin_parts(ti, r) := array.concat(array.concat(claim_parts(ti, r), [all_mode_note(ti, r) | is_device_key(r); key_in_all_mode(ti, r)]), linked_parts(ti, r))

claim_parts(ti, key) := [sprintf("through %s", [concat(", ", names)]) |
	is_device_key(key)
	names := claim_names(ti, key, false)
	count(names) > 0
]

# "ResourceClaimTemplate x", sorted, for the known claims of template ti that may take devices
# of key: the claims made for each pod, and with shared_too the shared ones as well.
claim_names(ti, key, shared_too) := sort({sprintf("%s %s", [claim.kind, claim.name]) |
	some claim in template_claims[ti]
	claim.known
	counted_claim(claim, shared_too)
	key in {device_key(class) | some class in claim_classes(claim.spec)}
})

counted_claim(_, true) := true

counted_claim(claim, false) if not claim.shared

key_in_all_mode(ti, key) if key in all_mode_keys[ti]

all_mode_note(ti, key) := sprintf("allocationMode All counts as %v devices, as the API server's ResourceQuota charges it", [all_mode_quota])

# The devices counted under the other name of the same GPUs.
linked_parts(ti, r) := [sprintf("%v of them asked for as %s, which DeviceClass %s stands for", [n, e, device_class(r)]) |
	some e in linked_names(r)
	n := demand(templates[ti].spec, e, "requests")
	n > 0
] if is_device_key(r)

linked_parts(ti, r) := [sprintf("%v of them through claims of DeviceClass %s, which stands for %s", [n, device_class(key), r]) |
	some key in linked_names(r)
	n := object.get(template_claim_quota[ti], key, 0)
	n > 0
] if not is_device_key(r)

capacity_origin(ti, key) := concat("", [
	" (through ",
	concat(", ", claim_names(ti, key, true)),
	all_mode_capacity_note(ti, key),
	")",
]) if is_device_key(key)

capacity_origin(_, key) := "" if not is_device_key(key)

all_mode_capacity_note(ti, key) := sprintf("; allocationMode All counts as the %v the largest node offers", [class_largest(device_class(key))]) if key_in_all_mode(ti, key)

all_mode_capacity_note(ti, key) := "" if not key_in_all_mode(ti, key)

# Claims the pod names that the cluster state does not hold, as "ResourceClaimTemplate ml/x".
missing_claims contains sprintf("%s: %s %s/%s", [templates[ti].subject, claim.kind, namespace, claim.name]) if {
	any_claims
	some ti, claims in template_claims
	some claim in claims
	not claim.known
}

# --- What cannot be read ----------------------------------------------------------------------

# A claim or a pod's use of claims that mlguard cannot read is refused (by gpu_claims), never
# counted as no devices. The API server's schema refuses most of these before any webhook is
# called; forged reviews and manifests in an audit are not so checked.
claim_spec_errors(spec, what) := errors if {
	requests := object.get(spec, ["devices", "requests"], [])
	not is_array(requests)
	errors := {sprintf("%s: spec.devices.requests is not a list", [what])}
}

claim_spec_errors(spec, what) := {e |
	some i, req in requests
	some e in request_errors(req, sprintf("%s: request %d", [what, i]))
} if {
	requests := object.get(spec, ["devices", "requests"], [])
	is_array(requests)
}

request_errors(req, what) := {sprintf("%s is not an object", [what])} if not is_object(req)

request_errors(req, what) := {sprintf("%s (%v) has neither exactly nor firstAvailable", [what, object.get(req, "name", "")])} if {
	is_object(req)
	not is_object(object.get(req, "exactly", null))
	not is_array(object.get(req, "firstAvailable", null))
}

request_errors(req, what) := ask_errors(req.exactly, sprintf("%s (%v) exactly", [what, object.get(req, "name", "")])) if {
	is_object(req)
	is_object(req.exactly)
}

request_errors(req, what) := {e |
	some j, sub in req.firstAvailable
	some e in ask_errors(sub, sprintf("%s (%v) firstAvailable %d", [what, object.get(req, "name", ""), j]))
} if {
	is_object(req)
	not is_object(object.get(req, "exactly", null))
	is_array(req.firstAvailable)
}

ask_errors(a, what) := {sprintf("%s is not an object", [what])} if not is_object(a)

ask_errors(a, what) := {e |
	some list in [bad_class(a, what), bad_mode(a, what), bad_count(a, what)]
	some e in list
} if is_object(a)

bad_class(a, what) := [sprintf("%s.deviceClassName is not a name: %v", [what, object.get(a, "deviceClassName", null)])] if not is_string(object.get(a, "deviceClassName", null))

bad_class(a, _) := [] if is_string(object.get(a, "deviceClassName", null))

bad_mode(a, what) := [sprintf("%s.allocationMode is not a string: %v", [what, a.allocationMode])] if {
	not is_string(object.get(a, "allocationMode", "ExactCount"))
	a.allocationMode
}

bad_mode(a, _) := [] if is_string(object.get(a, "allocationMode", "ExactCount"))

bad_count(a, what) := [sprintf("%s.count is not a whole number of devices: %v", [what, a.count])] if {
	count_given(a)
	not whole_devices(a.count)
}

bad_count(a, _) := [] if not count_given(a)

bad_count(a, _) := [] if {
	count_given(a)
	whole_devices(a.count)
}

count_given(a) if object.get(a, "count", null) != null

whole_devices(n) if {
	is_number(n)
	n == floor(n)
	n >= 0
}

# A pod template's claims that cannot be read, as "Pod ml/x: spec.resourceClaims ...".
pod_claim_errors contains sprintf("%s: spec.resourceClaims is not a list", [t.subject]) if {
	any_claim_field
	some t in templates
	claims := object.get(t.spec, "resourceClaims", [])
	not is_array(claims)
}

pod_claim_errors contains sprintf("%s: spec.resourceClaims[%d] names neither a resourceClaimName nor a resourceClaimTemplateName (exactly one, a string)", [t.subject, i]) if {
	any_claim_field
	some t in templates
	some i, ref in as_list(object.get(t.spec, "resourceClaims", []))
	not claim_source(ref)
	not both_named(ref)
}

both_named(ref) if {
	is_object(ref)
	ref.resourceClaimTemplateName
	ref.resourceClaimName
}

pod_claim_errors contains sprintf("%s: spec.resourceClaims[%d] names both a resourceClaimName and a resourceClaimTemplateName", [t.subject, i]) if {
	any_claim_field
	some t in templates
	some i, ref in as_list(object.get(t.spec, "resourceClaims", []))
	both_named(ref)
}

pod_claim_errors contains sprintf("%s: %s resources.claims is not a list of {name, request}", [entry.subject, describe(entry)]) if {
	any_claim_field
	some entry in containers
	uses := object.get(entry.container, ["resources", "claims"], [])
	not list_of_named(uses)
}

as_list(x) := x if is_array(x)

as_list(x) := [] if not is_array(x)

list_of_named(uses) if {
	is_array(uses)
	count([u | some u in uses; not is_string(object.get(u, "name", null))]) == 0
}

# Whether any template has spec.resourceClaims at all (a cheap test before the checks above).
# A container's resources.claims without pod claims reaches no device: the API server refuses
# such a pod, and it gets nothing to count.
any_claim_field if {
	some t in templates
	object.get(t.spec, "resourceClaims", null) != null
}
