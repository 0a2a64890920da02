# Helpers every default policy shares: what is under review, which of its containers use GPUs,
# and how much of a resource a pod asks for. Policies import it as data.mlguard.lib.workload.
package mlguard.lib.workload

import rego.v1

gpu_config := data.mlguard.config.gpu

jobs_config := data.mlguard.config.jobs

kind := input.review.kind.kind

obj := input.review.object

# A review without a namespace (a cluster-scoped object, or a forged review) still names its
# subject: a message must never be what makes a check undefined.
namespace := object.get(input.review, "namespace", "")

is_pod if kind == "Pod"

creating if input.review.operation == "CREATE"

# What the validating policies find refuses a CREATE. An UPDATE of a workload that exists
# already is never refused (a replica change must not be blocked, least of all one that lowers
# the demand): its findings are warnings, said at apply time. An UPDATE of a Pod is not judged
# at all: what the policies read of a Pod cannot change after it is created.
updating_workload if {
	input.review.operation == "UPDATE"
	is_workload
}

# The pod templates under review, each {name, subject, metadata, spec, pods, gang_pods}: a Pod
# is its own one template; a workload kind has the templates the kinds table finds
# (lib_kinds.rego). Every per-pod check runs on each of them.
templates := [{"name": "", "subject": subject, "metadata": object.get(obj, "metadata", {}), "spec": obj.spec, "pods": 1, "gang_pods": 1}] if {
	is_pod
} else := workload_templates

# Pods made by a controller have only a generateName when they are admitted.
name := n if {
	n := obj.metadata.name
	n != ""
} else := sprintf("%s*", [obj.metadata.generateName]) if {
	obj.metadata.generateName != ""
} else := "(unnamed)"

# "Pod ml-team/train-0": how every message names the object.
subject := sprintf("%s %s/%s", [kind, namespace, name])

# --- GPU resources -------------------------------------------------------------------------

gpu_patterns contains p if some p in gpu_config.resources

gpu_patterns contains p if {
	some vendor in gpu_config.vendors
	some p in vendor.resources
}

matches(pattern, resource) if {
	not endswith(pattern, "*")
	pattern == resource
}

matches(pattern, resource) if {
	endswith(pattern, "*")
	startswith(resource, trim_suffix(pattern, "*"))
}

# The patterns split once per review into exact names and prefixes, so that checking a
# resource name is a set lookup and a prefix test or two, not a function call per pattern.
gpu_exact_names contains p if {
	some p in gpu_patterns
	not endswith(p, "*")
}

gpu_name_prefixes contains trim_suffix(p, "*") if {
	some p in gpu_patterns
	endswith(p, "*")
}

# An extended resource name (in a container's requests or limits) that is a GPU.
is_extended_gpu(resource) if gpu_exact_names[resource]

is_extended_gpu(resource) if {
	some prefix in gpu_name_prefixes
	startswith(resource, prefix)
}

# A GPU resource: an extended resource, or the devices of a GPU DeviceClass (lib_dra.rego).
is_gpu(resource) if is_extended_gpu(resource)

is_gpu(resource) if {
	is_device_key(resource)
	is_gpu_class(device_class(resource))
}

requests(c) := object.get(c, ["resources", "requests"], {})

limits(c) := object.get(c, ["resources", "limits"], {})

gpu_resources(c) := {r | some r, _ in requests(c); is_extended_gpu(r)} | {r | some r, _ in limits(c); is_extended_gpu(r)}

is_gpu_container(c) if count(gpu_resources(c)) > 0

# Every container and init container of every template, with where it sits (for messages
# and patch paths) and the GPU resources it uses, worked out once per review: policies read
# `entry.gpu` instead of calling gpu_resources again. `entry.gpu` holds the GPU extended
# resources of its requests and limits and the device keys of the GPU claims it uses
# (lib_dra.rego); `entry.extended` only the former, for the checks of requests and limits.
# An array, not a set: a set would compare whole containers on every insert.
containers := [container_entry(ti, t, field, i, c) |
	some ti, t in templates
	some field in ["containers", "initContainers"]
	some i, c in object.get(t.spec, field, [])
] if {
	not any_claims
} else := [claim_user_entry(ti, t, field, i, c) |
	some ti, t in templates
	some field in ["containers", "initContainers"]
	some i, c in object.get(t.spec, field, [])
]

