//! Dynamic Resource Allocation (resource.k8s.io/v1): DeviceClasses, ResourceClaims,
//! ResourceClaimTemplates and ResourceSlices, as the `dra` entry of `data.mlguard.cluster`:
//!
//! ```text
//! "dra": {
//!   "device_classes":   {class: {"extended_resource_name": name}}   ({} without one)
//!   "claim_templates":  {namespace: {name: {"spec": claim spec}}}
//!   "claims":           {namespace: {name: {"spec": claim spec, "reserved_for": n, "allocated": b}}}
//!   "capacity":         {class: {"largest": n, "total": n, "nodes": n}}
//!   "unknown_capacity": {class: "why"}
//! }
//! ```
//!
//! A claim spec is cut to what policies read (see [`cut_claim_spec`]). Capacity counts, per
//! class and node, the devices of the ResourceSlices that the class's CEL selectors select,
//! evaluated with the `cel` crate in the DRA environment (`device.driver`,
//! `device.attributes`, `device.capacity`, `device.allowMultipleAllocations`). What the crate
//! cannot evaluate (the Kubernetes `quantity` and `semver` libraries) leaves the class's
//! capacity unknown, never zero. [`finish`] also merges the counts into the nodes'
//! allocatable, so that the existing capacity policies see GPUs offered through DRA.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::resource::v1::{
    Device, DeviceAttribute, DeviceCapacity, DeviceClaim, DeviceClass, DeviceRequest,
    DeviceSubRequest, DeviceTaint, ExactDeviceRequest, ResourceClaim, ResourceClaimSpec,
    ResourceClaimStatus, ResourceClaimTemplate, ResourceClaimTemplateSpec, ResourceSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Map, Value as Json};

use super::quantity;

/// The allocatable key under which a node's devices of `class` are merged into its
/// allocatable: the name Kubernetes gives a class's implicit extended resource (KEP-5004).
pub fn class_resource_name(class: &str) -> String {
    format!("{class}.deviceclass.resource.k8s.io/devices")
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceClassInfo {
    pub extended_resource_name: Option<String>,
    /// The `spec.selectors[].cel.expression`s, all of which must hold for a device.
    pub selectors: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimInfo {
    /// The cut spec, as the document shows it.
    pub spec: Json,
    pub reserved_for: usize,
    pub allocated: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCapacity {
    /// The most devices of the class on one schedulable node.
    pub largest: u64,
    /// All devices of the class on schedulable nodes.
    pub total: u64,
    /// Schedulable nodes that offer at least one.
    pub nodes: u64,
}

/// An attribute value as CEL sees it: the one field set in the slice.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    Int(i64),
    Bool(bool),
    String(String),
    Version(String),
    Ints(Vec<i64>),
    Bools(Vec<bool>),
    Strings(Vec<String>),
    Versions(Vec<String>),
}

/// One device of a slice, reduced to what a selector can read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceView {
    pub name: String,
    /// domain -> attribute id -> value.
    pub attributes: BTreeMap<String, BTreeMap<String, Attribute>>,
    /// domain -> capacity id -> quantity as a number.
    pub capacity: BTreeMap<String, BTreeMap<String, f64>>,
    pub allow_multiple_allocations: bool,
    /// A NoSchedule or NoExecute taint: the scheduler does not allocate it.
    pub tainted: bool,
}

/// Where a slice's devices are reachable from.
#[derive(Debug, Clone, PartialEq)]
pub enum Reach {
    Node(String),
    AllNodes,
    /// `spec.nodeSelector` or per-device node selection: left out of capacity, since which
    /// nodes it selects would need node labels matched against selector terms, and the GPU
    /// drivers publish node-local slices. Kept so that its pool generation still counts.
    Elsewhere,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SliceDevices {
    pub driver: String,
    pub pool: String,
    pub generation: i64,
    pub reach: Reach,
    pub devices: Vec<DeviceView>,
}

/// The DRA part of the cluster state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraState {
    pub device_classes: BTreeMap<String, DeviceClassInfo>,
    /// namespace -> name -> cut claim spec.
    pub claim_templates: BTreeMap<String, BTreeMap<String, Json>>,
    pub claims: BTreeMap<String, BTreeMap<String, ClaimInfo>>,
    pub capacity: BTreeMap<String, ClassCapacity>,
    pub unknown_capacity: BTreeMap<String, String>,
    /// Slices added since the last [`finish`], which consumes them: the counts are all the
    /// state keeps of them.
    pub slices: Vec<SliceDevices>,
}

// ---------------------------------------------------------------------------------------
// Cutting objects down to what policies and selectors read
// ---------------------------------------------------------------------------------------

/// Name, namespace, and what a reflector store needs to tell versions apart.
fn cut_metadata(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        resource_version: meta.resource_version.clone(),
        uid: meta.uid.clone(),
        ..Default::default()
    }
}

