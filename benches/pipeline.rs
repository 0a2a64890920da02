//! The review pipeline in-process, stage by stage, on the fixtures in tests/fixtures/reviews.
//!
//!     cargo bench --bench pipeline                      # timings
//!     cargo bench --bench pipeline -- --test            # each benchmark once (what CI runs)
//!
//! The policy set is the embedded default one; MLGUARD_BENCH_POLICIES=DIR uses a directory
//! instead (benches/policies is a small set of the same shape).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mlguard::admission;
use mlguard::admission::Mode;
use mlguard::policy::source::Origin;
use mlguard::policy::verdict::{decide, Enforcement};
use mlguard::policy::{Backend, Evaluator, PolicySet, Stage};
use mlguard::sim::{answer, read_reviews, Review};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn evaluator() -> Evaluator {
    let origin = std::env::var_os("MLGUARD_BENCH_POLICIES")
        .map_or(Origin::Embedded, |d| Origin::Directory(PathBuf::from(d)));
    let set = PolicySet::load(origin.clone(), Backend::Vm)
        .unwrap_or_else(|e| panic!("policies from {origin}: {e}"));
    eprintln!("policies: {origin} ({} evaluator)", set.backend.as_str());
    Evaluator::new(set, Arc::default()).expect("evaluator")
}

fn fixtures() -> Vec<Review> {
    let mut reviews = read_reviews(&[root().join("tests/fixtures/reviews")], "default")
        .expect("fixtures in tests/fixtures/reviews");
    for (r, file) in reviews.iter_mut().zip(fixture_names()) {
        r.name = file;
    }
    reviews
}

/// File stems in the order `read_reviews` walks them (sorted by name).
fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("tests/fixtures/reviews"))
        .expect("fixture dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .map(|n| n.trim_end_matches(".json").to_string())
        .collect();
    names.sort();
    names
}

const STAGES: [Stage; 2] = [Stage::Mutate, Stage::Validate];

fn stages(c: &mut Criterion) {
    let evaluator = evaluator();
    let reviews = fixtures();
    let labels = Default::default();

    let mut g = c.benchmark_group("serde_json");
    for r in &reviews {
        g.throughput(Throughput::Bytes(r.body.len() as u64));
        g.bench_function(&r.name, |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&r.body)).unwrap())
        });
    }
    g.finish();

    // Routing fields only: what a review no policy runs on costs to parse.
    let mut g = c.benchmark_group("parse");
    for r in &reviews {
        g.throughput(Throughput::Bytes(r.body.len() as u64));
        g.bench_function(&r.name, |b| {
            b.iter(|| admission::parse(black_box(&r.body)).unwrap())
        });
    }
    g.finish();

    // Routing fields and the objects as policies see them: the parse cost of a reviewed pod.
    let mut g = c.benchmark_group("parse+objects");
    for r in &reviews {
        g.throughput(Throughput::Bytes(r.body.len() as u64));
        g.bench_function(&r.name, |b| {
            b.iter(|| {
                let parsed = admission::parse(black_box(&r.body)).unwrap();
                parsed.request().unwrap();
                parsed
            })
        });
    }
    g.finish();

    for stage in STAGES {
        let mut evaluate = c.benchmark_group(format!("evaluate/{}", stage.as_str()));
        for r in &reviews {
            let parsed = admission::parse(&r.body).unwrap();
            if !parsed.is_policy_subject(&evaluator.set.kinds) {
                continue;
            }
            evaluate.bench_function(&r.name, |b| {
                b.iter(|| evaluator.evaluate(black_box(parsed.request().unwrap()), stage))
            });
        }
        evaluate.finish();
    }

    // Combining outputs, and for patches making them safe (parents, idempotence, apply check).
    let mut g = c.benchmark_group("decide");
    for r in &reviews {
        let parsed = admission::parse(&r.body).unwrap();
        let outputs = evaluator.evaluate(parsed.request().unwrap(), Stage::Mutate);
        if outputs.is_empty() {
            continue;
        }
        let enforcement = Enforcement {
            cap: Mode::Enforce.cap(),
            namespace: &parsed.namespace,
            labels: &labels,
        };
        g.bench_function(format!("mutate/{}", r.name), |b| {
            b.iter_batched(
                || outputs.clone(),
                |outputs| {
                    let object = parsed.object_json();
                    decide(&evaluator.set, outputs, object, &enforcement)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("reply");
    for r in &reviews {
        let parsed = admission::parse(&r.body).unwrap();
        for stage in STAGES {
            let verdict = mlguard::admission::admit(&evaluator, &parsed, stage, Mode::Enforce);
            g.bench_function(format!("{}/{}", stage.as_str(), r.name), |b| {
                b.iter(|| serde_json::to_vec(&parsed.reply(black_box(&verdict))).unwrap())
            });
        }
    }
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let evaluator = evaluator();
    let reviews = fixtures();
    for stage in STAGES {
        let mut g = c.benchmark_group(format!("pipeline/{}", stage.as_str()));
        for r in &reviews {
            g.bench_function(&r.name, |b| {
                b.iter(|| answer(&evaluator, black_box(&r.body), stage, Mode::Enforce).unwrap())
            });
        }
        g.finish();
    }
    // The load test's mix: every fixture but the 256 KB one, through both webhooks.
    let mixed: Vec<&Review> = reviews.iter().filter(|r| r.name != "pod-large").collect();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements((mixed.len() * STAGES.len()) as u64));
    g.bench_function("mixed", |b| {
        b.iter(|| {
            for r in &mixed {
                for stage in STAGES {
                    black_box(answer(&evaluator, &r.body, stage, Mode::Enforce).unwrap());
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, stages, pipeline);
criterion_main!(benches);
