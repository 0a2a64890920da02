//! One grammar for Kubernetes quantities on both sides: the Rego rule the policies use
//! (`data.mlguard.lib.workload.quantity`, run on regorus's interpreter and VM) and mlguard's
//! Rust reader (`cluster::quantity::parse`, used for cluster state and quota charges) give the
//! same answer for every suffix and number form, and refuse the same malformed values.

use mlguard::cluster::quantity;
use mlguard::policy::source::{embedded, FileKind};
use regorus::{Engine, Value};

const CASES: &[&str] = &[
    "0", "8", "20", "+8", "-1", "1.5", "1.", ".5", "0.5", "1n", "5u", "500m", "1k", "2k", "1.1k",
    "3M", "4G", "5T", "6P", "7E", "1Ki", "2Mi", "16Gi", "0.5Gi", "1Ti", "1Pi", "1Ei", "1e3", "1E3",
    "1e+3", "15e-1", "2e0", "1e30", "1e31", "1e300", "1e308", "1e-9", "1e-30", " 1", "2 ", "50Ei",
    "0E123456", // Malformed: each must be refused by both.
    "", " ", "abc", "3 GPUs", "1 k", "1x", "1e", "1ki", "1KI", "1.2.3", ".", "+", "1e1.5", "1ee3",
    "--1", "1Mi3", "k", "1e400",
];

fn engine() -> Engine {
    let mut engine = Engine::new();
    for file in embedded().into_iter().filter(|f| f.kind == FileKind::Rego) {
        engine.add_policy(file.name, file.text).unwrap();
    }
    engine
}

fn rego_value(engine: &mut Engine, input: &str) -> Option<f64> {
    let query = format!("data.mlguard.lib.workload.quantity({})", Value::from(input));
    let results = engine.eval_query(query, false).unwrap();
    let value = &results.result.first()?.expressions.first()?.value;
    let json: serde_json::Value = serde_json::to_value(value).unwrap();
    json.as_f64()
}

#[test]
fn rego_and_rust_read_every_quantity_alike() {
    let mut engine = engine();
    let mut differences = Vec::new();
    for input in CASES {
        let rust = quantity::parse(input).ok();
        let rego = rego_value(&mut engine, input);
        let same = match (rust, rego) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            (None, None) => true,
            _ => false,
        };
        if !same {
            differences.push(format!("{input:?}: Rust {rust:?}, Rego {rego:?}"));
        }
    }
    assert!(differences.is_empty(), "{differences:#?}");
}

#[test]
fn the_malformed_cases_are_refused() {
    // The list above is not all readable: the comparison would pass trivially otherwise.
    let refused = CASES.iter().filter(|c| quantity::parse(c).is_err()).count();
    assert_eq!(refused, 18);
}