/// A claim spec with only what policies read: each request's name, and `exactly`
/// (deviceClassName, allocationMode, count, adminAccess) or `firstAvailable` (name,
/// deviceClassName, allocationMode, count). Absent fields stay absent; selectors, config,
/// constraints, tolerations and capacity requests are dropped.
pub fn cut_claim_spec(spec: &ResourceClaimSpec) -> ResourceClaimSpec {
    let cut_request = |r: &DeviceRequest| DeviceRequest {
        name: r.name.clone(),
        exactly: r.exactly.as_ref().map(|e| ExactDeviceRequest {
            device_class_name: e.device_class_name.clone(),
            allocation_mode: e.allocation_mode.clone(),
            count: e.count,
            admin_access: e.admin_access,
            ..Default::default()
        }),
        first_available: r.first_available.as_ref().map(|subs| {
            subs.iter()
                .map(|s| DeviceSubRequest {
                    name: s.name.clone(),
                    device_class_name: s.device_class_name.clone(),
                    allocation_mode: s.allocation_mode.clone(),
                    count: s.count,
                    ..Default::default()
                })
                .collect()
        }),
    };
    ResourceClaimSpec {
        devices: spec.devices.as_ref().map(|d| DeviceClaim {
            requests: d
                .requests
                .as_ref()
                .map(|rs| rs.iter().map(cut_request).collect()),
            ..Default::default()
        }),
    }
}

fn spec_json(spec: Option<&ResourceClaimSpec>) -> Json {
    spec.map(|s| serde_json::to_value(cut_claim_spec(s)).unwrap_or_else(|_| json!({})))
        .unwrap_or_else(|| json!({}))
}

/// For the watch cache: the claim as the state reads it, nothing more.
pub fn strip_claim(claim: &mut ResourceClaim) {
    claim.metadata = cut_metadata(&claim.metadata);
    claim.spec = claim.spec.as_ref().map(cut_claim_spec);
    claim.status = claim.status.as_ref().map(|s| ResourceClaimStatus {
        // Only how many there are and whether there is one are read.
        reserved_for: s
            .reserved_for
            .as_ref()
            .map(|r| vec![Default::default(); r.len()]),
        allocation: s.allocation.as_ref().map(|_| Default::default()),
        ..Default::default()
    });
}

pub fn strip_claim_template(template: &mut ResourceClaimTemplate) {
    template.metadata = cut_metadata(&template.metadata);
    template.spec = template.spec.as_ref().map(|s| ResourceClaimTemplateSpec {
        metadata: None,
        spec: s.spec.as_ref().map(cut_claim_spec),
    });
}

pub fn strip_device_class(class: &mut DeviceClass) {
    class.metadata = cut_metadata(&class.metadata);
    if let Some(spec) = class.spec.as_mut() {
        spec.config = None;
    }
}

