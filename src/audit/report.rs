//! Renders an audit [`Report`] as text, JSON or JUnit XML. Pure functions of the report, so
//! each format is unit-tested without running anything.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{json, Value as Json};

use super::{Admission, Change, ObjectReport, Report, Status, Summary};
use crate::admission::Mode;

/// Version of the JSON report's shape (docs/audit.md); bumped on any incompatible change.
pub const JSON_SCHEMA_VERSION: u32 = 1;

const VALUE_WIDTH: usize = 100;

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

/// "add /spec/tolerations = [...]  (gpu_toleration)".
fn describe(change: &Change) -> String {
    let op = &change.op;
    let mut s = format!(
        "{} {}",
        op["op"].as_str().unwrap_or("?"),
        op["path"].as_str().unwrap_or("?")
    );
    if let Some(v) = op.get("value") {
        let _ = write!(s, " = {}", truncate(&v.to_string(), VALUE_WIDTH));
    }
    let _ = write!(s, "  [{}]", change.policy);
    s
}

/// Whether `change` only creates the empty parent that `next` fills (the engine adds those so
/// that the patch applies); the text report shows the operation that matters.
fn creates_parent_of(change: &Change, next: Option<&Change>) -> bool {
    let empty = change.op["value"]
        .as_array()
        .map(Vec::is_empty)
        .or_else(|| {
            change.op["value"]
                .as_object()
                .map(serde_json::Map::is_empty)
        })
        .unwrap_or(false);
    let path = change.op["path"].as_str().unwrap_or_default();
    empty
        && change.op["op"] == "add"
        && next.is_some_and(|n| {
            n.policy == change.policy
                && n.op["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("{path}/")))
        })
}

/// Every finding of an admission as (label, text), in the order a reader needs them.
fn findings(a: &Admission) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    out.extend(a.denials.iter().map(|m| ("deny", m.clone())));
    out.extend(a.warnings.iter().map(|m| ("warn", m.clone())));
    out.extend(a.would_deny.iter().map(|m| ("would-deny", m.clone())));
    out.extend(a.would_patch.iter().map(|m| ("would-patch", m.clone())));
    out.extend(
        a.patch
            .iter()
            .enumerate()
            .filter(|(i, c)| !creates_parent_of(c, a.patch.get(i + 1)))
            .map(|(_, c)| ("patch", describe(c))),
    );
    out.extend(a.repatch.iter().map(|op| {
        let msg = format!("mutating again changes {op}: a policy is not idempotent");
        ("repatch", msg)
    }));
    out
}

fn object_label(o: &ObjectReport) -> String {
    match (o.id.kind.as_str(), o.id.name.as_str()) {
        ("", _) => "(no kind)".to_string(),
        (kind, "") => format!("{kind}/(unnamed)"),
        (kind, name) => format!("{kind}/{name}"),
    }
}

/// Whether an admission is the manifest object itself (a Pod or Job as written).
fn is_itself(o: &ObjectReport, a: &Admission) -> bool {
    o.admissions.len() == 1 && a.kind == o.id.kind && a.name == o.id.name
}

/// Objects grouped by namespace; documents that are not Kubernetes objects come last.
fn by_namespace(report: &Report) -> Vec<(Option<&str>, Vec<&ObjectReport>)> {
    let mut groups: BTreeMap<&str, Vec<&ObjectReport>> = BTreeMap::new();
    let mut invalid = Vec::new();
    for o in &report.objects {
        if o.id.kind.is_empty() {
            invalid.push(o);
        } else {
            groups.entry(o.id.namespace.as_str()).or_default().push(o);
        }
    }
    let mut out: Vec<(Option<&str>, Vec<&ObjectReport>)> =
        groups.into_iter().map(|(k, v)| (Some(k), v)).collect();
    if !invalid.is_empty() {
        out.push((None, invalid));
    }
    out
}

fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn status_color(s: Status) -> &'static str {
    match s {
        Status::Denied => "1;31",
        Status::Warned => "33",
        Status::Mutated => "36",
        Status::Clean => "32",
        Status::Skipped => "2",
        Status::Error => "1;35",
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// "12 objects: 2 denied, 3 warned, 5 mutated, 2 clean, 1 skipped, 0 errors".
pub fn summary_line(s: &Summary) -> String {
    format!(
        "{}: {} denied, {} warned, {} mutated, {} clean, {} skipped, {}",
        plural(s.objects, "object"),
        s.denied,
        s.warned,
        s.mutated,
        s.clean,
        s.skipped,
        plural(s.errors, "error")
    )
}

/// A table grouped by namespace and object, each object's findings under it, and a summary
/// line. `color` adds ANSI colors (for a terminal).
pub fn text(report: &Report, color: bool) -> String {
    text_of(report, color, |_| true)
}

/// Whether an object belongs in `--failures-only` output: the API server would reject it, or
/// it could not be audited.
pub fn is_failure(o: &ObjectReport) -> bool {
    matches!(o.status, Status::Denied | Status::Error)
}

/// [`text`] with only the objects that would be denied or are in error; the summary line
/// still counts every object, so nothing is hidden from the totals.
pub fn failures_text(report: &Report, color: bool) -> String {
    text_of(report, color, is_failure)
}

fn text_of(report: &Report, color: bool, shown: impl Fn(&ObjectReport) -> bool) -> String {
    let width = report
        .objects
        .iter()
        .filter(|o| shown(o))
        .map(|o| object_label(o).chars().count())
        .max()
        .unwrap_or(0)
        .min(56);
    let mut out = String::new();
    for (namespace, objects) in by_namespace(report) {
        let objects: Vec<&ObjectReport> = objects.into_iter().filter(|o| shown(o)).collect();
        if objects.is_empty() {
            continue;
        }
        let heading = match namespace {
            Some(ns) => format!("namespace {ns}"),
            None => "not Kubernetes objects".to_string(),
        };
        let _ = writeln!(out, "{}", paint(color, "1", &heading));
        for o in objects {
            let status = format!("{:<8}", o.status.as_str().to_uppercase());
            let _ = writeln!(
                out,
                "  {} {:<width$}  {}",
                paint(color, status_color(o.status), &status),
                object_label(o),
                paint(color, "2", &o.source.to_string()),
            );
            if let Some(m) = &o.message {
                if o.status == Status::Error {
                    let _ = writeln!(out, "{:11}{m}", "");
                }
            }
            for a in &o.admissions {
                let mut indent = 11;
                let found = findings(a);
                if !is_itself(o, a) {
                    let _ = writeln!(
                        out,
                        "{:indent$}{}  {}",
                        "",
                        a.subject(),
                        a.status().as_str()
                    );
                    indent += 2;
                }
                for (label, message) in found {
                    let _ = writeln!(out, "{:indent$}{label:<11} {message}", "");
                }
            }
        }
        out.push('\n');
    }
    if report.mode != Mode::Enforce {
        let _ = writeln!(
            out,
            "mode {}: every policy is capped at {}, so nothing is denied",
            report.mode.as_str(),
            report.mode.cap().as_str()
        );
    }
    let _ = writeln!(out, "{}", summary_line(&report.summary()));
    out
}

/// The mutated objects as multi-document YAML, each headed by a comment naming it.
pub fn patched_yaml(report: &Report) -> String {
    let mut out = String::new();
    for o in &report.objects {
        for a in &o.admissions {
            let Some(object) = &a.patched else { continue };
            let _ = writeln!(out, "---\n# {} (from {})", a.subject(), o.source);
            out.push_str(&serde_yaml::to_string(object).unwrap_or_default());
        }
    }
    out
}

fn admission_json(a: &Admission, show_patched: bool) -> Json {
    let patch: Vec<Json> = a
        .patch
        .iter()
        .map(|c| {
            let mut op = c.op.clone();
            op["policy"] = json!(c.policy);
            op
        })
        .collect();
    let mut v = json!({
        "kind": a.kind,
        "namespace": a.namespace,
        "name": a.name,
        "status": a.status().as_str(),
        "denials": a.denials,
        "warnings": a.warnings,
        "wouldDeny": a.would_deny,
        "wouldPatch": a.would_patch,
        "patch": patch,
        "repatch": a.repatch,
    });
    if show_patched {
        v["patched"] = a.patched.clone().unwrap_or(Json::Null);
    }
    v
}

/// The stable JSON report (schema in docs/audit.md).
pub fn json(report: &Report, show_patched: bool) -> String {
    let s = report.summary();
    let objects: Vec<Json> = report
        .objects
        .iter()
        .map(|o| {
            let id = |v: &str| if v.is_empty() { Json::Null } else { json!(v) };
            json!({
                "file": o.source.file,
                "index": o.source.index,
                "apiVersion": id(&o.id.api_version),
                "kind": id(&o.id.kind),
                "namespace": id(&o.id.namespace),
                "name": id(&o.id.name),
                "status": o.status.as_str(),
                "message": o.message,
                "admissions": o.admissions.iter().map(|a| admission_json(a, show_patched)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut summary = serde_json::Map::new();
    summary.insert("objects".into(), json!(s.objects));
    for status in Status::ALL {
        let key = if status == Status::Error {
            "errors"
        } else {
            status.as_str()
        };
        summary.insert(key.into(), json!(s.count(status)));
    }
    let doc = json!({
        "schemaVersion": JSON_SCHEMA_VERSION,
        "mode": report.mode.as_str(),
        "summary": summary,
        "objects": objects,
    });
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}

/// Escapes text for XML 1.0 attributes and content. Characters XML 1.0 cannot carry at all
/// (most control characters) become U+FFFD, so the document always parses.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn testcase(out: &mut String, o: &ObjectReport, classname: &str, show_patched: bool) {
    let _ = write!(
        out,
        "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\"",
        xml_escape(classname),
        xml_escape(&if o.id.kind.is_empty() {
            o.source.to_string()
        } else {
            object_label(o)
        }),
        xml_escape(&o.source.file)
    );
    let mut body = String::new();
    let message = o.message.as_deref().unwrap_or_default();
    match o.status {
        Status::Denied => {
            let denials: Vec<String> = o
                .admissions
                .iter()
                .flat_map(|a| {
                    a.denials
                        .iter()
                        .map(move |d| format!("{}: {d}", a.subject()))
                })
                .collect();
            let first = denials.first().cloned().unwrap_or_default();
            let _ = writeln!(
                body,
                "      <failure type=\"denied\" message=\"{}\">{}\n{}</failure>",
                xml_escape(&first),
                xml_escape(&o.source.to_string()),
                xml_escape(&denials.join("\n"))
            );
        }
        Status::Skipped => {
            let _ = writeln!(body, "      <skipped message=\"{}\"/>", xml_escape(message));
        }
        Status::Error => {
            let _ = writeln!(
                body,
                "      <error type=\"error\" message=\"{}\">{}</error>",
                xml_escape(message),
                xml_escape(&o.source.to_string())
            );
        }
        _ => {}
    }
    let mut notes = String::new();
    for a in &o.admissions {
        for (label, m) in findings(a).into_iter().filter(|(l, _)| *l != "deny") {
            let _ = writeln!(notes, "{}: {label} {m}", a.subject());
        }
        if let (true, Some(p)) = (show_patched, &a.patched) {
            let _ = writeln!(
                notes,
                "---\n# {}\n{}",
                a.subject(),
                serde_yaml::to_string(p).unwrap_or_default()
            );
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(
            body,
            "      <system-out>{}</system-out>",
            xml_escape(&notes)
        );
    }
    if body.is_empty() {
        out.push_str("/>\n");
    } else {
        let _ = write!(out, ">\n{body}    </testcase>\n");
    }
}

/// JUnit XML: a test suite per namespace, a test case per manifest object. Denied objects are
/// failures (with every denial), documents that are not Kubernetes objects are errors, kinds
/// mlguard does not admit are skipped; warnings and changes go to `system-out`.
pub fn junit(report: &Report, show_patched: bool) -> String {
    let s = report.summary();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"mlguard audit\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\">",
        s.objects, s.denied, s.errors, s.skipped
    );
    for (namespace, objects) in by_namespace(report) {
        let name = namespace.map_or("not Kubernetes objects".to_string(), |ns| {
            format!("namespace {ns}")
        });
        let count = |st: Status| objects.iter().filter(|o| o.status == st).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\">",
            xml_escape(&name),
            objects.len(),
            count(Status::Denied),
            count(Status::Error),
            count(Status::Skipped)
        );
        for o in objects {
            testcase(&mut out, o, namespace.unwrap_or("invalid"), show_patched);
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::objects::{Identity, Source};
    use super::*;

    fn object(
        kind: &str,
        ns: &str,
        name: &str,
        admissions: Vec<Admission>,
        status: Status,
    ) -> ObjectReport {
        ObjectReport {
            source: Source {
                file: "k8s/a.yaml".into(),
                index: 1,
            },
            id: Identity {
                api_version: "v1".into(),
                kind: kind.into(),
                namespace: ns.into(),
                name: name.into(),
            },
            status,
            message: None,
            admissions,
        }
    }

    fn sample() -> Report {
        let denied = Admission {
            kind: "Pod".into(),
            namespace: "ml".into(),
            name: "train".into(),
            denials: vec!["[gpu] needs a <limit> & \"more\"".into()],
            ..Default::default()
        };
        let mutated = Admission {
            kind: "Pod".into(),
            namespace: "ml".into(),
            name: "serve-abc-*".into(),
            patch: vec![Change {
                policy: "tol".into(),
                op: json!({"op": "add", "path": "/spec/tolerations", "value": []}),
            }],
            patched: Some(json!({"kind": "Pod"})),
            ..Default::default()
        };
        let mut invalid = object("", "", "", vec![], Status::Error);
        invalid.id = Identity::default();
        invalid.message = Some("not a Kubernetes object: no kind\u{1}".into());
        Report {
            mode: Mode::Enforce,
            policies: vec!["gpu".into(), "tol".into()],
            objects: vec![
                object("Pod", "ml", "train", vec![denied], Status::Denied),
                object("Deployment", "ml", "serve", vec![mutated], Status::Mutated),
                object("ConfigMap", "default", "c", vec![], Status::Skipped),
                invalid,
            ],
        }
    }

    #[test]
    fn text_groups_by_namespace_and_ends_with_a_summary() {
        let t = text(&sample(), false);
        assert!(!t.contains('\x1b'));
        let default = t.find("namespace default").unwrap();
        let ml = t.find("namespace ml").unwrap();
        let invalid = t.find("not Kubernetes objects").unwrap();
        assert!(default < ml && ml < invalid, "{t}");
        assert!(t.contains("DENIED   Pod/train"), "{t}");
        assert!(t.contains("Pod ml/serve-abc-*  mutated"), "{t}");
        assert!(
            t.contains("patch       add /spec/tolerations = []  [tol]"),
            "{t}"
        );
        assert!(t.contains("ERROR    (no kind)"), "{t}");
        assert!(
            t.trim_end()
                .ends_with("4 objects: 1 denied, 0 warned, 1 mutated, 0 clean, 1 skipped, 1 error"),
            "{t}"
        );
        assert!(text(&sample(), true).contains("\x1b[1;31mDENIED"));
    }

    #[test]
    fn failures_only_keeps_denied_and_error_objects_and_the_whole_summary() {
        let t = failures_text(&sample(), false);
        assert!(t.contains("DENIED   Pod/train"), "{t}");
        assert!(t.contains("ERROR    (no kind)"), "{t}");
        assert!(!t.contains("serve") && !t.contains("ConfigMap"), "{t}");
        assert!(
            !t.contains("namespace default"),
            "no heading without objects: {t}"
        );
        assert!(
            t.trim_end()
                .ends_with("4 objects: 1 denied, 0 warned, 1 mutated, 0 clean, 1 skipped, 1 error"),
            "{t}"
        );
        let mut clean = sample();
        clean.objects.retain(|o| !is_failure(o));
        let only_summary = failures_text(&clean, false);
        assert_eq!(only_summary.lines().count(), 1, "{only_summary}");
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v: Json = serde_json::from_str(&json(&sample(), true)).unwrap();
        assert_eq!(v["schemaVersion"], 1);
        assert_eq!(v["summary"]["denied"], 1);
        assert_eq!(v["summary"]["errors"], 1);
        assert_eq!(
            v["objects"][1]["admissions"][0]["patch"][0]["policy"],
            "tol"
        );
        assert_eq!(v["objects"][1]["admissions"][0]["patched"]["kind"], "Pod");
        assert_eq!(v["objects"][3]["kind"], Json::Null);
        let without: Json = serde_json::from_str(&json(&sample(), false)).unwrap();
        assert!(without["objects"][1]["admissions"][0]
            .get("patched")
            .is_none());
    }

    #[test]
    fn junit_escapes_and_counts() {
        let x = junit(&sample(), false);
        assert!(
            x.contains("tests=\"4\" failures=\"1\" errors=\"1\" skipped=\"1\""),
            "{x}"
        );
        assert!(
            x.contains("needs a &lt;limit&gt; &amp; &quot;more&quot;"),
            "{x}"
        );
        assert!(!x.contains('\u{1}'));
        assert_eq!(x.matches("<testcase").count(), 4);
        assert_eq!(
            x.matches("<testsuite ").count(),
            x.matches("</testsuite>").count()
        );
    }

    #[test]
    fn escape_covers_control_characters() {
        assert_eq!(xml_escape("a\u{0}b\n'"), "a\u{FFFD}b\n&apos;");
    }
}
