//! The binary without a coordinator: `validate` on the repository's configs and on a
//! broken spec, what an unreachable coordinator looks like, where the address comes
//! from (flag > SURGERY_ADDR > default), and the clap-level surface (usage errors,
//! help, completions).

mod common;

use common::{closed_port_addr, repo_file, surgeryctl, temp_file, temp_file_bytes};

#[test]
fn validate_accepts_the_tiny_config() {
    let run = surgeryctl(&["validate", &repo_file("configs/tiny.yaml")], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "ok: tiny (2 layers, 72 tokens per sample, 2 capture shards, 6 distill pairs, finetune gang of 2)\n"
    );
    assert_eq!(run.stderr, "");
}

#[test]
fn validate_accepts_the_wan_config() {
    let run = surgeryctl(
        &["validate", &repo_file("configs/wan2.1-1.3b.yaml"), "--output", "json"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["valid"], true);
    assert_eq!(json["errors"], serde_json::json!([]));
    assert_eq!(json["summary"]["layers"], 30);
    assert_eq!(json["summary"]["distill_pairs"], 90);
    assert_eq!(json["summary"]["finetune_workers"], 8);
    assert!(json["summary"]["tokens_per_sample"].as_u64().unwrap() > 0);
}

/// tiny.yaml with a rate of 1 (not a candidate) and a gang of 0 workers.
fn broken_spec() -> String {
    let tiny = std::fs::read_to_string(repo_file("configs/tiny.yaml")).unwrap();
    let broken = tiny
        .replace("  rates: [2, 4, linear]", "  rates: [2, 1, linear]")
        .replace("  finetune_workers: 2", "  finetune_workers: 0");
    assert_ne!(broken, tiny);
    broken
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|line| line.contains(needle)).unwrap() + 1
}