/// For the watch cache: a slice keeps its driver, pool, where it reaches, and of each device
/// what a CEL selector can read (name, attributes, capacity values, allowMultipleAllocations)
/// and the taints' effects.
pub fn strip_slice(slice: &mut ResourceSlice) {
    slice.metadata = cut_metadata(&slice.metadata);
    let spec = &mut slice.spec;
    spec.shared_counters = None;
    spec.partition_type_attribute = None;
    spec.skip_node_operations = None;
    if let Some(devices) = spec.devices.as_mut() {
        for device in devices.iter_mut() {
            *device = Device {
                name: std::mem::take(&mut device.name),
                attributes: device.attributes.take(),
                capacity: device.capacity.take().map(|c| {
                    c.into_iter()
                        .map(|(k, v)| {
                            let value = DeviceCapacity {
                                value: v.value,
                                ..Default::default()
                            };
                            (k, value)
                        })
                        .collect()
                }),
                allow_multiple_allocations: device.allow_multiple_allocations,
                taints: device.taints.take().map(|ts| {
                    ts.into_iter()
                        .map(|t| DeviceTaint {
                            effect: t.effect,
                            key: t.key,
                            ..Default::default()
                        })
                        .collect()
                }),
                ..Default::default()
            };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Adding objects
// ---------------------------------------------------------------------------------------

impl DraState {
    pub fn add_device_class(&mut self, class: &DeviceClass) {
        let Some(name) = class.metadata.name.clone() else {
            return;
        };
        let spec = class.spec.as_ref();
        let selectors = spec
            .and_then(|s| s.selectors.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|s| s.cel.as_ref().map(|c| c.expression.clone()))
            .collect();
        self.device_classes.insert(
            name,
            DeviceClassInfo {
                extended_resource_name: spec.and_then(|s| s.extended_resource_name.clone()),
                selectors,
            },
        );
    }

    pub fn add_claim_template(&mut self, template: &ResourceClaimTemplate) {
        let Some(name) = template.metadata.name.clone() else {
            return;
        };
        let namespace = template.metadata.namespace.clone().unwrap_or_default();
        let spec = spec_json(template.spec.as_ref().and_then(|s| s.spec.as_ref()));
        self.claim_templates
            .entry(namespace)
            .or_default()
            .insert(name, spec);
    }

    pub fn add_claim(&mut self, claim: &ResourceClaim) {
        let Some(name) = claim.metadata.name.clone() else {
            return;
        };
        let namespace = claim.metadata.namespace.clone().unwrap_or_default();
        let status = claim.status.as_ref();
        let info = ClaimInfo {
            spec: spec_json(claim.spec.as_ref()),
            reserved_for: status
                .and_then(|s| s.reserved_for.as_ref())
                .map_or(0, Vec::len),
            allocated: status.is_some_and(|s| s.allocation.is_some()),
        };
        self.claims.entry(namespace).or_default().insert(name, info);
    }

    pub fn add_slice(&mut self, slice: &ResourceSlice, problems: &mut Vec<String>) {
        let spec = &slice.spec;
        let slice_name = slice.metadata.name.as_deref().unwrap_or("");
        let reach = if spec.per_device_node_selection == Some(true) || spec.node_selector.is_some()
        {
            Reach::Elsewhere
        } else if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
            Reach::Node(node.clone())
        } else if spec.all_nodes == Some(true) {
            Reach::AllNodes
        } else {
            Reach::Elsewhere
        };
        let devices = match reach {
            Reach::Elsewhere => Vec::new(),
            _ => spec
                .devices
                .iter()
                .flatten()
                .map(|d| device_view(&spec.driver, d, slice_name, problems))
                .collect(),
        };
        self.slices.push(SliceDevices {
            driver: spec.driver.clone(),
            pool: spec.pool.name.clone(),
            generation: spec.pool.generation,
            reach,
            devices,
        });
    }

    /// The `dra` document.
    pub fn to_json(&self) -> Json {
        let classes: Map<String, Json> = self
            .device_classes
            .iter()
            .map(|(name, c)| {
                let doc = match &c.extended_resource_name {
                    Some(e) => json!({"extended_resource_name": e}),
                    None => json!({}),
                };
                (name.clone(), doc)
            })
            .collect();
        let templates: Map<String, Json> = self
            .claim_templates
            .iter()
            .map(|(ns, ts)| {
                let ts: Map<String, Json> = ts
                    .iter()
                    .map(|(name, spec)| (name.clone(), json!({"spec": spec})))
                    .collect();
                (ns.clone(), Json::Object(ts))
            })
            .collect();
        let claims: Map<String, Json> = self
            .claims
            .iter()
            .map(|(ns, cs)| {
                let cs: Map<String, Json> = cs
                    .iter()
                    .map(|(name, c)| {
                        let doc = json!({"spec": c.spec, "reserved_for": c.reserved_for,
                                         "allocated": c.allocated});
                        (name.clone(), doc)
                    })
                    .collect();
                (ns.clone(), Json::Object(cs))
            })
            .collect();
        let capacity: Map<String, Json> = self
            .capacity
            .iter()
            .map(|(name, c)| {
                let doc = json!({"largest": c.largest, "total": c.total, "nodes": c.nodes});
                (name.clone(), doc)
            })
            .collect();
        json!({
            "device_classes": classes,
            "claim_templates": templates,
            "claims": claims,
            "capacity": capacity,
            "unknown_capacity": self.unknown_capacity,
        })
    }
}

/// `example.com/model` is (`example.com`, `model`); a name without a domain belongs to the
/// slice's driver.
fn qualified<'a>(driver: &'a str, name: &'a str) -> (&'a str, &'a str) {
    name.split_once('/').unwrap_or((driver, name))
}

fn attribute(a: &DeviceAttribute) -> Option<Attribute> {
    Some(if let Some(v) = a.int {
        Attribute::Int(v)
    } else if let Some(v) = a.bool {
        Attribute::Bool(v)
    } else if let Some(v) = &a.string {
        Attribute::String(v.clone())
    } else if let Some(v) = &a.version {
        Attribute::Version(v.clone())
    } else if let Some(v) = &a.ints {
        Attribute::Ints(v.clone())
    } else if let Some(v) = &a.bools {
        Attribute::Bools(v.clone())
    } else if let Some(v) = &a.strings {
        Attribute::Strings(v.clone())
    } else if let Some(v) = &a.versions {
        Attribute::Versions(v.clone())
    } else {
        return None;
    })
}

fn device_view(driver: &str, d: &Device, slice: &str, problems: &mut Vec<String>) -> DeviceView {
    let mut view = DeviceView {
        name: d.name.clone(),
        allow_multiple_allocations: d.allow_multiple_allocations.unwrap_or(false),
        tainted: d
            .taints
            .iter()
            .flatten()
            .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute"),
        ..Default::default()
    };
    // The driver's domain is always there, so that `device.attributes[driver]` of a device
    // without attributes is an empty map, as in Kubernetes.
    view.attributes.entry(driver.to_string()).or_default();
    view.capacity.entry(driver.to_string()).or_default();
    for (name, a) in d.attributes.iter().flatten() {
        let (domain, id) = qualified(driver, name);
        if let Some(value) = attribute(a) {
            view.attributes
                .entry(domain.to_string())
                .or_default()
                .insert(id.to_string(), value);
        }
    }
    for (name, c) in d.capacity.iter().flatten() {
        let (domain, id) = qualified(driver, name);
        match quantity::parse(&c.value.0) {
            Ok(v) => {
                view.capacity
                    .entry(domain.to_string())
                    .or_default()
                    .insert(id.to_string(), v);
            }
            Err(e) => problems.push(format!(
                "ResourceSlice {slice} device {} capacity {name}: {e}",
                d.name
            )),
        }
    }
    view
}

// ---------------------------------------------------------------------------------------
// Capacity: the classes' selectors over the slices' devices
// ---------------------------------------------------------------------------------------

/// Functions of the Kubernetes CEL libraries that DRA selectors may use and the `cel` crate
/// does not have. Found when the class is compiled, so that such a class is unknown even
/// while no device would reach the call.
const KUBERNETES_ONLY: &[&str] = &[
    "quantity",
    "isQuantity",
    "semver",
    "isSemver",
    "compareTo",
    "isGreaterThan",
    "isLessThan",
    "asInteger",
    "asApproximateFloat",
    "sign",
    "major",
    "minor",
    "patch",
];

/// A class's selectors, compiled once per rebuild.
fn compile(class: &DeviceClassInfo) -> Result<Vec<(&str, cel::Program)>, String> {
    class
        .selectors
        .iter()
        .map(|expression| {
            let program = cel::Program::compile(expression)
                .map_err(|e| format!("{expression:?} does not compile: {e}"))?;
            let references = program.references();
            if let Some(f) = KUBERNETES_ONLY.iter().find(|f| references.has_function(f)) {
                return Err(format!(
                    "{expression:?} calls {f}(), which mlguard's CEL evaluator does not support"
                ));
            }
            Ok((expression.as_str(), program))
        })
        .collect()
}

fn number(v: f64) -> cel::Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        cel::Value::Int(v as i64)
    } else {
        cel::Value::Float(v)
    }
}

