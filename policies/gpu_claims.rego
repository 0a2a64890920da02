# GPU claims of Dynamic Resource Allocation (resource.k8s.io/v1), checked where the pods'
# devices are decided:
#   - a ResourceClaim or ResourceClaimTemplate that asks one node for more devices of a GPU
#     DeviceClass than any node offers (from ResourceSlices) can never be allocated: denied;
#   - `adminAccess: true` on a GPU class gives its pod every device of the class on a node,
#     in use by others or not: denied outside the namespaces gpu.dra.admin_access allows;
#   - a pod (or a workload's pod template) that names a claim or template the cluster state
#     does not hold yet: its devices cannot be counted, so it is warned (or denied, with
#     gpu.dra.missing_claims: deny) instead of silently counted as none;
#   - claims of a class whose device counts mlguard cannot tell (its selectors use what
#     mlguard cannot evaluate) are warned that the node capacity was not checked;
#   - claims and pod claims mlguard cannot read are denied, with the field named.
# The pods' own device counts (quota, largest node, gangs, tolerations) are in the other
# policies, through lib_dra.rego.
package mlguard.policies.gpu_claims

import data.mlguard.lib.workload.alternatives
import data.mlguard.lib.workload.any_claim_field
import data.mlguard.lib.workload.capacity_known
import data.mlguard.lib.workload.claim_capacity
import data.mlguard.lib.workload.claim_classes
import data.mlguard.lib.workload.claim_requests
import data.mlguard.lib.workload.claim_spec_errors
import data.mlguard.lib.workload.class_largest
import data.mlguard.lib.workload.creating
import data.mlguard.lib.workload.device_class
import data.mlguard.lib.workload.dra
import data.mlguard.lib.workload.dra_config
import data.mlguard.lib.workload.is_gpu_class
import data.mlguard.lib.workload.kind
import data.mlguard.lib.workload.missing_claims
import data.mlguard.lib.workload.namespace
import data.mlguard.lib.workload.obj
import data.mlguard.lib.workload.pod_claim_errors
import data.mlguard.lib.workload.subject
import data.mlguard.lib.workload.template_claim_keys
import data.mlguard.lib.workload.unsatisfiable_requests
import data.mlguard.lib.workload.updating_workload
import rego.v1

# What this policy judges: claims and claim templates, and pods and workloads with claims.
# Every rule below starts with it, so that the reviews of everything else (most pods) stop
# at the first line.
applies if is_claim_kind

# A pod or workload template with spec.resourceClaims, readable or not.
applies if any_claim_field

is_claim_kind if {
	input.review.kind.group == "resource.k8s.io"
	kind in {"ResourceClaim", "ResourceClaimTemplate"}
}

# The claim spec under review: a claim's spec, or the spec of the claims a template makes.
claim_spec := obj.spec if kind == "ResourceClaim"

claim_spec := object.get(obj, ["spec", "spec"], {}) if kind == "ResourceClaimTemplate"

# --- Devices no node offers -----------------------------------------------------------------

findings contains msg if {
	is_claim_kind
	some class, asked in claim_capacity(claim_spec)
	is_gpu_class(class)
	capacity_known(class)
	most := class_largest(class)
	asked > most
	msg := sprintf(
		"%s asks for %v devices of DeviceClass %s on one node, but the node that offers most has %v (ResourceSlices); a pod using it would stay Pending forever: ask for at most %v, or split the work over more pods",
		[subject, asked, class, most, most],
	)
}

findings contains msg if {
	is_claim_kind
	some name in unsatisfiable_requests(claim_spec)
	msg := sprintf(
		"%s request %q: none of its firstAvailable alternatives fits on any node (%s); a pod using it would stay Pending forever: add an alternative the cluster's nodes can give",
		[subject, name, concat(", ", sort([sprintf("%v of %s, the largest node has %v", [a.count, a.class, class_largest(a.class)]) |
			some req in claim_requests(claim_spec)
			req.name == name
			some a in alternatives(req)
		]))],
	)
}

# --- Capacity mlguard cannot tell ----------------------------------------------------------

# GPU classes the claims under review (or the pod's claims) take devices of.
claimed_gpu_classes contains class if {
	is_claim_kind
	some class in claim_classes(claim_spec)
	is_gpu_class(class)
}

claimed_gpu_classes contains device_class(key) if {
	not is_claim_kind
	some keys in template_claim_keys
	some key in keys
}

# A class whose selectors mlguard cannot evaluate has no device counts: what its claims ask
# of one node is not checked, and the user is told so rather than nothing.
warn contains msg if {
	applies
	some class in claimed_gpu_classes
	why := dra.unknown_capacity[class]
	msg := sprintf(
		"%s asks for devices of DeviceClass %s, whose devices per node mlguard cannot count (%s); whether a node can hold them is not checked",
		[subject, class, why],
	)
}

# --- What cannot be read -------------------------------------------------------------------

findings contains sprintf("%s; mlguard does not admit a claim it cannot count", [e]) if {
	is_claim_kind
	some e in claim_spec_errors(claim_spec, subject)
}

findings contains sprintf("%s; mlguard does not admit a pod whose claims it cannot read", [e]) if {
	some e in pod_claim_errors
}

# --- Admin access ---------------------------------------------------------------------------

admin_access := object.get(dra_config, "admin_access", {})

admin_allowed if namespace in object.get(admin_access, "namespaces", [])

admin_allowed if {
	label := admin_access.namespace_label
	data.mlguard.cluster.namespaces[namespace].labels[label.key] == label.value
}

findings contains msg if {
	is_claim_kind
	not admin_allowed
	some req in claim_requests(claim_spec)
	req.exactly.adminAccess == true
	is_gpu_class(req.exactly.deviceClassName)
	msg := sprintf(
		"%s request %q asks for adminAccess to DeviceClass %s, which gives its pod every such device on a node, in use by other pods or not; namespace %s may not: a cluster admin allows it with the namespace label %s=%s or in gpu.dra.admin_access.namespaces",
		[subject, req.name, req.exactly.deviceClassName, namespace, object.get(admin_access, ["namespace_label", "key"], "(none)"), object.get(admin_access, ["namespace_label", "value"], "")],
	)
}

# --- Claims not known yet -------------------------------------------------------------------

missing_action := object.get(dra_config, "missing_claims", "warn")

missing_message(what) := sprintf(
	"%s, which mlguard's view of the cluster does not hold yet, so its devices are not counted against quota and node capacity; create the claim or template before the pods that use it%s",
	[what, missing_consequence],
)

missing_consequence := "" if missing_action == "warn"

missing_consequence := ", then create this again" if missing_action != "warn"

deny contains missing_message(what) if {
	applies
	creating
	missing_action != "warn"
	some what in missing_claims
}

warn contains missing_message(what) if {
	applies
	missing_action == "warn"
	some what in missing_claims
}

warn contains missing_message(what) if {
	applies
	updating_workload
	missing_action != "warn"
	some what in missing_claims
}

deny contains msg if {
	applies
	creating
	some msg in findings
}
