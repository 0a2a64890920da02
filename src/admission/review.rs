//! AdmissionReview v1 in. The body is parsed once, straight into the policy engine's value
//! type; the few fields mlguard routes on are read from that value. The object and old object,
//! most of a body, are kept as raw JSON until a policy needs them, so that a review no policy
//! looks at (another kind, an operation no policy runs on) never builds them.

use std::cell::RefCell;
use std::sync::OnceLock;

use regorus::Value;
use serde_json::value::RawValue;

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
    pub dry_run: bool,
    /// The AdmissionRequest's fields other than the objects.
    envelope: Value,
    /// `object` and `oldObject` as received, until `request` needs them.
    raw_objects: [Option<Box<RawValue>>; 2],
    request: OnceLock<Value>,
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
    /// Anything else: built as it is, by this visitor rather than regorus's own `Deserialize`
    /// (which reads an object whose first member is `$serde_json::private::Number` as a
    /// number, or fails on it, turning a whole object into `null`).
    Value,
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

/// The deserializer's visitor at one level of the review.
#[derive(Clone, Copy)]
struct Parse<'s, 'de> {
    level: Level,
    raw: &'s RawSlots<'de>,
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
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Parse {
            level: Level::Value,
            ..self
        })? {
            items.push(v);
        }
        Ok(Value::from(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = std::collections::BTreeMap::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = match self.level.child(&key) {
                Child::Plain => map.next_value_seed(Parse {
                    level: Level::Value,
                    ..self
                })?,
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

/// An object or old object as the policies see it: managedFields left out.
fn build_object(raw: &RawValue) -> Value {
    use serde::de::DeserializeSeed;
    let unused = RefCell::new([None, None]);
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Parse {
        level: Level::Object,
        raw: &unused,
    }
    .deserialize(&mut de)
    // The text was checked to be JSON while the body was parsed.
    .unwrap_or(Value::Null)
}

pub fn parse(body: &[u8]) -> Result<ParsedReview, ReviewError> {
    use serde::de::DeserializeSeed;
    let raw: RawSlots = RefCell::new([None, None]);
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut review = Parse {
        level: Level::Review,
        raw: &raw,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v))
    .map_err(|e| ReviewError::NotJson(e.to_string()))?;
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
        dry_run: matches!(request["dryRun"], Value::Bool(true)),
        envelope: request,
        raw_objects,
        request: OnceLock::new(),
    };
    // The API server names the object in the request, except a pod a controller creates with
    // generateName, and gives its namespace; only then is the object itself read here.
    if parsed.name.is_empty() || parsed.namespace.is_empty() {
        let metadata = &parsed.request()["object"]["metadata"];
        let name = object_name(&text(&metadata["name"]), &text(&metadata["generateName"]));
        let namespace = text(&metadata["namespace"]);
        if parsed.name.is_empty() {
            parsed.name = name;
        }
        if parsed.namespace.is_empty() {
            parsed.namespace = namespace;
        }
    }
    Ok(parsed)
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
    pub fn request(&self) -> &Value {
        self.request.get_or_init(|| {
            let mut request = self.envelope.clone();
            if let Ok(map) = request.as_object_mut() {
                for (member, raw) in RAW_MEMBERS.iter().zip(&self.raw_objects) {
                    if let Some(raw) = raw {
                        map.insert(Value::from(*member), build_object(raw));
                    }
                }
            }
            request
        })
    }

    /// Only CREATE and UPDATE of Pods and Jobs reach the policies; everything else (other
    /// kinds, DELETE, CONNECT, subresources such as pods/status) is allowed unchanged.
    pub fn is_policy_subject(&self) -> bool {
        let kind_ok = matches!(
            (self.group.as_str(), self.kind.as_str()),
            ("", "Pod") | ("batch", "Job")
        );
        kind_ok
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

    /// The object under review as JSON, for patching. Only called when a policy patches.
    pub fn object_json(&self) -> Option<serde_json::Value> {
        match &self.request()["object"] {
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
        assert!(r.is_policy_subject());
        assert_eq!(
            r.request()["object"]["metadata"]["managedFields"],
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
        let mk = |kind: &str, group: &str, sub: &str, op: &str| {
            parse(&body(serde_json::json!({
                "uid": "u", "kind": {"group": group, "version": "v1", "kind": kind},
                "subResource": sub, "operation": op
            })))
            .unwrap()
            .is_policy_subject()
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
        let request = r.request();
        assert_eq!(request["object"]["spec"]["replicas"], Value::from(2u64));
        assert_eq!(request["oldObject"]["spec"]["replicas"], Value::from(1u64));
        assert_eq!(
            request["object"]["metadata"]["managedFields"],
            Value::Undefined
        );
        assert_eq!(request["uid"], Value::from("u2"));
    }
}