fn list<T>(items: &[T], f: impl Fn(&T) -> cel::Value) -> cel::Value {
    cel::Value::List(Arc::new(items.iter().map(f).collect()))
}

fn cel_attribute(a: &Attribute) -> cel::Value {
    let string = |s: &String| cel::Value::String(Arc::new(s.clone()));
    match a {
        Attribute::Int(v) => cel::Value::Int(*v),
        Attribute::Bool(v) => cel::Value::Bool(*v),
        Attribute::String(v) | Attribute::Version(v) => string(v),
        Attribute::Ints(v) => list(v, |i| cel::Value::Int(*i)),
        Attribute::Bools(v) => list(v, |b| cel::Value::Bool(*b)),
        Attribute::Strings(v) | Attribute::Versions(v) => list(v, string),
    }
}

fn domains<T>(
    m: &BTreeMap<String, BTreeMap<String, T>>,
    f: impl Fn(&T) -> cel::Value,
) -> cel::Value {
    let outer: HashMap<String, cel::Value> = m
        .iter()
        .map(|(domain, ids)| {
            let inner: HashMap<String, cel::Value> =
                ids.iter().map(|(id, v)| (id.clone(), f(v))).collect();
            (domain.clone(), cel::Value::from(inner))
        })
        .collect();
    cel::Value::from(outer)
}

/// The `device` variable of the DRA CEL environment.
fn device_value(driver: &str, d: &DeviceView) -> cel::Value {
    let mut device: HashMap<String, cel::Value> = HashMap::new();
    device.insert("driver".into(), cel::Value::String(Arc::new(driver.into())));
    device.insert("attributes".into(), domains(&d.attributes, cel_attribute));
    device.insert("capacity".into(), domains(&d.capacity, |v| number(*v)));
    device.insert(
        "allowMultipleAllocations".into(),
        cel::Value::Bool(d.allow_multiple_allocations),
    );
    cel::Value::from(device)
}

/// Per class, the devices it selects on each node; the classes whose selectors failed, why.
type Counts = BTreeMap<String, BTreeMap<String, u64>>;

fn count(
    classes: &BTreeMap<String, DeviceClassInfo>,
    slices: &[SliceDevices],
    node_names: &[&str],
) -> (Counts, BTreeMap<String, String>) {
    let mut unknown: BTreeMap<String, String> = BTreeMap::new();
    let mut compiled = Vec::new();
    for (name, class) in classes {
        match compile(class) {
            Ok(programs) => compiled.push((name, programs)),
            Err(why) => {
                unknown.insert(name.clone(), why);
            }
        }
    }
    // A pool's slices are replaced generation by generation: only the newest counts.
    let mut newest: HashMap<(&str, &str), i64> = HashMap::new();
    for s in slices {
        let g = newest.entry((&s.driver, &s.pool)).or_insert(s.generation);
        *g = (*g).max(s.generation);
    }
    let mut on_node: Counts = BTreeMap::new();
    let mut everywhere: BTreeMap<String, u64> = BTreeMap::new();
    let mut context = cel::Context::default();
    for slice in slices {
        if newest[&(slice.driver.as_str(), slice.pool.as_str())] != slice.generation {
            continue;
        }
        for device in slice.devices.iter().filter(|d| !d.tainted) {
            context.add_variable_from_value("device", device_value(&slice.driver, device));
            for (class, programs) in &compiled {
                if unknown.contains_key(*class) {
                    continue;
                }
                let mut selected = true;
                for (expression, program) in programs {
                    match program.execute(&context) {
                        Ok(cel::Value::Bool(true)) => {}
                        Ok(cel::Value::Bool(false)) => {
                            selected = false;
                            break;
                        }
                        outcome => {
                            let why = match outcome {
                                Ok(other) => format!("gives {other:?}, not a bool"),
                                Err(e) => format!("fails: {e}"),
                            };
                            unknown.insert(
                                (*class).clone(),
                                format!(
                                    "{expression:?} {why} (device {} of driver {}, pool {})",
                                    device.name, slice.driver, slice.pool
                                ),
                            );
                            selected = false;
                            break;
                        }
                    }
                }
                if !selected {
                    continue;
                }
                match &slice.reach {
                    Reach::Node(node) => {
                        *on_node
                            .entry((*class).clone())
                            .or_default()
                            .entry(node.clone())
                            .or_default() += 1
                    }
                    Reach::AllNodes => *everywhere.entry((*class).clone()).or_default() += 1,
                    Reach::Elsewhere => {}
                }
            }
        }
    }
    let mut counts: Counts = BTreeMap::new();
    for (class, _) in compiled {
        if unknown.contains_key(class) {
            continue;
        }
        let mut per_node = on_node.remove(class).unwrap_or_default();
        if let Some(&n) = everywhere.get(class) {
            for node in node_names {
                *per_node.entry((*node).to_string()).or_default() += n;
            }
        }
        counts.insert(class.clone(), per_node);
    }
    (counts, unknown)
}

