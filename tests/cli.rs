//! The `mlguard` binary as users run it: `test`, `certs`, `version`, `completions`, `serve`
//! start-up failures, where development certificates live, and a SIGTERM shutdown.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mlguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlguard"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A copy of the default policies in a temporary directory, plus `extra` files.
fn policy_dir(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    for (name, body) in extra {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    dir
}

#[test]
fn mlguard_test_runs_the_default_cases() {
    let out = mlguard(&["test", repo().join("tests/cases").to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let summary = t.lines().last().unwrap();
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(
        passed >= 40 && summary.ends_with(" passed, 0 failed"),
        "{summary}"
    );
}

#[test]
fn the_worked_example_from_the_policy_readme_works() {
    let example = repo().join("tests/fixtures/team-label");
    let rego = std::fs::read_to_string(example.join("team_label.rego")).unwrap();
    let config = std::fs::read_to_string(example.join("team_label.yaml")).unwrap();
    let dir = policy_dir(&[("team_label.rego", &rego), ("team_label.yaml", &config)]);
    let out = mlguard(&[
        "test",
        "--no-default-policies",
        "--policies",
        dir.path().to_str().unwrap(),
        example.join("cases").to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let passed_cases = t
        .lines()
        .filter(|l| l.starts_with("ok    ") && l.contains("team_label.yaml / "))
        .count();
    assert_eq!(passed_cases, 3, "{t}");
    assert!(t.trim_end().ends_with(" passed, 0 failed"), "{t}");
}

#[test]
fn a_failing_case_fails_the_run_and_says_why() {
    let cases = tempfile::tempdir().unwrap();
    std::fs::write(
        cases.path().join("wrong.yaml"),
        r#"cases:
- name: expects a denial that does not come
  object: {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: [{name: c, image: i}]}}
  expect: {unchanged: true, deny: ["nope"]}
"#,
    )
    .unwrap();
    let out = mlguard(&["test", cases.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(r#"expected a denial containing "nope""#),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).trim_end().ends_with(" passed, 1 failed"),
        "{}",
        text(&out)
    );
}

/// `serve` with a policy directory that cannot load: exit status 2 and a message naming the
/// problem, before anything listens.
fn serve_refuses(extra: &[(&str, &str)]) -> String {
    let dir = policy_dir(extra);
    let certs = tempfile::tempdir().unwrap();
    let out = mlguard(&[
        "serve",
        "--no-default-policies",
        "--policies",
        dir.path().to_str().unwrap(),
        "--dev-certs-dir",
        certs.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--probe-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    text(&out)
}

#[test]
fn serve_refuses_a_policy_that_does_not_compile_naming_file_and_line() {
    let t = serve_refuses(&[(
        "broken.rego",
        "package mlguard.policies.broken\n\nimport rego.v1\n\ndeny contains msg if {\n  msg := \n}\n",
    )]);
    assert!(
        t.contains("broken.rego:6:7") && t.contains("policies not loaded"),
        "{t}"
    );
}

#[test]
fn serve_refuses_http_send() {
    let t = serve_refuses(&[(
        "net.rego",
        "package mlguard.policies.net\n\nimport rego.v1\n\ndeny contains r.body if {\n  r := http.send({\"method\": \"GET\", \"url\": \"http://x\"})\n}\n",
    )]);
    assert!(
        t.contains("net.rego:6") && t.contains("http.send makes network calls"),
        "{t}"
    );
}

#[test]
fn serve_refuses_output_of_the_wrong_shape() {
    let t = serve_refuses(&[(
        "shape.rego",
        "package mlguard.policies.shape\n\nimport rego.v1\n\ndeny contains 42 if true\n",
    )]);
    assert!(
        t.contains("policy shape: `deny`") && t.contains("string `msg`"),
        "{t}"
    );
}

#[test]
fn serve_refuses_settings_for_a_policy_that_does_not_exist() {
    let t = serve_refuses(&[("typo.yaml", "policies:\n  gpu_limit: {action: warn}\n")]);
    assert!(
        t.contains("gpu_limit") && t.contains("known policies"),
        "{t}"
    );
}

#[test]
fn certs_writes_a_ca_and_a_serving_certificate_for_the_service() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = mlguard(&[
        "certs",
        "--service",
        "guard",
        "--namespace",
        "ops",
        "--out",
        out_dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let read = |n: &str| std::fs::read_to_string(out_dir.path().join(n)).unwrap();
    let info = mlguard::tls::inspect_pem(&read("tls.crt"), &read("tls.key")).unwrap();
    assert_eq!(
        info.dns_names,
        [
            "guard",
            "guard.ops",
            "guard.ops.svc",
            "guard.ops.svc.cluster.local"
        ]
    );
    assert!(read("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out_dir.path().join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(text(&out).contains("caBundle"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `mlguard serve` on its defaults, started in `cwd` with `env` (HOME and XDG_STATE_HOME are
/// always replaced, so the test never touches the real home directory), stopped with SIGTERM
/// once ready.
#[cfg(unix)]
fn serve_until_ready_then_sigterm(cwd: &Path, env: &[(&str, &Path)]) -> Output {
    let (webhook, probe) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlguard"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{webhook}")])
        .args(["--probe-listen", &format!("127.0.0.1:{probe}")])
        .current_dir(cwd)
        .env_remove("HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("MLGUARD_DEV_CERTS_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    wait_for("readiness", || {
        get(probe, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out
}

#[cfg(unix)]
#[test]
fn serve_on_defaults_makes_dev_certificates_prints_the_ca_bundle_and_stops_on_sigterm() {
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = serve_until_ready_then_sigterm(work.path(), &[("HOME", home.path())]);
    let certs = home.path().join(".local/state/mlguard/certs");
    assert!(certs.join("tls.crt").exists());
    assert!(
        !work.path().join("certs").exists(),
        "nothing in the working directory"
    );
    // The caBundle is logged (standard error), never printed on standard output.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.is_empty(), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("caBundle")
            && stderr.contains("LS0tLS1CRUdJTi")
            && stderr.contains(&format!("{}/ca.crt", certs.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("shutdown requested") && stderr.contains("mlguard stopped"),
        "{stderr}"
    );
}

/// The CA a client was told to trust must survive a restart from another directory.
#[cfg(unix)]
#[test]
fn dev_certificates_stay_the_same_wherever_serve_is_started() {
    let state = tempfile::tempdir().unwrap();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = [("XDG_STATE_HOME", state.path())];
    serve_until_ready_then_sigterm(first.path(), &env);
    let ca = state.path().join("mlguard/certs/ca.crt");
    let before = std::fs::read_to_string(&ca).unwrap();
    serve_until_ready_then_sigterm(second.path(), &env);
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        before,
        "the CA is reused"
    );
    for dir in [&first, &second] {
        assert!(!dir.path().join("certs").exists());
    }
}

/// With `--log-format json`, everything a dev start-up writes is JSON lines on standard
/// error, the caBundle banner included; standard output stays empty.
#[cfg(unix)]
#[test]
fn json_logs_are_json_lines_from_start_to_stop() {
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = [
        ("HOME", home.path()),
        ("MLGUARD_LOG_FORMAT", Path::new("json")),
    ];
    let out = serve_until_ready_then_sigterm(work.path(), &env);
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let banner = lines
        .iter()
        .find(|l| l["ca_bundle"].is_string())
        .expect("the caBundle is logged");
    assert!(banner["ca_bundle"]
        .as_str()
        .unwrap()
        .starts_with("LS0tLS1CRUdJTi"));
    let loaded = lines
        .iter()
        .find(|l| l["message"] == "policies loaded")
        .expect("the policies are logged");
    assert!(
        loaded["policy_layers"]
            .as_str()
            .unwrap()
            .contains("embedded"),
        "{loaded}"
    );
}

#[test]
fn version_prints_the_version_and_commit() {
    let out = mlguard(&["version"]);
    assert!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    let expected = format!("mlguard {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected) && line.ends_with(')'), "{line}");
    let commit = &line[expected.len()..line.len() - 1];
    assert!(!commit.is_empty() && !commit.contains(' '), "{line}");
}

#[test]
fn completions_are_scripts_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _mlguard"),
        ("zsh", "#compdef mlguard"),
        ("fish", "complete -c mlguard"),
    ] {
        let out = mlguard(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(script.contains(marker), "{shell}: {script}");
        // Subcommands and their flags are completed.
        assert!(
            script.contains("failures-only") && script.contains("policyreport"),
            "{shell}"
        );
    }
    assert_eq!(mlguard(&["completions", "tcsh"]).status.code(), Some(2));
}

/// bash itself accepts the script and completes a subcommand.
#[cfg(unix)]
#[test]
fn bash_completion_loads_and_completes_subcommands() {
    let Ok(bash) = which_bash() else { return };
    let script = String::from_utf8(mlguard(&["completions", "bash"]).stdout).unwrap();
    let probe = format!(
        "{script}\nCOMP_WORDS=(mlguard au); COMP_CWORD=1; COMP_LINE='mlguard au'; COMP_POINT=10; _mlguard mlguard au mlguard; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    );
    let out = Command::new(bash)
        .args(["--norc", "-c", &probe])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "audit",
        "{}",
        text(&out)
    );
}

#[cfg(unix)]
fn which_bash() -> Result<PathBuf, ()> {
    ["/bin/bash", "/usr/bin/bash"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or(())
}

#[test]
fn mlguard_test_without_cases_runs_the_rego_unit_tests() {
    let out = mlguard(&["test"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("ok    lib_workload_test.rego / test_demand_takes_the_largest_init_container"),
        "{t}"
    );
    assert!(
        t.lines().last().unwrap().ends_with(" passed, 0 failed"),
        "{t}"
    );
}

#[test]
fn a_failing_rego_unit_test_fails_the_run() {
    let dir = policy_dir(&[(
        "extra_test.rego",
        "package extra_test\n\nimport rego.v1\n\ntest_arithmetic if 1 + 1 == 3\n",
    )]);
    let out = mlguard(&[
        "test",
        "--no-default-policies",
        "--policies",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("FAIL  extra_test.rego / test_arithmetic"),
        "{}",
        text(&out)
    );
}

/// A policy that reads the shared helpers through a package import is slower on the VM; the
/// admin finds out from `mlguard bench` and `mlguard test`, with the file, line and the
/// imports to write instead.
#[test]
fn bench_points_out_rules_read_through_a_package_import() {
    let slow = "package mlguard.policies.slow\n\nimport data.mlguard.lib.workload\nimport rego.v1\n\n\
                deny contains msg if {\n\tworkload.is_gpu_workload\n\tnot workload.obj.metadata.labels.team\n\t\
                msg := workload.describe({\"field\": \"containers\", \"container\": {\"name\": \"x\"}})\n}\n";
    let dir = policy_dir(&[("slow.rego", slow)]);
    let fixture = repo().join("tests/fixtures/reviews/pod-small.json");
    let out = mlguard(&[
        "bench",
        "--no-default-policies",
        "--policies",
        dir.path().to_str().unwrap(),
        "-f",
        fixture.to_str().unwrap(),
        "-n",
        "2",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let hints: Vec<&str> = t.lines().filter(|l| l.starts_with("hint: ")).collect();
    assert_eq!(hints.len(), 1, "only the slow policy's import: {t}");
    assert!(
        hints[0].contains("slow.rego:7: `workload.is_gpu_workload`")
            && hints[0].contains("`import data.mlguard.lib.workload.obj`")
            && !hints[0].contains("describe"),
        "{}",
        hints[0]
    );

    // `mlguard test`, where policy authors look first, says the same.
    let out = mlguard(&[
        "test",
        "--no-default-policies",
        "--policies",
        dir.path().to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.lines().any(|l| l == hints[0]), "{t}");
}

/// `mlguard manifests match-conditions | head`: a command whose reader goes away ends by the
/// signal, as command-line tools do, instead of panicking on the closed pipe.
#[test]
fn a_printing_command_ends_quietly_when_its_reader_goes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlguard"))
        .args(["manifests", "match-conditions"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the child writes a byte.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!output.status.success(), "the write cannot have succeeded");
}
