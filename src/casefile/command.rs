//! `mlguard test`: the Rego unit tests and the case files, one line per test.

use super::runner::{collect, run_file, PolicySets};

/// `mlguard test [CASES...]`: runs the policy set's Rego unit tests and the case files against
/// it, prints one line per test and a summary, and exits 0 when all pass, 1 when any fails, 2
/// when the policies, a test file or a case file cannot be read.
pub fn run(args: &crate::cli::TestArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (origin, backend) = match crate::config::policy_origin(&args.policy) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mlguard test: {e}");
            return ExitCode::from(2);
        }
    };
    let loaded = crate::policy::layers::read(&origin).and_then(|files| {
        let tests = crate::policy::layers::read_tests(&origin)?;
        Ok((files, tests))
    });
    let (base, rego_tests) = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mlguard test: {e}");
            return ExitCode::from(2);
        }
    };
    let files = collect(&args.cases);
    if files.is_empty() && rego_tests.is_empty() {
        eprintln!(
            "mlguard test: nothing to run: give case files (*.yaml), or put *_test.rego files in {origin}"
        );
        return ExitCode::from(2);
    }
    let mut sets = PolicySets::new(&base, &origin, backend);
    // What the server would log about the set as it is, where policy authors look first. A
    // set that does not compile is reported by the cases themselves.
    if let Ok(set) = sets.get(None) {
        for hint in &set.hints {
            println!("hint: {hint}");
        }
    }
    let mut tally = Tally::default();
    match crate::policy::rego_tests::run(&base, &rego_tests) {
        Err(e) => tally.broken(&format!("Rego tests: {e}")),
        Ok(results) => {
            for r in results {
                tally.record(&format!("{} / {}", r.file, r.name), r.failure.as_slice());
            }
        }
    }
    for file in &files {
        match run_file(file, &mut sets) {
            Err(e) => tally.broken(&e),
            Ok(outcomes) => {
                for o in outcomes {
                    tally.record(&format!("{} / {}", o.file.display(), o.name), &o.failures);
                }
            }
        }
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.errors > 0 {
        ExitCode::from(2)
    } else if tally.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Counts and prints test results as they come.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    errors: usize,
}

impl Tally {
    fn record(&mut self, name: &str, failures: &[String]) {
        if failures.is_empty() {
            self.passed += 1;
            println!("ok    {name}");
            return;
        }
        self.failed += 1;
        println!("FAIL  {name}");
        for line in failures.iter().flat_map(|f| f.lines()) {
            println!("        {line}");
        }
    }

    fn broken(&mut self, message: &str) {
        self.errors += 1;
        println!("ERROR {message}");
    }
}