/// A node's devices of one class, for its allocatable.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDevices {
    pub node: String,
    pub class: String,
    pub count: u64,
    pub extended_resource_name: Option<String>,
}

/// Computes `capacity` and `unknown_capacity` from the slices added so far (consuming them),
/// given the nodes of the Node list (name -> cordoned), and returns what to merge into those
/// nodes' allocatable (see [`merge`]). Called once, after every object is added.
///
/// A cordoned node counts for neither largest nor total; a slice's node missing from the
/// Node list counts (the node watch may lag), but is not merged into: it would look like a
/// node known to offer nothing else.
pub fn finish(
    dra: &mut DraState,
    nodes: &BTreeMap<&str, bool>,
    problems: &mut Vec<String>,
) -> Vec<NodeDevices> {
    let slices = std::mem::take(&mut dra.slices);
    let node_names: Vec<&str> = nodes.keys().copied().collect();
    let (counts, unknown) = count(&dra.device_classes, &slices, &node_names);
    for (class, why) in &unknown {
        problems.push(format!("DeviceClass {class}: capacity unknown: {why}"));
    }
    dra.unknown_capacity = unknown;
    let mut merges = Vec::new();
    let mut capacity = BTreeMap::new();
    for (class, per_node) in counts {
        let mut c = ClassCapacity::default();
        for (node, n) in per_node {
            if n == 0 {
                continue;
            }
            let cordoned = nodes.get(node.as_str()).copied();
            if cordoned != Some(true) {
                c.largest = c.largest.max(n);
                c.total += n;
                c.nodes += 1;
            }
            if cordoned.is_some() {
                merges.push(NodeDevices {
                    node,
                    class: class.clone(),
                    count: n,
                    extended_resource_name: dra.device_classes[&class]
                        .extended_resource_name
                        .clone(),
                });
            }
        }
        capacity.insert(class, c);
    }
    dra.capacity = capacity;
    merges
}