container_entry(ti, t, field, i, c) := {"template": ti, "subject": t.subject, "field": field, "index": i, "container": c, "gpu": extended, "extended": extended} if {
	extended := gpu_resources(c)
}

claim_user_entry(ti, t, field, i, c) := {"template": ti, "subject": t.subject, "field": field, "index": i, "container": c, "gpu": extended | container_claim_keys(ti, c), "extended": extended} if {
	extended := gpu_resources(c)
}

describe(entry) := sprintf("container %q", [entry.container.name]) if entry.field == "containers"

describe(entry) := sprintf("init container %q", [entry.container.name]) if entry.field == "initContainers"

# GPU resources any container of the pod asks for.
pod_gpu_resources contains r if {
	some entry in containers
	some r in entry.gpu
}

# And the GPU devices its claims ask for, used by a container or not: a pod's claims are
# allocated on its node either way.
pod_gpu_resources contains key if {
	any_claims
	some keys in template_claim_keys
	some key in keys
}

is_gpu_workload if count(pod_gpu_resources) > 0

# The vendors whose resources the pod uses.
used_vendors contains vendor if {
	some vendor in gpu_config.vendors
	some r in pod_gpu_resources
	some p in vendor.resources
	matches(p, r)
}

# A DRA GPU claim's vendor (lib_dra.rego).
used_vendors contains vendor if {
	any_claims
	some vendor in gpu_config.vendors
	some r in pod_gpu_resources
	is_device_key(r)
	vendor_has(vendor, r)
}

# --- Quantities and demand -----------------------------------------------------------------

# A quantity as a number. Manifests may write one as a number or as a string in Kubernetes'
# quantity format; a value neither reads is undefined here, and listed by
# unreadable_gpu_quantities, so that a policy refuses it rather than skip a check.
qty(q) := q if is_number(q)

qty(q) := whole_number(q) if is_string(q)

qty(q) := quantity(q) if {
	is_string(q)
	not whole_number(q)
}

# A whole number written plainly ("8"), as the API server writes most GPU counts: read without
# the grammar below, which costs several times more and would be paid on every container.
whole_number(s) := n if {
	n := to_number(s)
	format_int(n, 10) == s
}

# Kubernetes quantities ("8", "500m", "16Gi", "2k", "1e3"), by the grammar of apimachinery's
# resource.Quantity, as mlguard's Rust reader (src/cluster/quantity.rs) reads them, white space
# around them ignored:
# a signed number (digits, with an optional decimal point) and a suffix, one of the decimal
# SI suffixes n u m k M G T P E, the binary ones Ki Mi Gi Ti Pi Ei, or an exponent e3, E-2.
quantity_grammar := `^([+-]?)([0-9]+\.?[0-9]*|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$`

quantity(s) := capped((sign_of(parts[1]) * mantissa(parts[2])) * quantity_multiplier(parts[3]), parts[3]) / quantity_divisor(parts[3]) if {
	parts := regex.find_all_string_submatch_n(quantity_grammar, trim_space(s), 1)[0]
}

# Zero is zero at any scale ("0E123456").
quantity(s) := 0 if {
	parts := regex.find_all_string_submatch_n(quantity_grammar, trim_space(s), 1)[0]
	mantissa(parts[2]) == 0
}

# Binary-suffixed quantities are capped at 2^63-1, as apimachinery caps them.
capped(v, suffix) := v if not binary_suffixes[suffix]

capped(v, suffix) := max_binary if {
	binary_suffixes[suffix]
	v > max_binary
}

capped(v, suffix) := 0 - max_binary if {
	binary_suffixes[suffix]
	v < 0 - max_binary
}

capped(v, suffix) := v if {
	binary_suffixes[suffix]
	v <= max_binary
	v >= 0 - max_binary
}

max_binary := 9223372036854775807

