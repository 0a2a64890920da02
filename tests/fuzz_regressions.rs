//! Every input kept under `fuzz/regressions/<target>/` goes through the same checks as its
//! fuzz target (`fuzz/src/checks.rs`, included here by path), without AFL: a finding stays
//! found until the bug is fixed. Inputs of bugs not fixed yet are listed in `KNOWN_BUGS`; they
//! run only in the ignored test of their target (`cargo test --test fuzz_regressions --
//! --ignored`), which fails while the bug is there.

#[path = "../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};

/// `(target/file, bug)`: kept inputs of bugs that are not fixed yet.
const KNOWN_BUGS: &[(&str, &str)] = &[(
    "object/float-integral-above-2p53.json",
    "regorus's Number::serialize writes a float with Display, so an integral float above \
         2^53 comes back as an integer of its shortest digits, not of its value",
)];

/// How long one input may take before it counts as a hang (a debug build is slow; the checks
/// take milliseconds).
const HANG: std::time::Duration = std::time::Duration::from_secs(10);

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("a readable directory entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

fn known_bug(target: &str, file: &Path) -> Option<&'static str> {
    let name = format!(
        "{target}/{}",
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    KNOWN_BUGS
        .iter()
        .find(|(input, _)| *input == name)
        .map(|(_, bug)| *bug)
}

/// Runs `check` on the target's inputs (the fixed ones, or the known bugs), and fails naming
/// every input whose check panics.
fn replay(target: &str, check: fn(&[u8]), known: bool) {
    let mut failed = Vec::new();
    for file in inputs(target) {
        let bug = known_bug(target, &file);
        if bug.is_some() != known {
            continue;
        }
        let data = std::fs::read(&file).expect("a readable regression input");
        // On a thread of its own, so that a hang fails the test instead of stalling it.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ok = std::panic::catch_unwind(|| check(&data)).is_ok();
            let _ = done.send(ok);
        });
        let outcome = match finished.recv_timeout(HANG) {
            Ok(true) => continue,
            Ok(false) => "panicked",
            Err(_) => "hung",
        };
        failed.push(format!(
            "{} {outcome} ({})",
            file.display(),
            bug.unwrap_or("regression")
        ));
    }
    assert!(failed.is_empty(), "failing inputs:\n{}", failed.join("\n"));
}

#[test]
fn review() {
    replay("review", checks::review, false);
}

#[test]
fn object() {
    replay("object", checks::object, false);
}

#[test]
fn quantity() {
    replay("quantity", checks::quantity, false);
}

#[test]
fn patch() {
    replay("patch", checks::patch, false);
}

/// The known bugs of the object conversion (see `KNOWN_BUGS`): fails until they are fixed.
#[test]
#[ignore = "known bug in regorus's number serialization: see KNOWN_BUGS"]
fn object_known_bugs() {
    replay("object", checks::object, true);
}
