//! `mlguard bench`: an admin's own policies on their own manifests, in-process, so that they
//! can see what a review costs and which policy is slow before they deploy.
//!
//! Every manifest becomes the AdmissionReview the API server would send (an AdmissionReview
//! file is used as it is). Each review goes through the same pipeline as the webhook handler
//! (parse, evaluate, decide, reply, serialize), once for `/mutate` and once for `/validate`.
//! Then every policy is timed alone on the same reviews.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::admission::{self, admit, Mode};
use crate::alloc::allocated_while;
use crate::cli::{BenchArgs, BenchOutput};
use crate::cluster::{snapshot, ClusterState};
use crate::policy::{Evaluator, PolicySet, Stage};
use crate::sim::{answer, read_reviews, Review};

/// Latency samples in nanoseconds and what they allocated.
#[derive(Debug, Default, Clone)]
struct Samples {
    nanos: Vec<u64>,
    bytes: u64,
}

impl Samples {
    fn add(&mut self, elapsed: Duration, bytes: u64) {
        self.nanos.push(elapsed.as_nanos() as u64);
        self.bytes += bytes;
    }
    fn merge(&mut self, other: Samples) {
        self.nanos.extend(other.nanos);
        self.bytes += other.bytes;
    }
    fn summary(&mut self, wall: Option<Duration>) -> Json {
        self.nanos.sort_unstable();
        let n = self.nanos.len().max(1) as f64;
        let pct = |p: f64| -> f64 {
            if self.nanos.is_empty() {
                return 0.0;
            }
            let i = ((p / 100.0) * (self.nanos.len() - 1) as f64).round() as usize;
            self.nanos[i] as f64 / 1000.0
        };
        let total: u64 = self.nanos.iter().sum();
        let mut out = json!({
            "reviews": self.nanos.len(),
            "mean_us": round(total as f64 / n / 1000.0),
            "p50_us": round(pct(50.0)),
            "p99_us": round(pct(99.0)),
            "max_us": round(pct(100.0)),
            "alloc_bytes_per_review": (self.bytes as f64 / n).round(),
        });
        if let Some(wall) = wall {
            out["reviews_per_second"] =
                json!((self.nanos.len() as f64 / wall.as_secs_f64()).round());
            out["wall_seconds"] = json!(round(wall.as_secs_f64()));
        }
        out
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `f`'s result, how long it took and the bytes it allocated.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, u64) {
    let started = Instant::now();
    let (out, bytes) = allocated_while(f);
    (out, started.elapsed(), bytes)
}

/// The whole pipeline, `iterations` times over every review and stage, on `threads` threads.
/// Returns the samples of all and of each review, and the wall time.
fn run_pipeline(
    evaluator: &Evaluator,
    reviews: &[Review],
    mode: Mode,
    iterations: usize,
    threads: usize,
) -> (Samples, Vec<Samples>, Duration, Vec<String>) {
    let started = Instant::now();
    let per_thread: Vec<(Vec<Samples>, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut samples = vec![Samples::default(); reviews.len()];
                    let mut errors = Vec::new();
                    // Iterations are dealt out to threads round-robin.
                    for _ in (t..iterations).step_by(threads) {
                        for (i, review) in reviews.iter().enumerate() {
                            for stage in Stage::ALL {
                                let (result, elapsed, alloc) =
                                    timed(|| answer(evaluator, &review.body, stage, mode));
                                samples[i].add(elapsed, alloc);
                                if let Err(e) = result {
                                    if errors.is_empty() {
                                        errors.push(format!("{}: {e}", review.name));
                                    }
                                }
                            }
                        }
                    }
                    (samples, errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let wall = started.elapsed();
    let mut by_review = vec![Samples::default(); reviews.len()];
    let mut errors = Vec::new();
    for (samples, errs) in per_thread {
        for (acc, s) in by_review.iter_mut().zip(samples) {
            acc.merge(s);
        }
        errors.extend(errs);
    }
    let mut all = Samples::default();
    for s in &by_review {
        all.merge(s.clone());
    }
    (all, by_review, wall, errors)
}

/// Every policy alone on every parsed review, for the stages it has rules for.
fn run_policies(evaluator: &Evaluator, reviews: &[Review], iterations: usize) -> Vec<Json> {
    let parsed: Vec<_> = reviews
        .iter()
        .filter_map(|r| admission::parse(&r.body).ok())
        .filter(|p| p.is_policy_subject(&evaluator.set.kinds))
        .collect();
    let mut rows: Vec<(String, Vec<&str>, Samples, usize)> = Vec::new();
    for policy in &evaluator.set.policies {
        let mut samples = Samples::default();
        let mut fired = 0;
        for _ in 0..iterations {
            for review in &parsed {
                if !policy.settings.applies_to(&review.operation) {
                    continue;
                }
                for stage in Stage::ALL {
                    let (out, elapsed, alloc) = timed(|| match review.request() {
                        Ok(request) => evaluator.evaluate_policy(request, stage, &policy.name),
                        Err(_) => None,
                    });
                    samples.add(elapsed, alloc);
                    fired += usize::from(out.is_some_and(|o| !o.is_empty()));
                }
            }
        }
        let rules = policy.rules.iter().map(|r| r.as_str()).collect();
        rows.push((
            policy.name.clone(),
            rules,
            samples,
            fired / iterations.max(1),
        ));
    }
    let total_us: f64 = rows
        .iter()
        .map(|(_, _, s, _)| s.nanos.iter().sum::<u64>() as f64 / 1000.0)
        .sum();
    rows.into_iter()
        .map(|(name, rules, mut samples, fired)| {
            let spent = samples.nanos.iter().sum::<u64>() as f64 / 1000.0;
            let mut row = samples.summary(None);
            row["policy"] = json!(name);
            row["rules"] = json!(rules);
            row["findings_per_pass"] = json!(fired);
            row["share_percent"] = json!(if total_us > 0.0 {
                round(100.0 * spent / total_us)
            } else {
                0.0
            });
            row
        })
        .collect()
}

/// What each webhook answers for `review`: allowed, patched, warned, denied or error.
fn outcomes(evaluator: &Evaluator, review: &Review, mode: Mode) -> Json {
    match admission::parse(&review.body) {
        Err(e) => json!({ "error": e.to_string() }),
        Ok(parsed) => {
            let mut out = serde_json::Map::new();
            for stage in Stage::ALL {
                let verdict = admit(evaluator, &parsed, stage, mode);
                out.insert(stage.as_str().into(), json!(verdict.outcome()));
            }
            Json::Object(out)
        }
    }
}

/// Peak and current resident memory of this process, in KiB, from /proc (Linux only).
fn memory_kib() -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Everything the report says, as JSON (`--output json` prints it as is).
pub fn measure(args: &BenchArgs) -> Result<Json, String> {
    let (origin, backend) =
        crate::config::policy_origin(&args.policy).map_err(|e| e.to_string())?;
    let ((set, cluster), load_time, _) = timed(|| {
        let set = PolicySet::load(origin.clone(), backend);
        let cluster = snapshot::load(&args.cluster_snapshot);
        (set, cluster)
    });
    let set = set.map_err(|e| format!("policies not loaded: {e}"))?;
    let cluster: ClusterState = cluster.map_err(|e| e.to_string())?;
    let evaluator = Evaluator::new(set.clone(), Arc::new(cluster)).map_err(|e| e.to_string())?;
    let reviews = read_reviews(&args.files, &args.namespace)?;
    let mode = args.mode;
    let iterations = args.iterations.max(1);
    let threads = args.concurrency.max(1);

    // One untimed pass warms the VMs of the threads and the caches.
    let _ = run_pipeline(&evaluator, &reviews, mode, threads, threads);
    let (mut all, by_review, wall, errors) =
        run_pipeline(&evaluator, &reviews, mode, iterations, threads);
    let policies = run_policies(&evaluator, &reviews, iterations);
    let (peak_kib, rss_kib) = memory_kib();

    let per_review: Vec<Json> = reviews
        .iter()
        .zip(by_review)
        .map(|(review, mut samples)| {
            let mut row = samples.summary(None);
            row["review"] = json!(review.name);
            row["body_bytes"] = json!(review.body.len());
            row["outcome"] = outcomes(&evaluator, review, mode);
            row
        })
        .collect();
    Ok(json!({
        "policies_from": origin.to_string(),
        "policy_layers": origin.names(),
        "evaluator": set.backend.as_str(),
        "vm_fallback_reason": set.vm_fallback_reason,
        "hints": set.hints,
        "policy_count": set.policies.len(),
        "load_ms": round(load_time.as_secs_f64() * 1000.0),
        "objects": reviews.len(),
        "iterations": iterations,
        "concurrency": threads,
        "total": all.summary(Some(wall)),
        "reviews": per_review,
        "policies": policies,
        "errors": errors,
        "memory": {
            "peak_rss_kib": peak_kib,
            "rss_kib": rss_kib,
            "counted_allocations": all.bytes > 0,
        },
    }))
}

/// A number from the report as a table cell: integers without a fraction, others with one
/// decimal.
fn cell(v: &Json) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

fn kib(v: &Json) -> String {
    format!("{:.1} KiB", v.as_f64().unwrap_or(0.0) / 1024.0)
}

fn text_report(r: &Json) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let t = &r["total"];
    let _ = writeln!(
        s,
        "mlguard bench: {} policies from {} ({} evaluator), loaded and compiled in {} ms",
        cell(&r["policy_count"]),
        r["policies_from"].as_str().unwrap_or("?"),
        r["evaluator"].as_str().unwrap_or("?"),
        cell(&r["load_ms"])
    );
    if let Some(reason) = r["vm_fallback_reason"].as_str() {
        let _ = writeln!(s, "on the interpreter: {reason}");
    }
    for hint in r["hints"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "hint: {}", hint.as_str().unwrap_or_default());
    }
    let _ = writeln!(
        s,
        "{} objects -> {} reviews (mutate + validate each), {} iterations on {} thread(s)\n",
        cell(&r["objects"]),
        cell(&t["reviews"]),
        cell(&r["iterations"]),
        cell(&r["concurrency"])
    );
    let _ = writeln!(
        s,
        "total: {} reviews/s, p50 {} us, p99 {} us, max {} us; {} allocated per review",
        cell(&t["reviews_per_second"]),
        cell(&t["p50_us"]),
        cell(&t["p99_us"]),
        cell(&t["max_us"]),
        kib(&t["alloc_bytes_per_review"]),
    );
    let m = &r["memory"];
    let _ = writeln!(
        s,
        "memory: peak RSS {} KiB, RSS now {} KiB{}\n",
        cell(&m["peak_rss_kib"]),
        cell(&m["rss_kib"]),
        if m["counted_allocations"] == true {
            ""
        } else {
            " (allocations not counted)"
        }
    );
    let _ = writeln!(
        s,
        "{:<52} {:>9} {:>9} {:>9} {:>11}  mutate/validate",
        "per review (whole pipeline)", "bytes", "p50 us", "p99 us", "alloc"
    );
    for row in r["reviews"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<50} {:>9} {:>9} {:>9} {:>11}  {}/{}",
            row["review"].as_str().unwrap_or("?"),
            cell(&row["body_bytes"]),
            cell(&row["p50_us"]),
            cell(&row["p99_us"]),
            kib(&row["alloc_bytes_per_review"]),
            row["outcome"]["mutate"].as_str().unwrap_or("?"),
            row["outcome"]["validate"].as_str().unwrap_or("?"),
        );
    }
    let _ = writeln!(
        s,
        "\n{:<30} {:<16} {:>9} {:>9} {:>9} {:>7} {:>11}",
        "per policy (evaluated alone)", "rules", "mean us", "p50 us", "p99 us", "share", "alloc"
    );
    for row in r["policies"].as_array().into_iter().flatten() {
        let rules: Vec<&str> = row["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        let _ = writeln!(
            s,
            "  {:<28} {:<16} {:>9} {:>9} {:>9} {:>6}% {:>11}",
            row["policy"].as_str().unwrap_or("?"),
            rules.join(","),
            cell(&row["mean_us"]),
            cell(&row["p50_us"]),
            cell(&row["p99_us"]),
            cell(&row["share_percent"]),
            kib(&row["alloc_bytes_per_review"])
        );
    }
    for e in r["errors"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "\nerror: {}", e.as_str().unwrap_or("?"));
    }
    s
}

/// `mlguard bench`: exit 0 with a report, 2 when the policies or manifests cannot be read,
/// 1 when a review failed to parse (the report still prints).
pub fn run(args: &BenchArgs) -> ExitCode {
    match measure(args) {
        Err(e) => {
            eprintln!("mlguard bench: {e}");
            ExitCode::from(2)
        }
        Ok(report) => {
            match args.output {
                BenchOutput::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                ),
                BenchOutput::Text => print!("{}", text_report(&report)),
            }
            if report["errors"].as_array().is_some_and(|e| !e.is_empty()) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