binary_suffixes := {"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}

sign_of("-") := -1

sign_of(s) := 1 if s != "-"

# "1." and ".5" as numbers every Rego engine reads.
mantissa(n) := to_number(sprintf("%s.%s", [digits_or_zero(whole), digits_or_zero(fraction)])) if {
	[whole, fraction] := split(n, ".")
}

mantissa(n) := to_number(n) if not contains(n, ".")

digits_or_zero("") := "0"

digits_or_zero(d) := d if d != ""

# A suffix scales by a whole multiplier or divisor (division keeps 5u exactly 0.000005 on
# engines that compute in binary floating point).
quantity_multipliers := {
	"": 1, "k": 1000, "M": 1000000, "G": 1000000000, "T": 1000000000000,
	"P": 1000000000000000, "E": 1000000000000000000,
	"Ki": 1024, "Mi": 1048576, "Gi": 1073741824, "Ti": 1099511627776,
	"Pi": 1125899906842624, "Ei": 1152921504606846976,
}

quantity_divisors := {"n": 1000000000, "u": 1000000, "m": 1000}

quantity_multiplier(suffix) := quantity_multipliers[suffix]

quantity_multiplier(suffix) := 1 if quantity_divisors[suffix]

quantity_multiplier(suffix) := power_of_ten(exponent(suffix)) if exponent(suffix) >= 0

quantity_multiplier(suffix) := 1 if exponent(suffix) < 0

quantity_divisor(suffix) := quantity_divisors[suffix]

quantity_divisor(suffix) := 1 if quantity_multipliers[suffix]

quantity_divisor(suffix) := 1 if exponent(suffix) >= 0

quantity_divisor(suffix) := power_of_ten(0 - exponent(suffix)) if exponent(suffix) < 0

# The exponent of a suffix such as e3 or E-2.
exponent(suffix) := to_number(trim_prefix(substring(suffix, 1, -1), "+")) if {
	not quantity_multipliers[suffix]
	not quantity_divisors[suffix]
}

# 10 to a power, up to what a 64-bit float holds (as the Rust reader); beyond, unreadable.
power_of_ten(0) := 1

power_of_ten(e) := product([10 | some _ in numbers.range(1, e)]) if {
	e > 0
	e <= 308
}

# GPU requests and limits of the pod that are not quantities, each as
# `Pod ml/x: container "x" limits nvidia.com/gpu: "1x"`.
unreadable_gpu_quantities contains sprintf("%s: %s %s %s: %v", [entry.subject, describe(entry), field, r, q]) if {
	some entry in containers
	some r in entry.gpu
	some field in ["requests", "limits"]
	q := entry.container.resources[field][r]
	not qty(q)
}

# What a container asks for. Where only the limit is set, the API server defaults the request
# to it (on Pods at creation; a Job's pods get the same when the Job creates them).
request(c, r) := qty(requests(c)[r])

request(c, r) := qty(limits(c)[r]) if not requests(c)[r]

request(c, r) := 0 if {
	not requests(c)[r]
	not limits(c)[r]
}

limit(c, r) := qty(limits(c)[r])

limit(c, r) := 0 if not limits(c)[r]

amount(c, r, "requests") := request(c, r)

amount(c, r, "limits") := limit(c, r)

init_containers(spec) := object.get(spec, "initContainers", [])

# A sidecar is an init container that keeps running next to the containers.
sidecar(c) := true if c.restartPolicy == "Always"

sidecar(c) := false if not c.restartPolicy == "Always"

# GPU resources each template's pods are charged for by ResourceQuota, by template index:
# what its containers ask for, the devices of the claims made from its ResourceClaimTemplates,
# and, where a DeviceClass stands for an extended resource (KEP-5004), the other name of the
# same devices: ResourceQuota keeps `requests.nvidia.com/gpu` and
# `gpu.nvidia.com.deviceclass.resource.k8s.io/devices` equal, so both count the pod's GPUs.
template_gpu_resources[ti] := rs if {
	not any_claims
	count(mapped_resources) == 0
	some ti, _ in templates
	rs := template_extended[ti]
}

template_gpu_resources[ti] := rs | linked if {
	dra_in_play
	some ti, _ in templates
	rs := template_extended[ti] | object.keys(template_claim_quota[ti])
	linked := {other | some r in rs; some other in linked_names(r)}
}

# Claims, or a DeviceClass that stands for an extended resource: DRA changes the counts.
dra_in_play if any_claims

dra_in_play if count(mapped_resources) > 0

# The GPU extended resources each template's containers ask for.
template_extended[ti] := {r | some entry in containers; entry.template == ti; some r in entry.extended} if {
	some ti, _ in templates
}

linked_names(r) := {device_key(class) | some class in mapped_classes(r)} if not is_device_key(r)

linked_names(key) := {e | e := mapped_resource(device_class(key))} if is_device_key(key)

# The demand of one pod of each template for each GPU resource it uses, by field ("requests",
# "limits"): template_gpu_demand[ti][field][r]. Worked out once per review: a rule's value is
# computed once, a function's on every call, and a pod of hundreds of containers makes each
# call cost.
template_gpu_demand[ti] := per_field if {
	some ti, t in templates
	per_field := {field: per_resource |
		some field in ["requests", "limits"]
		per_resource := {r: d | some r in template_gpu_resources[ti]; d := resource_demand(ti, t, r, field)}
	}
}

# A pod's demand of r: what its containers ask for plus the devices of its new claims, each
# counted once under both names of a DeviceClass that stands for an extended resource.
resource_demand(ti, t, r, field) := demand(t.spec, r, field) if {
	not dra_in_play
}

resource_demand(ti, t, r, field) := demand(t.spec, r, field) + sum([object.get(template_claim_quota[ti], key, 0) | some key in linked_names(r)]) if {
	dra_in_play
	not is_device_key(r)
}

resource_demand(ti, t, key, field) := object.get(template_claim_quota[ti], key, 0) + sum([demand(t.spec, e, field) | some e in linked_names(key)]) if {
	dra_in_play
	is_device_key(key)
}

# What one pod of each template needs of one node, by resource: the GPU extended resources
# its containers request, and the devices of all its claims (shared ones too, allocationMode
# All as the most one node offers). Nodes offer extended resources that a DeviceClass stands
# for from ResourceSlices too (their allocatable, src/cluster/dra.rs), so each name is
# checked against its own figure and nothing is counted twice.
template_capacity_demand[ti] := extended_capacity_demand(ti, t) if {
	not any_claims
	some ti, t in templates
}

template_capacity_demand[ti] := object.union(extended_capacity_demand(ti, t), template_claim_capacity[ti]) if {
	any_claims
	some ti, t in templates
}

extended_capacity_demand(ti, t) := {r: demand(t.spec, r, "requests") | some r in template_extended[ti]}

# The demand of the Pod under review.
pod_gpu_demand := template_gpu_demand[0] if is_pod

# What a pod needs of resource r at once, as the scheduler and ResourceQuota count it: the
# containers and sidecars together, or the largest init container plus the sidecars started
# before it, whichever is more.
demand(spec, r, field) := max({running_demand(spec, r, field), init_demand(spec, r, field)})

running_demand(spec, r, field) := sum([amount(c, r, field) | some c in object.get(spec, "containers", [])]) + sum([amount(c, r, field) |
	some c in init_containers(spec)
	sidecar(c)
])

# An init container that does not use r adds nothing to the sidecars before it, which the
# running demand counts already; so only the init containers that use r are looked at, in
# order. Rego has no running sum: the sidecars before each one are summed by the `sum` and
# `array.slice` builtins, so the policy's own loop stays linear in the init containers.
init_demand(spec, r, field) := max(peaks) if {
	users := [[sidecar(c), a] |
		some c in init_containers(spec)
		a := amount(c, r, field)
		a > 0
	]
	sidecar_amounts := [sidecar_amount | some [is_sidecar, a] in users; sidecar_amount := sidecar_share(is_sidecar, a)]
	peaks := {peak |
		some position, [false, a] in users
		peak := a + sum(array.slice(sidecar_amounts, 0, position))
	}
	count(peaks) > 0
} else := 0

sidecar_share(true, a) := a

sidecar_share(false, _) := 0

# --- Lifecycle ------------------------------------------------------------------------------

# The longest activeDeadlineSeconds allowed in the namespace: its annotation, else its entry
# in the configuration, else the cluster-wide maximum.
annotated_deadline := to_number(data.mlguard.cluster.namespaces[namespace].annotations[jobs_config.max_deadline_annotation])

configured_deadline := jobs_config.namespace_max_active_deadline_seconds[namespace]

max_deadline := annotated_deadline

max_deadline := configured_deadline if not annotated_deadline

max_deadline := jobs_config.max_active_deadline_seconds if {
	not annotated_deadline
	not configured_deadline
}
