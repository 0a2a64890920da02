//! What each fuzz target checks, as plain functions of the input bytes: a broken invariant is a
//! panic. The AFL targets (`fuzz/src/bin/*.rs`) call these, and so does
//! `tests/fuzz_regressions.rs` at the repository root (which includes this file by path), so
//! that every kept finding is checked by `cargo test` without AFL.
//!
//! The targets stay thin wrappers over mlguard's public API.

use json_patch::PatchOperation;
use mlguard::admission;
use mlguard::policy::patch::make_safe;
use mlguard::policy::verdict::Verdict;
use serde_json::{json, Value as Json};

/// `ParsedReview::request()` as an `Option`, whether it returns the value itself or a
/// `Result` of it, so that the targets build against either form of the API.
pub trait RequestValue<'a> {
    fn into_value(self) -> Option<&'a regorus::Value>;
}

impl<'a> RequestValue<'a> for &'a regorus::Value {
    fn into_value(self) -> Option<&'a regorus::Value> {
        Some(self)
    }
}

impl<'a, E> RequestValue<'a> for Result<&'a regorus::Value, E> {
    fn into_value(self) -> Option<&'a regorus::Value> {
        self.ok()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. review: any body through the AdmissionReview parser and the reply.

/// Any request body: parsing, building the policy input, the subject and the replies must not
/// panic, and every reply must serialize.
pub fn review(data: &[u8]) {
    let Ok(parsed) = admission::parse(data) else {
        return;
    };
    let _ = parsed.request().into_value();
    let _ = parsed.subject();
    let _ = parsed.is_policy_subject(&mlguard::policy::WorkloadKinds::default());
    let _ = parsed.object_json();
    let denial = Verdict {
        allowed: false,
        denials: vec!["fuzz: denied".into()],
        ..Default::default()
    };
    for reply in [parsed.reply(&Verdict::default()), parsed.reply(&denial)] {
        serde_json::to_vec(&reply).expect("the reply to a parsed review serializes");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. object: what the policies see of an object is the object, less managedFields.

/// The AdmissionReview the API server would send for creating `object` (a Pod), with the
/// object exactly as given.
pub fn review_of(object: &Json) -> Json {
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "apiVersion": admission::API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": "fuzz",
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": "fuzz",
            "namespace": "fuzz",
            "operation": "CREATE",
            "userInfo": {"username": "fuzz", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// The bytes as a JSON object, wrapped in a well-formed review: unless the body is beyond
/// serde_json's own limits, mlguard must accept it, and `request()["object"]` converted back
/// to JSON must equal the object without `metadata.managedFields`.
pub fn object(data: &[u8]) {
    let Ok(object) = serde_json::from_slice::<Json>(data) else {
        return;
    };
    if !object.is_object() {
        return;
    }
    let body = serde_json::to_vec(&review_of(&object)).expect("a JSON value serializes");
    // Within serde_json's limits: the whole body (two levels deeper than the object) parses.
    if serde_json::from_slice::<Json>(&body).is_err() {
        return;
    }
    let parsed = admission::parse(&body)
        .unwrap_or_else(|e| panic!("a well-formed review was rejected: {e}\n object: {object}"));
    let request = parsed
        .request()
        .into_value()
        .unwrap_or_else(|| panic!("no policy input for a well-formed review\n object: {object}"));
    let seen = serde_json::to_value(&request["object"]).unwrap_or_else(|e| {
        panic!("the policy input's object does not convert back to JSON: {e}\n object: {object}")
    });
    let mut expected = object;
    if let Some(metadata) = expected.get_mut("metadata").and_then(Json::as_object_mut) {
        metadata.remove("managedFields");
    }
    if !same_json(&seen, &expected) {
        panic!("the policies see another object\n sent: {expected}\n seen: {seen}");
    }
}

/// JSON equality where numbers compare by value: `1.0` and `1` are the same number (Rego does
/// not tell them apart), but an integer and a float are equal only if the float is exactly
/// that integer.
pub fn same_json(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => same_number(x, y),
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    // An integral float within i128 as the integer it is.
    let float_int = |f: f64| (f.fract() == 0.0 && f.abs() < 1.0e38).then_some(f as i128);
    match (int(x), int(y)) {
        (Some(i), Some(j)) => i == j,
        (Some(i), None) => y.as_f64().and_then(float_int) == Some(i),
        (None, Some(j)) => x.as_f64().and_then(float_int) == Some(j),
        (None, None) => x.as_f64() == y.as_f64(),
    }
}

// ---------------------------------------------------------------------------------------------
// 3. quantity: mlguard's parser against a reference written from the Kubernetes grammar.

/// What Kubernetes makes of a quantity string, per the reference below.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reference {
    /// Not a quantity.
    Invalid,
    /// A quantity whose value an f64 holds.
    Value(f64),
    /// A quantity Kubernetes accepts whose magnitude no f64 holds (`1e400`).
    OutOfRange,
}

/// A reference parser written from the grammar of apimachinery's `resource.Quantity`:
///
/// ```text
/// <quantity>        ::= <signedNumber><suffix>
/// <signedNumber>    ::= <number> | <sign><number>
/// <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
/// <sign>            ::= "+" | "-"
/// <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
/// <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
/// <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
/// <decimalExponent> ::= "e" <signedInt> | "E" <signedInt>
/// ```
///
/// and its value rules: a non-zero value is rounded up (away from zero) to a multiple of
/// 10^-9, and a binary-SI value is capped at 2^63-1 in magnitude. Surrounding whitespace is
/// trimmed, as `Quantity`'s JSON decoding does (`strings.TrimSpace`). Quirks of the Go scanner
/// that the grammar does not allow (`"+"`, `"."` and `"-"` read as zero) are not modelled.
pub fn reference_quantity(input: &str) -> Reference {
    let s = input.trim();
    let b = s.as_bytes();
    let mut i = 0;
    let negative = match b.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let digits_from = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        j
    };
    let int_end = digits_from(i);
    let int_digits = &s[i..int_end];
    i = int_end;
    let mut frac_digits = "";
    if i < b.len() && b[i] == b'.' {
        let frac_end = digits_from(i + 1);
        frac_digits = &s[i + 1..frac_end];
        i = frac_end;
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Reference::Invalid;
    }
    // (power of two, power of ten)
    let (pow2, pow10): (i32, i64) = match &s[i..] {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        suffix => match suffix.strip_prefix(['e', 'E']).and_then(signed_int) {
            Some(exponent) => (0, exponent),
            None => return Reference::Invalid,
        },
    };
    let mantissa = format!("{int_digits}{frac_digits}");
    let mantissa = mantissa.trim_start_matches('0');
    if mantissa.is_empty() {
        return Reference::Value(0.0);
    }
    let exponent = pow10.saturating_sub(frac_digits.len() as i64);
    // Rust's float parsing rounds correctly, so this is the nearest f64 to the exact value.
    let magnitude: f64 = match format!("{mantissa}e{exponent}").parse::<f64>() {
        Ok(m) => m * 2f64.powi(pow2),
        Err(_) => return Reference::Invalid,
    };
    if magnitude.is_infinite() {
        return if pow2 > 0 {
            Reference::Value(sign(negative, MAX_QUANTITY))
        } else {
            Reference::OutOfRange
        };
    }
    let mut magnitude = magnitude.max(1e-9); // rounded up to the smallest quantity, 1n
    if pow2 > 0 {
        magnitude = magnitude.min(MAX_QUANTITY);
    }
    Reference::Value(sign(negative, magnitude))
}

/// 2^63-1, the largest binary-SI quantity; as an f64, 2^63.
const MAX_QUANTITY: f64 = i64::MAX as f64;

fn sign(negative: bool, magnitude: f64) -> f64 {
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// `[+-]digits` within i32. The grammar does not bound the exponent; apimachinery reads it as
/// an int64 and then truncates it to int32 (so `1e4294967296` is 1), a quirk not modelled:
/// exponents beyond i32 count as invalid here.
fn signed_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let value = digits.parse::<i64>().ok()?;
    let value = if negative { -value } else { value };
    i32::try_from(value).ok().map(i64::from)
}

/// Equal beyond float rounding: within a relative 1e-9, or within one nano-unit (the
/// quantity's own resolution, so sub-nano rounding is not a disagreement).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 + 1e-9 * a.abs().max(b.abs())
}

/// A string through `cluster::quantity::parse`: no panic, finite values, and the same answer
/// as the reference.
pub fn quantity(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let got = mlguard::cluster::quantity::parse(s);
    if let Ok(v) = &got {
        assert!(v.is_finite(), "quantity {s:?} parsed as the non-finite {v}");
    }
    match (got, reference_quantity(s)) {
        (Ok(got), Reference::Value(want)) => assert!(
            close(got, want),
            "quantity {s:?}: mlguard reads {got:e}, Kubernetes {want:e}"
        ),
        (Ok(got), Reference::OutOfRange) => assert!(
            got.abs() >= f64::MAX / 2.0,
            "quantity {s:?} is beyond f64; mlguard reads {got:e}"
        ),
        (Ok(got), Reference::Invalid) => {
            panic!("quantity {s:?}: mlguard reads {got:e}; Kubernetes rejects it")
        }
        (Err(e), Reference::Value(want)) => {
            panic!("quantity {s:?}: mlguard rejects it ({e}); Kubernetes reads {want:e}")
        }
        (Err(_), Reference::Invalid | Reference::OutOfRange) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// 4. patch: the normaliser's output applies, reproduces `patched`, and is idempotent.

/// The bytes as a stream of JSON documents: the first is the object; each later one is an
/// RFC 6902 operation or an array of them (those that do not parse as one are left out).
pub fn patch(data: &[u8]) {
    let mut docs = serde_json::Deserializer::from_slice(data).into_iter::<Json>();
    let Some(Ok(object)) = docs.next() else {
        return;
    };
    let mut ops = Vec::new();
    for doc in docs {
        let Ok(doc) = doc else { break };
        let items = match doc {
            Json::Array(items) => items,
            one => vec![one],
        };
        for item in items.into_iter().take(16) {
            if let Ok(op) = serde_json::from_value::<PatchOperation>(item) {
                ops.push((format!("p{}", ops.len()), op));
            }
        }
        if ops.len() >= 16 {
            break;
        }
    }
    check_patch(object, &ops);
}

/// The invariants of `make_safe(object, ops)` when it succeeds.
pub fn check_patch(object: Json, ops: &[(String, PatchOperation)]) {
    let Ok(safe) = make_safe(object.clone(), ops) else {
        return;
    };
    let requested = || {
        let ops: Vec<_> = ops.iter().map(|(_, op)| op.clone()).collect();
        serde_json::to_string(&ops).unwrap_or_default()
    };
    // The patch as the API server receives it: serialized, then parsed.
    let wire = serde_json::to_value(safe.to_json_patch()).expect("a patch serializes");
    let sent: json_patch::Patch = serde_json::from_value(wire.clone())
        .unwrap_or_else(|e| panic!("the patch sent does not parse back: {e}\n patch: {wire}"));
    let mut applied = object.clone();
    if let Err(e) = json_patch::patch(&mut applied, &sent) {
        panic!(
            "the patch does not apply to the object: {e}\n object: {object}\n requested: {}\n patch: {wire}",
            requested()
        );
    }
    assert!(
        applied == safe.patched,
        "the patch gives another object than `patched`\n object: {object}\n requested: {}\n patch: {wire}\n applied: {applied}\n patched: {}",
        requested(),
        safe.patched
    );
    if idempotent_request(&object, ops) {
        match make_safe(safe.patched.clone(), ops) {
            Ok(again) => assert!(
                again.is_empty(),
                "mutating the mutated object patches again\n object: {object}\n requested: {}\n first: {wire}\n patched: {}\n second: {}",
                requested(),
                safe.patched,
                again.ops_json()
            ),
            Err(e) => panic!(
                "mutating the mutated object fails: {e}\n object: {object}\n requested: {}\n patched: {}",
                requested(),
                safe.patched
            ),
        }
    }
}

/// Whether the requested operations are ones that can be idempotent at all: `add`, `replace`
/// and `remove` only (a `move` cannot apply twice; `copy` and `test` are never dropped), no
/// `remove` of an array element (removing index 0 twice removes two elements), and no two
/// operations on overlapping paths (`replace /a 1` then `replace /a 2` undo each other on a
/// second pass), where an append (`/a/-`) touches its array and indices of one array overlap.
pub fn idempotent_request(object: &Json, ops: &[(String, PatchOperation)]) -> bool {
    let mut keys = Vec::new();
    for (_, op) in ops {
        let path = op.path().as_str();
        let tokens: Vec<&str> = path.split('/').skip(1).collect();
        let (key, append) = match op {
            PatchOperation::Add(_) if tokens.last() == Some(&"-") => {
                (tokens[..tokens.len() - 1].to_vec(), true)
            }
            PatchOperation::Add(_) | PatchOperation::Replace(_) => (tokens, false),
            PatchOperation::Remove(_) => {
                let parent = &path[..path.rfind('/').unwrap_or(0)];
                if object.pointer(parent).is_some_and(Json::is_array) {
                    return false;
                }
                (tokens, false)
            }
            _ => return false,
        };
        keys.push((key, append));
    }
    for (i, (a, a_append)) in keys.iter().enumerate() {
        for (b, b_append) in &keys[i + 1..] {
            if a == b && *a_append && *b_append {
                continue;
            }
            let n = a.len().min(b.len());
            if a[..n] == b[..n] {
                return false;
            }
            let siblings = a.len() == b.len() && n > 0 && a[..n - 1] == b[..n - 1];
            if siblings && is_index(a[n - 1]) && is_index(b[n - 1]) {
                return false;
            }
        }
    }
    true
}

fn is_index(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit())
}
