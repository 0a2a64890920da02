//! One VM run per stage and operation for every policy without parameters: generated Rego
//! rules that refer to each policy's rules, so that the helpers they share (the pod's
//! containers, its GPU resources) are computed once per review instead of once per policy.

use super::set::{Policy, Stage};

/// Package of the generated rules that evaluate a stage's policies in one VM run.
pub(crate) const PACKAGE: &str = "mlguard.internal.combined";
pub(crate) const OPERATIONS: [&str; 2] = ["CREATE", "UPDATE"];

/// Whether a policy can share a VM run with others: `input.parameters` is per policy, so only
/// policies without parameters (which see `{}` either way) are combined.
pub(crate) fn combinable(policy: &Policy) -> bool {
    policy.parameters.as_object().is_ok_and(|o| o.is_empty())
}

/// The entry point that evaluates, in one VM run, every combinable policy that applies to
/// `operation` at `stage`. Its value maps each policy name to its rules' values.
pub(crate) fn entry_point(stage: Stage, operation: &str) -> String {
    format!(
        "data.{PACKAGE}.{}_{}",
        stage.as_str(),
        operation.to_ascii_lowercase()
    )
}

/// The Rego of the combined rules. A VM run starts with an empty rule cache, so evaluating
/// each policy as its own entry point computes the helpers they share (the pod's containers,
/// its GPU resources) once per policy; one rule referring to all of them computes them once.
pub(crate) fn module(policies: &[Policy]) -> String {
    let mut text = format!("package {PACKAGE}\n\nimport rego.v1\n");
    for operation in OPERATIONS {
        for stage in Stage::ALL {
            let fields: Vec<String> = policies
                .iter()
                .filter(|p| combinable(p) && p.settings.applies_to(operation))
                .filter_map(|p| {
                    let rules: Vec<String> = p
                        .rules_at(stage)
                        .map(|r| format!("{:?}: {}", r.as_str(), p.entry_point(r)))
                        .collect();
                    (!rules.is_empty()).then(|| format!("{:?}: {{{}}}", p.name, rules.join(", ")))
                })
                .collect();
            let name = entry_point(stage, operation);
            let rule = name.rsplit('.').next().unwrap_or_default();
            text += &format!("\n{rule} := {{\n\t{}\n}}\n", fields.join(",\n\t"));
        }
    }
    text
}
