//! AdmissionReview v1 in. The body is parsed once, straight into the policy engine's value
//! type; the few fields mlguard routes on are read from that value. The object and old object,
//! most of a body, are kept as raw JSON until a policy needs them, so that a review no policy
//! looks at (another kind, an operation no policy runs on) never builds them.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::OnceLock;

use regorus::Value;
use serde_json::value::RawValue;

use crate::policy::WorkloadKinds;

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is not a usable AdmissionReview. Each becomes an HTTP 400 with this text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAReview(String),
    #[error("AdmissionReview has no `request`; the API server always sends one")]
    MissingRequest,
    #[error("AdmissionReview request has no `uid`; the response must echo it")]
    MissingUid,
    #[error("AdmissionReview holds more values than its size allows (more than one per {BYTES_PER_VALUE} bytes of JSON); mlguard refuses it rather than spend many times its size in memory")]
    TooManyValues,
}

/// An object or old object mlguard could not turn into policy input in full: a number it
/// cannot represent (`1e400`), nesting deeper than its parser allows. Such a review is refused,
/// never evaluated as if the object were empty.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("mlguard cannot read the review's `{member}` in full ({reason}); it does not admit what it cannot check")]
pub struct UnreadableObject {
    pub member: &'static str,
    pub reason: String,
}

/// An AdmissionReview request, parsed once.
#[derive(Debug, Clone)]
pub struct ParsedReview {
    pub api_version: String,
    pub uid: String,
    pub group: String,
    pub version: String,
    pub kind: String,
    pub resource: String,
    pub sub_resource: String,
    pub namespace: String,
    /// The object's name, or `generateName` + `*` for pods a controller is creating.
    pub name: String,
    pub operation: String,
    pub user: String,
    /// `userInfo.groups`.
    pub groups: Vec<String>,
    pub dry_run: bool,
    /// The AdmissionRequest's fields other than the objects.
    envelope: Value,
    /// `object` and `oldObject` as received, until `request` needs them.
    raw_objects: [Option<Box<RawValue>>; 2],
    request: OnceLock<Result<Value, UnreadableObject>>,
}

/// The request's members kept as raw JSON, with their names in the request.
const RAW_MEMBERS: [&str; 2] = ["object", "oldObject"];

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        _ => String::new(),
    }
}

/// Where the deserializer is in the review. `metadata.managedFields` of the object and the
/// old object is skipped while parsing, never built: policies do not read it, and it is often
/// the largest part of an object, so building it would cost time on every request.
#[derive(Debug, Clone, Copy)]
enum Level {
    Review,
    Request,
    Object,
    Metadata,
    /// Anything below: built as it is.
    Plain,
}

/// What to do with the value under a key.
enum Child {
    Plain,
    Nested(Level),
    /// Kept as raw JSON, in the slot of its name in `RAW_MEMBERS`.
    Raw(usize),
    Skip,
}

impl Level {
    fn child(self, key: &str) -> Child {
        match (self, key) {
            (Level::Review, "request") => Child::Nested(Level::Request),
            (Level::Request, _) => match RAW_MEMBERS.iter().position(|m| *m == key) {
                Some(slot) => Child::Raw(slot),
                None => Child::Plain,
            },
            (Level::Object, "metadata") => Child::Nested(Level::Metadata),
            (Level::Metadata, "managedFields") => Child::Skip,
            _ => Child::Plain,
        }
    }
}

/// The request's objects as slices of the body, filled while the request is parsed.
type RawSlots<'de> = RefCell<[Option<&'de RawValue>; 2]>;

/// How many values (map keys included) a text of `bytes` may become. Building a value costs
/// several times its text, and a text of one-character values (`[1,1,1,...]`) would cost tens
/// of times: so the count is bounded by the size, which bounds the memory a review can take to
/// a multiple of its size (see `MEMORY_PER_BODY_BYTE`). Kubernetes objects run at 10 to 20
/// bytes per value; the floor keeps small objects of short values readable.
pub fn value_budget(bytes: usize) -> usize {
    (bytes / BYTES_PER_VALUE).max(MIN_VALUE_BUDGET)
}

const BYTES_PER_VALUE: usize = 6;
const MIN_VALUE_BUDGET: usize = 4096;

/// The deserializer's visitor at one level of the review.
#[derive(Clone, Copy)]
struct Parse<'s, 'de> {
    level: Level,
    raw: &'s RawSlots<'de>,
    /// Values left to build; parsing fails when it runs out.
    budget: &'s Cell<usize>,
}

