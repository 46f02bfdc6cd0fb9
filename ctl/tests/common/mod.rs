//! Running the real `surgeryctl` binary from tests, with the caller's SURGERY_*
//! variables removed so only what a test sets is seen.

#![allow(dead_code)] // each test file uses its own part of this module

use std::process::{Command, Output, Stdio};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn surgeryctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    surgeryctl_with_stdin(args, env, None)
}

pub fn surgeryctl_with_stdin(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_surgeryctl"));
    command
        .args(args)
        .env_remove("SURGERY_ADDR")
        .env_remove("SURGERY_TOKEN")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("surgeryctl starts");
    if let Some(text) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let output: Output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// A path in the repository, from the crate directory.
pub fn repo_file(relative: &str) -> String {
    format!("{}/../{relative}", env!("CARGO_MANIFEST_DIR"))
}

/// An address nothing listens on: bind port 0, note it, let it go.
pub fn closed_port_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

/// Writes `text` to a fresh file under the target's temporary directory.
pub fn temp_file(name: &str, text: &str) -> String {
    temp_file_bytes(name, text.as_bytes())
}

/// [`temp_file`] for content that need not be text.
pub fn temp_file_bytes(name: &str, bytes: &[u8]) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("surgeryctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}
