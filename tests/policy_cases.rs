//! Runs every golden case in tests/cases/ against the embedded default policies, on both
//! evaluators, and writes each mutated object to target/mutated-objects/ so that
//! `scripts/test` can validate them against the Kubernetes OpenAPI schema.

use std::path::Path;

use mlguard::casefile::{collect, run_file, PolicySets};
use mlguard::policy::source::{embedded, Origin};
use mlguard::policy::Backend;

fn run(backend: Backend) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = collect(&[root.join("tests/cases")]);
    assert!(!files.is_empty(), "no case files under tests/cases");
    let dump = root.join("target/mutated-objects");
    std::fs::create_dir_all(&dump).unwrap();
    let base = embedded();
    let origin = Origin::Embedded.into();
    let mut sets = PolicySets::new(&base, &origin, backend);
    let mut failures = Vec::new();
    let mut count = 0;
    for file in files {
        let outcomes = match run_file(&file, &mut sets) {
            Ok(o) => o,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        for o in outcomes {
            count += 1;
            for f in &o.failures {
                failures.push(format!("{} / {}: {f}", o.file.display(), o.name));
            }
            if let (Some(m), Backend::Vm) = (&o.mutated, backend) {
                let stem = file_stem(&o.file);
                let name: String = o
                    .name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                std::fs::write(
                    dump.join(format!("{stem}__{name}.json")),
                    serde_json::to_string_pretty(m).unwrap(),
                )
                .unwrap();
            }
        }
    }
    assert!(count > 0, "no cases ran");
    eprintln!("{count} policy cases ran on the {backend:?} evaluator");
    failures
}

fn file_stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

fn assert_cases_pass(backend: Backend) {
    let failures = run(backend);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn golden_cases_pass_on_the_vm() {
    assert_cases_pass(Backend::Vm);
}

#[test]
fn golden_cases_pass_on_the_interpreter() {
    assert_cases_pass(Backend::Interpreter);
}

/// The default set must run on the bytecode VM: falling back to the interpreter would cost
/// several times the latency on every request.
#[test]
fn default_policies_compile_for_the_vm() {
    let set = mlguard::policy::PolicySet::load(Origin::Embedded, Backend::Vm).unwrap();
    assert_eq!(
        set.backend,
        Backend::Vm,
        "fell back: {:?}",
        set.vm_fallback_reason
    );
    let mut names = set.policy_names();
    names.sort();
    assert_eq!(
        names,
        [
            "gpu_capacity",
            "gpu_checkpoint_volume",
            "gpu_claims",
            "gpu_cpu_memory",
            "gpu_entitlement",
            "gpu_job_backoff",
            "gpu_limits",
            "gpu_memory_limit",
            "gpu_node_affinity",
            "gpu_node_spread",
            "gpu_per_pod_cap",
            "gpu_priority",
            "gpu_quota",
            "gpu_readiness_probe",
            "gpu_runtime_class",
            "gpu_scratch_space",
            "gpu_sharing_isolation",
            "gpu_shm",
            "gpu_spot",
            "gpu_toleration",
            "gpu_unrequested_access",
            "gpu_whole_numbers",
            "job_deadline",
            "job_lifecycle",
        ]
    );
}