/// Merges a node's devices of a class into its allocatable: as
/// `<class>.deviceclass.resource.k8s.io/devices`, and as the class's extended resource name
/// where the node offers none of it by a device plugin (the scheduler then serves it from
/// DRA, KEP-5004); a device plugin's number stands.
pub fn merge(allocatable: &mut BTreeMap<String, f64>, devices: &NodeDevices) {
    let n = devices.count as f64;
    allocatable.insert(class_resource_name(&devices.class), n);
    if let Some(e) = &devices.extended_resource_name {
        if allocatable.get(e).copied().unwrap_or(0.0) == 0.0 {
            allocatable.insert(e.clone(), n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A node as the state knows it: cordoned, allocatable.
    type Node = (String, bool, BTreeMap<String, f64>);

    /// The cluster state's part that DRA touches, run as the state runs it.
    #[derive(Debug, Default, PartialEq)]
    struct S {
        dra: DraState,
        problems: Vec<String>,
        nodes: BTreeMap<String, (bool, BTreeMap<String, f64>)>,
    }

    impl S {
        fn add_node(&mut self, (name, cordoned, allocatable): &Node) {
            self.nodes
                .insert(name.clone(), (*cordoned, allocatable.clone()));
        }
        fn add_device_class(&mut self, c: &DeviceClass) {
            self.dra.add_device_class(c);
        }
        fn add_resource_claim(&mut self, c: &ResourceClaim) {
            self.dra.add_claim(c);
        }
        fn add_resource_claim_template(&mut self, t: &ResourceClaimTemplate) {
            self.dra.add_claim_template(t);
        }
        fn add_resource_slice(&mut self, x: &ResourceSlice) {
            self.dra.add_slice(x, &mut self.problems);
        }
        fn finish_dra(&mut self) {
            let nodes: BTreeMap<&str, bool> = self
                .nodes
                .iter()
                .map(|(n, (c, _))| (n.as_str(), *c))
                .collect();
            let found = finish(&mut self.dra, &nodes, &mut self.problems);
            for d in &found {
                merge(&mut self.nodes.get_mut(&d.node).unwrap().1, d);
            }
        }
        fn allocatable(&self, node: &str) -> &BTreeMap<String, f64> {
            &self.nodes[node].1
        }
        /// What `ClusterState::largest_allocatable` gives: over schedulable nodes.
        fn largest_allocatable(&self) -> BTreeMap<String, f64> {
            let mut out: BTreeMap<String, f64> = BTreeMap::new();
            for (_, allocatable) in self.nodes.values().filter(|(c, _)| !c) {
                for (k, v) in allocatable {
                    let e = out.entry(k.clone()).or_insert(0.0);
                    *e = e.max(*v);
                }
            }
            out
        }
        fn to_json(&self) -> Json {
            json!({"dra": self.dra.to_json()})
        }
    }

    fn class(name: &str, expression: Option<&str>, extended: Option<&str>) -> DeviceClass {
        let mut spec = json!({});
        if let Some(e) = expression {
            spec["selectors"] = json!([{"cel": {"expression": e}}]);
        }
        if let Some(e) = extended {
            spec["extendedResourceName"] = json!(e);
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    }

    fn nvidia_classes() -> Vec<DeviceClass> {
        vec![
            class(
                "gpu.nvidia.com",
                Some("device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"),
                None,
            ),
            class(
                "mig.nvidia.com",
                Some("device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'mig'"),
                None,
            ),
        ]
    }

    /// A slice of `gpus` full GPUs and `migs` MIG devices, as NVIDIA's driver publishes them.
    fn slice(
        name: &str,
        target: Json,
        pool: &str,
        generation: i64,
        gpus: u32,
        migs: u32,
    ) -> ResourceSlice {
        let mut devices = Vec::new();
        for i in 0..gpus {
            devices.push(json!({"name": format!("gpu-{i}"), "attributes": {
                "type": {"string": "gpu"}, "productName": {"string": "NVIDIA H100 80GB HBM3"},
                "index": {"int": i}, "driverVersion": {"version": "570.124.6"},
                "resource.kubernetes.io/pcieRoot": {"string": "pci0000:00"}},
                "capacity": {"memory": {"value": "80Gi"}}}));
        }
        for i in 0..migs {
            devices.push(
                json!({"name": format!("gpu-0-mig-1g10gb-{i}"), "attributes": {
                "type": {"string": "mig"}, "profile": {"string": "1g.10gb"}},
                "capacity": {"memory": {"value": "10Gi"}}}),
            );
        }
        let mut spec = json!({"driver": "gpu.nvidia.com",
            "pool": {"name": pool, "generation": generation, "resourceSliceCount": 1},
            "devices": devices});
        for (k, v) in target.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    }

    fn node(name: &str, cordoned: bool, allocatable: Json) -> Node {
        let allocatable = allocatable
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), quantity::parse(v.as_str().unwrap()).unwrap()))
            .collect();
        (name.to_string(), cordoned, allocatable)
    }

    fn state(nodes: &[Node], classes: &[DeviceClass], slices: &[ResourceSlice]) -> S {
        let mut s = S::default();
        nodes.iter().for_each(|n| s.add_node(n));
        classes.iter().for_each(|c| s.add_device_class(c));
        slices.iter().for_each(|x| s.add_resource_slice(x));
        s.finish_dra();
        s
    }

    fn capacity(s: &S, class: &str) -> (u64, u64, u64) {
        let c = s.dra.capacity[class];
        (c.largest, c.total, c.nodes)
    }

    #[test]
    fn the_dra_entry_is_there_when_empty() {
        let j = S::default().to_json();
        assert_eq!(
            j["dra"],
            json!({"device_classes": {}, "claim_templates": {}, "claims": {},
                   "capacity": {}, "unknown_capacity": {}})
        );
    }

    #[test]
    fn a_claim_is_cut_to_what_policies_read() {
        let claim: ResourceClaim = serde_json::from_value(json!({
            "metadata": {"name": "two-gpus", "namespace": "ml", "labels": {"a": "b"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"devices": {
                "requests": [
                    {"name": "gpus", "exactly": {"deviceClassName": "gpu.nvidia.com",
                        "allocationMode": "ExactCount", "count": 2,
                        "selectors": [{"cel": {"expression": "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0"}}],
                        "tolerations": [{"key": "k", "operator": "Exists"}],
                        "capacity": {"requests": {"memory": "10Gi"}}}},
                    {"name": "any", "firstAvailable": [
                        {"name": "big", "deviceClassName": "gpu.nvidia.com",
                         "selectors": [{"cel": {"expression": "true"}}]},
                        {"name": "small", "deviceClassName": "mig.nvidia.com",
                         "allocationMode": "ExactCount", "count": 2}]}],
                "constraints": [{"requests": ["gpus"], "matchAttribute": "gpu.nvidia.com/pcieRoot"}],
                "config": [{"opaque": {"driver": "gpu.nvidia.com", "parameters": {"x": 1}}}]}},
            "status": {"reservedFor": [{"resource": "pods", "name": "p", "uid": "u1"},
                                       {"resource": "pods", "name": "q", "uid": "u2"}],
                       "allocation": {"devices": {"results": [{"request": "gpus",
                           "driver": "gpu.nvidia.com", "pool": "gpu-1", "device": "gpu-0"}]}},
                       "devices": [{"driver": "gpu.nvidia.com", "pool": "gpu-1", "device": "gpu-0"}]}
        }))
        .unwrap();
        let expected_spec = json!({"devices": {"requests": [
            {"name": "gpus", "exactly": {"deviceClassName": "gpu.nvidia.com",
                "allocationMode": "ExactCount", "count": 2}},
            {"name": "any", "firstAvailable": [
                {"name": "big", "deviceClassName": "gpu.nvidia.com"},
                {"name": "small", "deviceClassName": "mig.nvidia.com",
                 "allocationMode": "ExactCount", "count": 2}]}]}});
        let mut s = S::default();
        s.add_resource_claim(&claim);
        assert_eq!(
            s.to_json()["dra"]["claims"]["ml"]["two-gpus"],
            json!({"spec": expected_spec, "reserved_for": 2, "allocated": true})
        );

        // The watch cache keeps no more than that.
        let mut stripped = claim.clone();
        strip_claim(&mut stripped);
        assert_eq!(serde_json::to_value(&stripped.spec).unwrap(), expected_spec);
        assert!(stripped.metadata.managed_fields.is_none());
        assert!(stripped.metadata.labels.is_none());
        let status = stripped.status.as_ref().unwrap();
        assert!(status.devices.is_none());
        assert_eq!(status.reserved_for.as_ref().unwrap().len(), 2);
        assert!(status.allocation.as_ref().unwrap().devices.is_none());
        let mut again = S::default();
        again.add_resource_claim(&stripped);
        assert_eq!(again.dra, s.dra);
    }

    #[test]
    fn nvidia_classes_count_gpus_and_mig_devices_apart() {
        let s = state(
            &[node("gpu-1", false, json!({"cpu": "96"}))],
            &nvidia_classes(),
            &[slice(
                "gpu-1-gpus",
                json!({"nodeName": "gpu-1"}),
                "gpu-1",
                1,
                8,
                7,
            )],
        );
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(capacity(&s, "gpu.nvidia.com"), (8, 8, 1));
        assert_eq!(capacity(&s, "mig.nvidia.com"), (7, 7, 1));
        let allocatable = &s.allocatable("gpu-1");
        assert_eq!(
            allocatable["gpu.nvidia.com.deviceclass.resource.k8s.io/devices"],
            8.0
        );
        assert_eq!(
            allocatable["mig.nvidia.com.deviceclass.resource.k8s.io/devices"],
            7.0
        );
        assert_eq!(
            s.largest_allocatable()["gpu.nvidia.com.deviceclass.resource.k8s.io/devices"],
            8.0
        );
        let j = s.to_json();
        assert_eq!(
            j["dra"]["capacity"]["gpu.nvidia.com"],
            json!({"largest": 8, "total": 8, "nodes": 1})
        );
        assert_eq!(j["dra"]["device_classes"]["gpu.nvidia.com"], json!({}));
        assert_eq!(j["dra"]["unknown_capacity"], json!({}));
    }

    #[test]
    fn selectors_see_qualified_attributes_capacity_and_defaults() {
        let classes = [
            class("pcie", Some("device.attributes['gpu.nvidia.com'].type == 'gpu' && device.attributes['resource.kubernetes.io'].pcieRoot == 'pci0000:00'"), None),
            class("big", Some("device.capacity['gpu.nvidia.com'].memory >= 80 * 1024 * 1024 * 1024"), None),
            class("exclusive", Some("!device.allowMultipleAllocations && device.attributes['gpu.nvidia.com'].index >= 6"), None),
            class("everything", None, None),
        ];
        let s = state(
            &[node("gpu-1", false, json!({}))],
            &classes,
            &[slice("s", json!({"nodeName": "gpu-1"}), "gpu-1", 1, 8, 7)],
        );
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert_eq!(capacity(&s, "pcie").1, 8);
        assert_eq!(capacity(&s, "big").1, 8);
        // `pcie` reads a domain the MIG devices lack, but only after `type == 'gpu'` is false
        // for them: `&&` does not evaluate its right side then. The MIG devices have no
        // index either, and `exclusive` reads it after a true left side: a missing attribute
        // is an evaluation error, as in Kubernetes, so the class's capacity is unknown.
        assert!(s.dra.unknown_capacity["exclusive"].contains("No such key: index"));
        assert_eq!(capacity(&s, "everything").1, 15);
    }

    #[test]
    fn all_nodes_slices_reach_every_node() {
        let s = state(
            &[
                node("a", false, json!({})),
                node("b", false, json!({})),
                node("c", true, json!({})),
            ],
            &nvidia_classes(),
            &[
                slice("shared", json!({"allNodes": true}), "shared", 1, 2, 0),
                slice("a-local", json!({"nodeName": "a"}), "a", 1, 4, 0),
            ],
        );
        // a: 2 + 4, b: 2; c is cordoned.
        assert_eq!(capacity(&s, "gpu.nvidia.com"), (6, 8, 2));
        let key = class_resource_name("gpu.nvidia.com");
        assert_eq!(s.allocatable("b")[&key], 2.0);
        assert_eq!(s.allocatable("c")[&key], 2.0);
        assert_eq!(s.largest_allocatable()[&key], 6.0);
    }

    #[test]
    fn only_the_newest_pool_generation_counts() {
        let s = state(
            &[node("gpu-1", false, json!({}))],
            &nvidia_classes(),
            &[
                slice("old", json!({"nodeName": "gpu-1"}), "gpu-1", 1, 8, 0),
                slice("new", json!({"nodeName": "gpu-1"}), "gpu-1", 2, 4, 0),
            ],
        );
        assert_eq!(capacity(&s, "gpu.nvidia.com"), (4, 4, 1));
    }

    #[test]
    fn tainted_devices_and_node_selector_slices_do_not_count() {
        let mut tainted = slice("t", json!({"nodeName": "gpu-1"}), "gpu-1", 1, 3, 0);
        let devices = tainted.spec.devices.as_mut().unwrap();
        devices[0].taints = Some(vec![DeviceTaint {
            key: "gpu.nvidia.com/xid".into(),
            effect: "NoExecute".into(),
            ..Default::default()
        }]);
        devices[1].taints = Some(vec![DeviceTaint {
            key: "maintenance".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        let elsewhere = slice(
            "sel",
            json!({"nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "pool", "operator": "In", "values": ["x"]}]}]}}),
            "sel",
            1,
            8,
            0,
        );
        let s = state(
            &[node("gpu-1", false, json!({}))],
            &nvidia_classes(),
            &[tainted, elsewhere],
        );
        assert_eq!(capacity(&s, "gpu.nvidia.com"), (1, 1, 1));
    }

    #[test]
    fn cordoned_nodes_do_not_count_and_unknown_nodes_do() {
        let s = state(
            &[node("a", true, json!({}))],
            &nvidia_classes(),
            &[
                slice("a", json!({"nodeName": "a"}), "a", 1, 8, 0),
                slice("new", json!({"nodeName": "not-listed-yet"}), "new", 1, 2, 0),
            ],
        );
        assert_eq!(capacity(&s, "gpu.nvidia.com"), (2, 2, 1));
        // The unknown node is not made up in `nodes`.
        assert_eq!(s.nodes.len(), 1);
        assert!(!s
            .largest_allocatable()
            .contains_key(&class_resource_name("gpu.nvidia.com")));
    }

    #[test]
    fn unsupported_cel_makes_the_capacity_unknown_not_zero() {
        let classes = [
            class(
                "big-gpus",
                Some("device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0"),
                None,
            ),
            class("recent-driver", Some("device.attributes['gpu.nvidia.com'].driverVersion.isGreaterThan(semver('550.0.0'))"), None),
            class("broken", Some("device.driver == "), None),
            class("no-such-domain", Some("device.attributes['example.com'].model == 'x'"), None),
        ]
        .into_iter()
        .chain(nvidia_classes())
        .collect::<Vec<_>>();
        let s = state(
            &[node("gpu-1", false, json!({}))],
            &classes,
            &[slice("s", json!({"nodeName": "gpu-1"}), "gpu-1", 1, 8, 0)],
        );
        let unknown = &s.dra.unknown_capacity;
        assert!(unknown["big-gpus"].contains("quantity"), "{unknown:?}");
        assert!(
            unknown["recent-driver"].contains("semver")
                || unknown["recent-driver"].contains("isGreaterThan"),
            "{unknown:?}"
        );
        assert!(
            unknown["broken"].contains("does not compile"),
            "{unknown:?}"
        );
        assert!(unknown["no-such-domain"].contains("fails"), "{unknown:?}");
        for class in ["big-gpus", "recent-driver", "broken", "no-such-domain"] {
            assert!(!s.dra.capacity.contains_key(class));
            assert!(
                s.problems
                    .iter()
                    .any(|p| p.contains(&format!("DeviceClass {class}:"))),
                "{:?}",
                s.problems
            );
        }
        assert_eq!(capacity(&s, "gpu.nvidia.com"), (8, 8, 1));
        let j = s.to_json();
        assert!(j["dra"]["unknown_capacity"]["big-gpus"].is_string());
        assert!(j["dra"]["capacity"].get("big-gpus").is_none());
    }

    #[test]
    fn the_extended_resource_name_is_served_from_dra_where_no_device_plugin_offers_it() {
        let classes = [class(
            "gpu.nvidia.com",
            Some("device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"),
            Some("nvidia.com/gpu"),
        )];
        let s = state(
            &[
                node("plugin", false, json!({"nvidia.com/gpu": "4"})),
                node("dra", false, json!({"nvidia.com/gpu": "0"})),
                node("bare", false, json!({})),
            ],
            &classes,
            &[
                slice("p", json!({"nodeName": "plugin"}), "plugin", 1, 8, 0),
                slice("d", json!({"nodeName": "dra"}), "dra", 1, 8, 0),
                slice("b", json!({"nodeName": "bare"}), "bare", 1, 2, 0),
            ],
        );
        assert_eq!(s.allocatable("plugin")["nvidia.com/gpu"], 4.0);
        assert_eq!(s.allocatable("dra")["nvidia.com/gpu"], 8.0);
        assert_eq!(s.allocatable("bare")["nvidia.com/gpu"], 2.0);
        assert_eq!(s.largest_allocatable()["nvidia.com/gpu"], 8.0);
        assert_eq!(
            s.to_json()["dra"]["device_classes"]["gpu.nvidia.com"],
            json!({"extended_resource_name": "nvidia.com/gpu"})
        );
    }

    #[test]
    fn templates_and_stripped_slices_give_the_same_state() {
        let template: ResourceClaimTemplate = serde_json::from_value(json!({
            "metadata": {"name": "one-gpu", "namespace": "ml", "managedFields": [{"manager": "x"}]},
            "spec": {"metadata": {"labels": {"a": "b"}}, "spec": {"devices": {"requests": [
                {"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com",
                 "selectors": [{"cel": {"expression": "true"}}]}}]}}}
        }))
        .unwrap();
        let mut stripped = template.clone();
        strip_claim_template(&mut stripped);
        assert!(stripped.spec.as_ref().unwrap().metadata.is_none());
        let raw = slice("s", json!({"nodeName": "gpu-1"}), "gpu-1", 1, 8, 7);
        let mut thin = raw.clone();
        strip_slice(&mut thin);
        let build = |t: &ResourceClaimTemplate, x: &ResourceSlice| {
            let mut s = S::default();
            s.add_node(&node("gpu-1", false, json!({})));
            nvidia_classes().iter().for_each(|c| s.add_device_class(c));
            s.add_resource_claim_template(t);
            s.add_resource_slice(x);
            s.finish_dra();
            s
        };
        let (full, cut) = (build(&template, &raw), build(&stripped, &thin));
        assert_eq!(full, cut);
        assert_eq!(
            full.to_json()["dra"]["claim_templates"]["ml"]["one-gpu"],
            json!({"spec": {"devices": {"requests": [
                {"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}})
        );
    }
}
