//! Argument parsing through clap itself (`try_parse_from`). The environment is not
//! touched here (tests run in parallel threads); ctl/tests/offline.rs runs the binary
//! with SURGERY_ADDR / SURGERY_TOKEN set to check flag > env > default.

use super::*;
use clap::CommandFactory;
use clap::error::ErrorKind;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("surgeryctl").chain(args.iter().copied()))
}

/// Defaults can only be asserted when the environment does not override them.
fn env_is_clear() -> bool {
    std::env::var_os("SURGERY_ADDR").is_none() && std::env::var_os("SURGERY_TOKEN").is_none()
}

#[test]
fn the_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn defaults() {
    if !env_is_clear() {
        return;
    }
    let cli = parse(&["list"]).unwrap();
    assert_eq!(cli.global.addr, "http://127.0.0.1:7070");
    assert_eq!(cli.global.token, None);
    assert_eq!(cli.global.output, OutputFormat::Table);
    assert_eq!(cli.global.timeout, Duration::from_secs(10));
}

#[test]
fn global_flags_go_before_or_after_the_subcommand() {
    let before = parse(&[
        "--addr",
        "c:9000",
        "--token",
        "t0k",
        "-o",
        "json",
        "--timeout",
        "3s",
        "list",
    ])
    .unwrap();
    let after = parse(&[
        "list",
        "--addr",
        "c:9000",
        "--token",
        "t0k",
        "--output",
        "json",
        "--timeout",
        "3",
    ])
    .unwrap();
    for cli in [before, after] {
        assert_eq!(cli.global.addr, "http://c:9000");
        assert_eq!(cli.global.token.as_deref(), Some("t0k"));
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.timeout, Duration::from_secs(3));
    }
}

#[test]
fn the_address_flag_is_normalised() {
    assert_eq!(
        parse(&["--addr", "10.0.0.5:7070", "workers"]).unwrap().global.addr,
        "http://10.0.0.5:7070"
    );
    assert_eq!(
        parse(&["--addr", "https://s.example:443", "workers"])
            .unwrap()
            .global
            .addr,
        "https://s.example:443"
    );
    let err = parse(&["--addr", "ftp://x", "workers"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueValidation);
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn bad_tokens_and_timeouts_are_usage_errors() {
    assert_eq!(
        parse(&["--token", "a\nb", "list"]).unwrap_err().kind(),
        ErrorKind::ValueValidation
    );
    assert_eq!(
        parse(&["--timeout", "soon", "list"]).unwrap_err().kind(),
        ErrorKind::ValueValidation
    );
    assert_eq!(
        parse(&["--timeout", "0s", "list"]).unwrap_err().kind(),
        ErrorKind::ValueValidation
    );
    assert_eq!(
        parse(&["--output", "xml", "list"]).unwrap_err().kind(),
        ErrorKind::InvalidValue
    );
}

#[test]
fn timeouts() {
    assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_timeout("1m").unwrap(), Duration::from_secs(60));
    assert_eq!(parse_timeout("2.5").unwrap(), Duration::from_millis(2500));
    assert!(parse_timeout("-1").is_err());
}

#[test]
fn submit_arguments() {
    let cli = parse(&["submit", "job.yaml", "--request-id", "r-1", "--watch"]).unwrap();
    let Command::Submit(args) = cli.command else {
        panic!("not submit")
    };
    assert_eq!(args.file, PathBuf::from("job.yaml"));
    assert_eq!(args.request_id.as_deref(), Some("r-1"));
    assert!(args.watch);

    let cli = parse(&["submit", "job.yaml"]).unwrap();
    let Command::Submit(args) = cli.command else {
        panic!("not submit")
    };
    assert_eq!(args.request_id, None);
    assert!(!args.watch);

    assert!(parse(&["submit", "job.yaml", "--request-id", ""]).is_err());
    assert_eq!(
        parse(&["submit"]).unwrap_err().kind(),
        ErrorKind::MissingRequiredArgument
    );
}

#[test]
fn job_commands() {
    let Command::Status { job, tasks } = parse(&["status", "tiny-1", "--tasks"]).unwrap().command else {
        panic!("not status")
    };
    assert_eq!((job.as_str(), tasks), ("tiny-1", true));

    let Command::List { state } = parse(&["list", "--state", "running", "--state", "queued"])
        .unwrap()
        .command
    else {
        panic!("not list")
    };
    assert_eq!(state, [JobStateArg::Running, JobStateArg::Queued]);
    assert_eq!(JobState::from(JobStateArg::Cancelled), JobState::Cancelled);
    assert!(parse(&["list", "--state", "sleeping"]).is_err());

    let Command::Cancel { job, reason } = parse(&["cancel", "tiny-1", "--reason", "wrong data"]).unwrap().command
    else {
        panic!("not cancel")
    };
    assert_eq!((job.as_str(), reason.as_deref()), ("tiny-1", Some("wrong data")));

    let Command::Logs { job, task, follow } = parse(&["logs", "tiny-1", "--task", "finetune", "-f"]).unwrap().command
    else {
        panic!("not logs")
    };
    assert_eq!(
        (job.as_str(), task.as_deref(), follow),
        ("tiny-1", Some("finetune"), true)
    );
    assert!(matches!(
        parse(&["logs", "tiny-1", "--follow"]).unwrap().command,
        Command::Logs { follow: true, .. }
    ));

    assert!(matches!(
        parse(&["resume", "tiny-1"]).unwrap().command,
        Command::Resume { .. }
    ));
    assert!(matches!(
        parse(&["watch", "tiny-1"]).unwrap().command,
        Command::Watch { .. }
    ));
    assert!(matches!(parse(&["workers"]).unwrap().command, Command::Workers));
    assert!(matches!(
        parse(&["completions", "zsh"]).unwrap().command,
        Command::Completions {
            shell: clap_complete::Shell::Zsh
        }
    ));
}

#[test]
fn usage_errors_exit_with_2_and_help_lists_exit_codes() {
    let err = parse(&["frobnicate"]).unwrap_err();
    assert_eq!(err.exit_code(), i32::from(crate::exit::USAGE));
    let help = Cli::command().render_help().to_string();
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(help.contains("8  the watched job failed or was cancelled"), "{help}");
}

#[test]
fn the_token_value_is_never_shown_in_help() {
    let token = Cli::command()
        .get_arguments()
        .find(|arg| arg.get_id() == "token")
        .unwrap()
        .clone();
    assert!(token.is_hide_env_values_set());
}