impl Parse<'_, '_> {
    fn spend<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.budget.get() {
            0 => Err(E::custom(
                "it holds more values than its size allows (more than one per 6 bytes)",
            )),
            left => {
                self.budget.set(left - 1);
                Ok(())
            }
        }
    }

    fn plain(self) -> Self {
        Parse {
            level: Level::Plain,
            ..self
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Parse<'_, 'de> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Parse<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Null)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::from(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend()?;
        Ok(Value::from(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self.plain())? {
            items.push(v);
        }
        Ok(Value::from(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend()?;
        let mut out = std::collections::BTreeMap::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = match self.level.child(&key) {
                Child::Plain => {
                    self.spend()?;
                    map.next_value_seed(self.plain())?
                }
                Child::Nested(level) => map.next_value_seed(Parse { level, ..self })?,
                Child::Raw(slot) => {
                    self.raw.borrow_mut()[slot] = Some(map.next_value::<&'de RawValue>()?);
                    continue;
                }
                Child::Skip => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            out.insert(Value::from(key.as_ref()), value);
        }
        Ok(Value::from(out))
    }
}

/// An object or old object as the policies see it: managedFields left out. The text was
/// checked to be JSON while the body was parsed, but only its syntax: a number out of range or
/// nesting past the parser's limit shows up here, and is an error, never an empty object.
fn build_object(raw: &RawValue) -> Result<Value, String> {
    use serde::de::DeserializeSeed;
    let unused = RefCell::new([None, None]);
    let budget = Cell::new(value_budget(raw.get().len()));
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Parse {
        level: Level::Object,
        raw: &unused,
        budget: &budget,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())
}

pub fn parse(body: &[u8]) -> Result<ParsedReview, ReviewError> {
    use serde::de::DeserializeSeed;
    let raw: RawSlots = RefCell::new([None, None]);
    let budget = Cell::new(value_budget(body.len()));
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut review = Parse {
        level: Level::Review,
        raw: &raw,
        budget: &budget,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v))
    .map_err(|e| match budget.get() {
        0 => ReviewError::TooManyValues,
        _ => ReviewError::NotJson(e.to_string()),
    })?;
    if !matches!(review, Value::Object(_)) {
        return Err(ReviewError::NotAReview("expected a JSON object".into()));
    }
    let api_version = text(&review["apiVersion"]);
    let kind = text(&review["kind"]);
    if kind != "AdmissionReview" || api_version != API_VERSION {
        return Err(ReviewError::NotAReview(format!(
            "got apiVersion {api_version:?}, kind {kind:?}; configure the webhook with \
             admissionReviewVersions: [v1]"
        )));
    }
    let request = match review.as_object_mut() {
        Ok(map) => map.remove(&Value::from("request")),
        Err(_) => None,
    }
    .filter(|r| matches!(r, Value::Object(_)))
    .ok_or(ReviewError::MissingRequest)?;
    let uid = text(&request["uid"]);
    if uid.is_empty() {
        return Err(ReviewError::MissingUid);
    }
    let raw_objects = raw.into_inner().map(|r| r.map(ToOwned::to_owned));
    let mut parsed = ParsedReview {
        api_version,
        uid,
        group: text(&request["kind"]["group"]),
        version: text(&request["kind"]["version"]),
        kind: text(&request["kind"]["kind"]),
        resource: text(&request["resource"]["resource"]),
        sub_resource: text(&request["subResource"]),
        namespace: text(&request["namespace"]),
        name: text(&request["name"]),
        operation: text(&request["operation"]),
        user: text(&request["userInfo"]["username"]),
        groups: match &request["userInfo"]["groups"] {
            Value::Array(groups) => groups.iter().map(text).collect(),
            _ => Vec::new(),
        },
        dry_run: matches!(request["dryRun"], Value::Bool(true)),
        envelope: request,
        raw_objects,
        request: OnceLock::new(),
    };
    // The API server names the object in the request, except a pod a controller creates with
    // generateName, and gives its namespace; only then is the object's metadata read here,
    // from its text, without building the object: a review no policy reads never pays for
    // its objects, however large (a forged one may leave the names out on purpose).
    if parsed.name.is_empty() || parsed.namespace.is_empty() {
        let names = parsed.raw_objects[0]
            .as_deref()
            .and_then(|raw| serde_json::from_str::<Named>(raw.get()).ok())
            .unwrap_or_default()
            .metadata;
        if parsed.name.is_empty() {
            parsed.name = object_name(&names.name, &names.generate_name);
        }
        if parsed.namespace.is_empty() {
            parsed.namespace = names.namespace.into_owned();
        }
    }
    Ok(parsed)
}

/// An object's names, read from its text; every other member is skipped, not built.
#[derive(Debug, Default, serde::Deserialize)]
struct Named<'a> {
    #[serde(default, borrow)]
    metadata: Names<'a>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Names<'a> {
    #[serde(default, borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    generate_name: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    namespace: std::borrow::Cow<'a, str>,
}

/// How mlguard names an object: its name, else `generateName` + `*` for a pod a controller
/// is creating, else nothing. Every report and message uses this one rule.
pub fn object_name(name: &str, generate_name: &str) -> String {
    match (name, generate_name) {
        ("", "") => String::new(),
        ("", generate) => format!("{generate}*"),
        (name, _) => name.to_string(),
    }
}

impl ParsedReview {
    /// The AdmissionRequest as the policies see it (`input.review`), without managedFields.
    /// The objects are built from their JSON on the first call.
    pub fn request(&self) -> Result<&Value, &UnreadableObject> {
        self.request
            .get_or_init(|| {
                let mut request = self.envelope.clone();
                if let Ok(map) = request.as_object_mut() {
                    for (member, raw) in RAW_MEMBERS.iter().zip(&self.raw_objects) {
                        if let Some(raw) = raw {
                            let object = build_object(raw)
                                .map_err(|reason| UnreadableObject { member, reason })?;
                            map.insert(Value::from(*member), object);
                        }
                    }
                }
                Ok(request)
            })
            .as_ref()
    }

    /// Only CREATE and UPDATE of Pods and of the workload kinds the policy set's table names
    /// reach the policies; everything else (other kinds, DELETE, CONNECT, subresources such as
    /// pods/status) is allowed unchanged.
    pub fn is_policy_subject(&self, kinds: &WorkloadKinds) -> bool {
        kinds.covers(&self.group, &self.kind)
            && self.sub_resource.is_empty()
            && matches!(self.operation.as_str(), "CREATE" | "UPDATE")
    }

    /// "Pod ml-team/train-0", for messages and logs.
    pub fn subject(&self) -> String {
        let name = if self.name.is_empty() {
            "(unnamed)"
        } else {
            &self.name
        };
        if self.namespace.is_empty() {
            format!("{} {name}", self.kind)
        } else {
            format!("{} {}/{name}", self.kind, self.namespace)
        }
    }

    /// The labels of the object and of the old object, of those the review carries (JSON null
    /// counts as absent), read from the policy input, which evaluation builds anyway; label
    /// values that are not strings are left out. An error when the objects cannot be read:
    /// labels mlguard cannot read exempt nothing.
    pub fn object_labels(&self) -> Result<Vec<BTreeMap<String, String>>, &UnreadableObject> {
        let request = self.request()?;
        let objects = RAW_MEMBERS
            .iter()
            .map(|member| &request[*member])
            .filter(|object| !matches!(object, Value::Undefined | Value::Null));
        Ok(objects
            .map(|object| match &object["metadata"]["labels"] {
                Value::Object(labels) => labels
                    .iter()
                    .filter_map(|(k, v)| match (k, v) {
                        (Value::String(k), Value::String(v)) => {
                            Some((k.to_string(), v.to_string()))
                        }
                        _ => None,
                    })
                    .collect(),
                _ => BTreeMap::new(),
            })
            .collect())
    }

    /// The object under review as JSON, for patching. Only called when a policy patches.
    pub fn object_json(&self) -> Option<serde_json::Value> {
        match &self.request().ok()?["object"] {
            Value::Undefined | Value::Null => None,
            v => serde_json::to_value(v).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(request: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request
        }))
        .unwrap()
    }

    /// Values are bounded by the text's size: a text of one-character values would cost tens
    /// of times its size to build. The envelope is refused at parse (HTTP 400), an object when a
    /// policy reads it (a denial that says why).
    #[test]
    fn a_text_of_tiny_values_is_refused() {
        let dense = format!("[{}1]", "1,".repeat(20_000));
        let envelope = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},"namespace":"ml","name":"p","operation":"CREATE","options":{dense}}}}}"#
        );
        assert_eq!(
            parse(envelope.as_bytes()).unwrap_err(),
            ReviewError::TooManyValues
        );
        let in_object = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},"namespace":"ml","name":"p","operation":"CREATE","object":{{"spec":{{"x":{dense}}}}}}}}}"#
        );
        let r = parse(in_object.as_bytes()).unwrap();
        let err = r.request().unwrap_err();
        assert!(
            err.reason.contains("more values than its size allows"),
            "{err}"
        );
        // A real pod, 20 bytes a value, is well within.
        let pod = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reviews/pod-large.json"
        ))
        .unwrap();
        assert!(parse(&pod).unwrap().request().is_ok());
    }

    /// A review that leaves the names out (a pod created with generateName; or a forged review)
    /// is named from the object's text: its objects are still not built.
    #[test]
    fn names_come_from_the_text_without_building_the_object() {
        let r = parse(&body(serde_json::json!({
            "uid": "u3", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "operation": "CREATE",
            "object": {"metadata": {"generateName": "web-", "namespace": "ml"},
                       "spec": {"x": [1, 2, 3, {"deep": [[[]]]}]}}
        })))
        .unwrap();
        assert_eq!(r.subject(), "Deployment ml/web-*");
        assert!(r.request.get().is_none(), "the object was built to name it");
    }

    #[test]
    fn parses_and_drops_managed_fields() {
        let r = parse(&body(serde_json::json!({
            "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ml", "operation": "CREATE", "userInfo": {"username": "alice"},
            "object": {"metadata": {"generateName": "train-", "managedFields": [{"manager": "kubectl"}]}}
        })))
        .unwrap();
        assert_eq!(r.uid, "u1");
        assert_eq!(r.subject(), "Pod ml/train-*");
        assert!(r.is_policy_subject(&WorkloadKinds::default()));
        assert_eq!(
            r.request().unwrap()["object"]["metadata"]["managedFields"],
            Value::Undefined
        );
    }

    #[test]
    fn rejects_what_is_not_a_review() {
        assert!(matches!(parse(b"{oops"), Err(ReviewError::NotJson(_))));
        assert!(matches!(parse(b"[1]"), Err(ReviewError::NotAReview(_))));
        assert!(matches!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            Err(ReviewError::MissingRequest)
        ));
        assert!(matches!(
            parse(&body(serde_json::json!({"kind": {"kind": "Pod"}}))),
            Err(ReviewError::MissingUid)
        ));
        let v1beta1 = br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#;
        assert!(matches!(parse(v1beta1), Err(ReviewError::NotAReview(_))));
    }

    #[test]
    fn subresources_and_other_kinds_pass_through() {
        let table = serde_json::json!({"workloads": {"kinds": [
            {"group": "batch", "kind": "Job", "resource": "jobs", "templates": [{"template": "spec.template"}]}]}});
        let kinds = crate::policy::kinds::parse(&table).unwrap();
        let mk = |kind: &str, group: &str, sub: &str, op: &str| {
            parse(&body(serde_json::json!({
                "uid": "u", "kind": {"group": group, "version": "v1", "kind": kind},
                "subResource": sub, "operation": op
            })))
            .unwrap()
            .is_policy_subject(&kinds)
        };
        assert!(mk("Job", "batch", "", "CREATE"));
        assert!(!mk("Deployment", "apps", "", "CREATE"));
        assert!(!mk("Pod", "", "status", "UPDATE"));
        assert!(!mk("Pod", "", "", "DELETE"));
    }

    #[test]
    fn objects_are_built_only_when_read() {
        let r = parse(&body(serde_json::json!({
            "uid": "u2", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "namespace": "ml", "name": "web", "operation": "UPDATE",
            "object": {"metadata": {"name": "web", "managedFields": [{"manager": "kubectl"}]}, "spec": {"replicas": 2}},
            "oldObject": {"metadata": {"name": "web"}, "spec": {"replicas": 1}}
        })))
        .unwrap();
        assert_eq!(r.subject(), "Deployment ml/web");
        assert!(
            r.request.get().is_none(),
            "a named, namespaced review is routed without its objects"
        );
        let request = r.request().unwrap();
        assert_eq!(request["object"]["spec"]["replicas"], Value::from(2u64));
        assert_eq!(request["oldObject"]["spec"]["replicas"], Value::from(1u64));
        assert_eq!(
            request["object"]["metadata"]["managedFields"],
            Value::Undefined
        );
        assert_eq!(request["uid"], Value::from("u2"));
    }

    /// What the body parser only checked for syntax (a number out of range, nesting past the
    /// parser's limit) is an error when the object is built, never an empty object.
    #[test]
    fn an_object_that_cannot_be_read_is_an_error() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for (object, why) in [
            (
                r#"{"spec": {"priority": 1e400}}"#.to_string(),
                "out of range",
            ),
            (format!(r#"{{"spec": {{"x": {deep}}}}}"#), "recursion"),
        ] {
            let text = format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"","version":"v1","kind":"Pod"}},"namespace":"ml","name":"p","operation":"CREATE","object":{object}}}}}"#
            );
            let r = parse(text.as_bytes()).expect("the syntax is fine");
            let err = r.request().unwrap_err();
            assert_eq!(err.member, "object");
            assert!(err.reason.contains(why), "{err}");
            assert!(err.to_string().contains("does not admit"), "{err}");
            assert_eq!(r.object_json(), None);
        }
    }
}
