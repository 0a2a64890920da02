//! The AdmissionReview fixtures in tests/fixtures/reviews answer as their README says.

use std::path::Path;
use std::sync::Arc;

use mlguard::admission::Mode;
use mlguard::policy::source::Origin;
use mlguard::policy::{Backend, Evaluator, PolicySet, Stage};
use mlguard::sim::answer;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the webhook answers: allowed, and how many patch operations.
fn outcome(evaluator: &Evaluator, file: &str, stage: Stage) -> (bool, usize, Vec<String>) {
    let body = std::fs::read(root().join("tests/fixtures/reviews").join(file)).unwrap();
    let reply = answer(evaluator, &body, stage, Mode::Enforce).unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let response = &reply["response"];
    assert_eq!(
        response["uid"], request["request"]["uid"],
        "{file}: uid echoed"
    );
    // The patch is a base64 string, as the AdmissionReview API documents it.
    let bytes: Option<Vec<u8>> = match &response["patch"] {
        serde_json::Value::String(p) => {
            use base64::Engine;
            Some(base64::engine::general_purpose::STANDARD.decode(p).unwrap())
        }
        serde_json::Value::Null => None,
        other => panic!("{file}: patch is not a base64 string: {other}"),
    };
    let ops = bytes.map_or(0, |b| {
        serde_json::from_slice::<Vec<serde_json::Value>>(&b)
            .unwrap()
            .len()
    });
    let warnings = response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (response["allowed"] == true, ops, warnings)
}

fn evaluator(origin: Origin) -> Evaluator {
    let set = PolicySet::load(origin, Backend::Vm).unwrap();
    Evaluator::new(set, Arc::default()).unwrap()
}

#[test]
fn fixtures_are_real_reviews_of_the_documented_size() {
    let dir = root().join("tests/fixtures/reviews");
    let size = |f: &str| std::fs::metadata(dir.join(f)).unwrap().len();
    assert!((2_500..4_000).contains(&size("pod-small.json")));
    assert!((8_000..10_500).contains(&size("pod-gpu-job.json")));
    assert!(size("pod-large.json") >= 256 * 1024);
    let gpu: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("pod-gpu-job.json")).unwrap()).unwrap();
    let meta = &gpu["request"]["object"]["metadata"];
    assert!(meta["managedFields"].is_array());
    assert_eq!(meta["ownerReferences"][0]["kind"], "Job");
    assert!(meta["generateName"].is_string() && meta["name"].is_null());
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.ends_with(".json") {
            assert!(readme.contains(&name), "README.md does not describe {name}");
        }
    }
}

#[test]
fn outcomes_under_the_benchmark_policies() {
    let e = evaluator(Origin::Directory(root().join("benches/policies")));
    use Stage::{Mutate, Validate};
    // (file, stage, allowed, patch operations)
    let expected = [
        ("pod-small.json", Mutate, true, 0),
        ("pod-small.json", Validate, true, 0),
        ("pod-gpu-job.json", Mutate, true, 1),
        ("pod-gpu-job.json", Validate, true, 0),
        ("pod-large.json", Mutate, true, 1),
        ("pod-large.json", Validate, true, 0),
        ("pod-gpu-no-limit.json", Mutate, true, 1),
        ("pod-gpu-no-limit.json", Validate, false, 0),
        ("job-create.json", Mutate, true, 1),
        ("job-create.json", Validate, false, 0),
        ("pod-update.json", Mutate, true, 0),
        ("pod-update.json", Validate, true, 0),
        ("deployment.json", Mutate, true, 0),
        ("deployment.json", Validate, true, 0),
    ];
    for (file, stage, allowed, ops) in expected {
        let (a, o, _) = outcome(&e, file, stage);
        assert_eq!((a, o), (allowed, ops), "{file} at {}", stage.as_str());
    }
    let (_, _, warnings) = outcome(&e, "pod-gpu-no-limit.json", Validate);
    assert_eq!(
        warnings.len(),
        1,
        "unlabelled GPU pod is warned: {warnings:?}"
    );
}

#[test]
fn outcomes_under_the_default_policies() {
    let e = evaluator(Origin::Embedded);
    use Stage::{Mutate, Validate};
    // (file, stage, allowed, patched): the default set's exact operations are its own golden
    // cases' business; here only the kind of answer each fixture stands for.
    let expected = [
        ("pod-small.json", Mutate, true, false),
        ("pod-small.json", Validate, true, false),
        ("pod-gpu-job.json", Mutate, true, true),
        ("pod-gpu-job.json", Validate, true, false),
        ("pod-large.json", Mutate, true, true),
        ("pod-large.json", Validate, true, false),
        ("pod-gpu-no-limit.json", Mutate, true, true),
        ("pod-gpu-no-limit.json", Validate, false, false),
        ("job-create.json", Mutate, true, true),
        ("job-create.json", Validate, false, false),
        ("pod-update.json", Mutate, true, false),
        ("pod-update.json", Validate, true, false),
        ("deployment.json", Mutate, true, false),
        ("deployment.json", Validate, true, false),
    ];
    for (file, stage, allowed, patched) in expected {
        let (a, ops, _) = outcome(&e, file, stage);
        assert_eq!(
            (a, ops > 0),
            (allowed, patched),
            "{file} at {}",
            stage.as_str()
        );
    }
}

/// On the VM the policies of a stage run together in one VM run; the outputs must be exactly
/// those of each policy run on its own.
#[test]
fn combined_evaluation_equals_policy_by_policy() {
    for origin in [
        Origin::Embedded,
        Origin::Directory(root().join("benches/policies")),
    ] {
        let e = evaluator(origin);
        assert_eq!(e.set.backend, Backend::Vm);
        for entry in std::fs::read_dir(root().join("tests/fixtures/reviews")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let parsed = mlguard::admission::parse(&std::fs::read(&path).unwrap()).unwrap();
            for stage in [Stage::Mutate, Stage::Validate] {
                let together = e.evaluate(parsed.request().unwrap(), stage);
                let apart: Vec<_> = e
                    .set
                    .policies
                    .iter()
                    .filter(|p| p.settings.applies_to(&parsed.operation))
                    .filter_map(|p| e.evaluate_policy(parsed.request().unwrap(), stage, &p.name))
                    .filter(|o| !o.is_empty())
                    .collect();
                assert_eq!(together, apart, "{} at {}", path.display(), stage.as_str());
            }
        }
    }
}
