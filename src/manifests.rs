//! `mlguard manifests`: the webhook configurations' rules and GPU matchConditions, derived
//! from the policy configuration (`policy::webhooks`), printed, or written into and checked
//! against the repository's kustomize base and Helm chart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{ManifestsAction, ManifestsArgs};
use crate::policy::webhooks::{render_component, render_helm, render_kustomize, WebhookMatch};

/// Where the generated files live, relative to the repository root.
pub const KUSTOMIZE_FILE: &str = "manifests/common/webhooks.yaml";
pub const HELM_FILE: &str = "charts/mlguard/templates/_match.tpl";
pub const COMPONENT_FILE: &str = "manifests/components/all-objects/kustomization.yaml";

/// The generated files for a configuration, as (path below the root, content).
pub fn generated(config: &serde_json::Value) -> Result<Vec<(PathBuf, String)>, String> {
    let m = WebhookMatch::from_config(config)?;
    Ok(vec![
        (PathBuf::from(KUSTOMIZE_FILE), render_kustomize(&m)),
        (PathBuf::from(HELM_FILE), render_helm(&m)),
        (PathBuf::from(COMPONENT_FILE), render_component(&m)),
    ])
}

/// The generated files that differ from those under `root`.
pub fn stale(root: &Path, config: &serde_json::Value) -> Result<Vec<PathBuf>, String> {
    Ok(generated(config)?
        .into_iter()
        .filter(|(path, text)| {
            std::fs::read_to_string(root.join(path)).ok().as_deref() != Some(text)
        })
        .map(|(path, _)| path)
        .collect())
}

fn config_of(args: &ManifestsArgs) -> Result<serde_json::Value, String> {
    let (origin, _) = crate::config::policy_origin(&args.policy).map_err(|e| e.to_string())?;
    let files = crate::policy::layers::read(&origin).map_err(|e| e.to_string())?;
    let config = crate::policy::settings::build_config(&files).map_err(|e| e.to_string())?;
    // The same check as at policy load, so that a broken table is refused here too.
    crate::policy::kinds::parse(&config).map_err(|e| e.to_string())?;
    Ok(config)
}

pub fn run(args: &ManifestsArgs) -> ExitCode {
    let result = (|| -> Result<ExitCode, String> {
        let config = config_of(args)?;
        match &args.action {
            ManifestsAction::MatchConditions => {
                println!("{}", WebhookMatch::from_config(&config)?.gpu_expression());
            }
            ManifestsAction::Rules => {
                let m = WebhookMatch::from_config(&config)?;
                for r in m.gpu_rules() {
                    let ops = if r.update { "CREATE, UPDATE" } else { "CREATE" };
                    println!(
                        "- {{apiGroups: [\"{}\"], apiVersions: [\"{}\"], operations: [{ops}], resources: [\"{}\"], scope: Namespaced}}",
                        r.group, r.version, r.resource
                    );
                }
            }
            ManifestsAction::Write { root } => {
                for (path, text) in generated(&config)? {
                    let full = root.join(&path);
                    if let Some(dir) = full.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                    }
                    std::fs::write(&full, text)
                        .map_err(|e| format!("cannot write {}: {e}", full.display()))?;
                    println!("wrote {}", full.display());
                }
            }
            ManifestsAction::Check { root } => {
                let stale = stale(root, &config)?;
                if !stale.is_empty() {
                    for p in &stale {
                        eprintln!(
                            "mlguard manifests: {} differs from the policy configuration; run `mlguard manifests write`",
                            root.join(p).display()
                        );
                    }
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })();
    result.unwrap_or_else(|e| {
        eprintln!("mlguard manifests: {e}");
        ExitCode::from(2)
    })
}