#[test]
fn validate_reports_each_error_compiler_style() {
    let spec = broken_spec();
    let file = temp_file("broken.yaml", &spec);
    let run = surgeryctl(&["validate", &file], &[]);
    assert_eq!(run.code, 3);
    assert_eq!(run.stdout, "");
    let rates_line = line_of(&spec, "rates: [2, 1, linear]");
    let workers_line = line_of(&spec, "finetune_workers: 0");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines[0], "error: invalid job spec (2 errors)");
    assert!(
        lines[1].starts_with(&format!("{file}:{rates_line}:14: surgery.rates[1]: rate 1 is")),
        "{}",
        run.stderr
    );
    assert!(
        lines[2].starts_with(&format!(
            "{file}:{workers_line}:3: resources.finetune_workers: 0 is out of range"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(lines.len(), 3);
}

#[test]
fn validate_json_lists_the_errors() {
    let file = temp_file("broken-json.yaml", &broken_spec());
    let run = surgeryctl(&["validate", &file, "-o", "json"], &[]);
    assert_eq!(run.code, 3);
    assert_eq!(run.stderr, "");
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["summary"], serde_json::Value::Null);
    assert_eq!(json["errors"][0]["path"], "surgery.rates[1]");
    assert_eq!(json["errors"][0]["column"], 14);
    assert_eq!(json["errors"][1]["path"], "resources.finetune_workers");
}

/// tiny.yaml with its name in Latin-1 (`café`, the é one byte 0xE9): not UTF-8. Returns
/// the bytes and the line of the bad byte.
fn latin1_spec() -> (Vec<u8>, usize) {
    let tiny = std::fs::read_to_string(repo_file("configs/tiny.yaml")).unwrap();
    let line = line_of(&tiny, "name: tiny");
    let bytes = tiny.replacen("name: tiny", "name: caf\u{e9}", 1).into_bytes();
    let bad = bytes.iter().position(|b| *b == 0xC3).expect("é in UTF-8 is C3 A9");
    let latin1 = [&bytes[..bad], &[0xE9], &bytes[bad + 2..]].concat();
    assert!(std::str::from_utf8(&latin1).is_err());
    (latin1, line)
}

#[test]
fn validate_of_a_file_that_is_not_utf8_is_an_invalid_spec() {
    let (bytes, line) = latin1_spec();
    let file = temp_file_bytes("latin1.yaml", &bytes);
    let run = surgeryctl(&["validate", &file], &[]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    // `name: caf` is 9 characters: the bad byte is column 10.
    assert_eq!(
        run.stderr,
        format!(
            "error: invalid job spec (1 error)\n\
             {file}:{line}:10: (document): byte 0xe9 is not valid UTF-8; a spec must be UTF-8 text\n"
        )
    );

    let run = surgeryctl(&["validate", &file, "-o", "json"], &[]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["errors"][0]["line"], line);
    assert_eq!(json["errors"][0]["column"], 10);

    // submit says the same, before connecting (the address is closed).
    let run = surgeryctl(&["submit", &file, "--addr", &closed_port_addr()], &[]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("{file}:{line}:10: (document): byte 0xe9 is not valid UTF-8")),
        "{}",
        run.stderr
    );
}

#[test]
fn validate_of_a_missing_file_is_an_other_error() {
    let run = surgeryctl(&["validate", "no/such/spec.yaml"], &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("error: cannot read no/such/spec.yaml: "),
        "{}",
        run.stderr
    );
}

#[test]
fn validate_reads_stdin() {
    let run = common::surgeryctl_with_stdin(&["validate", "-"], &[], Some("version: 1\nname: x\n"));
    assert_eq!(run.code, 3);
    assert!(run.stderr.contains("\n<stdin>"), "{}", run.stderr);
}

#[test]
fn submit_of_a_bad_spec_fails_before_connecting() {
    // The address is closed: exit 3 rather than 5 shows nothing was sent.
    let file = temp_file("broken-submit.yaml", &broken_spec());
    let run = surgeryctl(&["submit", &file, "--addr", &closed_port_addr()], &[]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: invalid job spec (2 errors)\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unreachable_coordinator_exits_5() {
    let addr = closed_port_addr();
    let run = surgeryctl(&["list", "--addr", &addr], &[]);
    assert_eq!(run.code, 5);
    assert_eq!(run.stdout, "");
    let first = run.stderr.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("error: cannot reach the coordinator at http://{addr}: ")),
        "{}",
        run.stderr
    );
    assert!(first.contains("refused"), "{}", run.stderr);
    assert!(
        run.stderr.contains("hint: set --addr or SURGERY_ADDR"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_address_comes_from_the_flag_then_the_environment() {
    let from_env = closed_port_addr();
    let from_flag = closed_port_addr();

    let run = surgeryctl(&["status", "job-1"], &[("SURGERY_ADDR", &from_env)]);
    assert_eq!(run.code, 5);
    assert!(
        run.stderr.contains(&format!("at http://{from_env}: ")),
        "{}",
        run.stderr
    );

    let run = surgeryctl(
        &["status", "job-1", "--addr", &from_flag],
        &[("SURGERY_ADDR", &from_env)],
    );
    assert_eq!(run.code, 5);
    assert!(
        run.stderr.contains(&format!("at http://{from_flag}: ")),
        "{}",
        run.stderr
    );

    // Empty counts as unset: the default address (nothing listens there in tests, or it
    // is some other local coordinator; either way not a usage error).
    let run = surgeryctl(&["workers", "--timeout", "2s"], &[("SURGERY_ADDR", "")]);
    assert_ne!(run.code, 2, "{}", run.stderr);
    if run.code == 5 {
        assert!(run.stderr.contains("at http://127.0.0.1:7070: "), "{}", run.stderr);
    }

    let run = surgeryctl(&["workers"], &[("SURGERY_ADDR", "ftp://nowhere")]);
    assert_eq!(run.code, 2, "a bad SURGERY_ADDR is a usage error: {}", run.stderr);
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(surgeryctl(&["frobnicate"], &[]).code, 2);
    assert_eq!(surgeryctl(&["status"], &[]).code, 2);
    assert_eq!(surgeryctl(&["list", "--state", "sleeping"], &[]).code, 2);
}

#[test]
fn help_lists_the_exit_codes() {
    let run = surgeryctl(&["--help"], &[]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout
            .contains("Exit codes:\n  0  success\n  1  any other error\n  2  usage error"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("  8  the watched job failed or was cancelled"),
        "{}",
        run.stdout
    );
}

#[test]
fn the_token_from_the_environment_is_not_shown_in_help() {
    let run = surgeryctl(&["--help"], &[("SURGERY_TOKEN", "very-secret")]);
    assert!(!run.stdout.contains("very-secret"), "{}", run.stdout);
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let run = surgeryctl(&["completions", shell], &[]);
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains("surgeryctl"), "{shell}");
        assert!(run.stdout.contains("validate"), "{shell}");
    }
}
