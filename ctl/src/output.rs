//! Writing results to stdout in the chosen `--output` form: a whole document (pretty
//! JSON, YAML or the text rendering) for one-shot commands, one item per line (JSON
//! Lines, `---`-separated YAML or a text line) for streams. A closed pipe ends the
//! command quietly instead of panicking like `println!`.

use crate::cli::OutputFormat;
use crate::error::CtlError;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: OutputFormat,
}

impl Printer {
    pub fn new(format: OutputFormat) -> Self {
        Printer { format }
    }

    /// Prints `view` whole; `text` draws the table form.
    pub fn document<T: Serialize>(&self, view: &T, text: impl FnOnce(&T) -> String) -> Result<(), CtlError> {
        let body = match self.format {
            OutputFormat::Table => text(view),
            OutputFormat::Json => to_json(view, true)?,
            OutputFormat::Yaml => to_yaml(view)?,
        };
        write_stdout(&body)
    }

    /// Prints one item of a stream, flushed at once so `watch | grep` sees it live.
    pub fn item<T: Serialize>(&self, view: &T, text: impl FnOnce(&T) -> String) -> Result<(), CtlError> {
        let body = match self.format {
            OutputFormat::Table => text(view),
            OutputFormat::Json => to_json(view, false)?,
            OutputFormat::Yaml => format!("---\n{}", to_yaml(view)?),
        };
        write_stdout(&body)
    }

    /// A line only the table form has (a stream's closing summary); JSON and YAML
    /// readers get the exit code instead, so their output stays uniform.
    pub fn text_only(&self, line: &str) -> Result<(), CtlError> {
        match self.format {
            OutputFormat::Table => write_stdout(line),
            OutputFormat::Json | OutputFormat::Yaml => Ok(()),
        }
    }
}

fn to_json<T: Serialize>(view: &T, pretty: bool) -> Result<String, CtlError> {
    let text = if pretty {
        serde_json::to_string_pretty(view)
    } else {
        serde_json::to_string(view)
    };
    text.map_err(|err| CtlError::Protocol(format!("cannot encode as JSON: {err}")))
}

fn to_yaml<T: Serialize>(view: &T) -> Result<String, CtlError> {
    serde_yaml::to_string(view).map_err(|err| CtlError::Protocol(format!("cannot encode as YAML: {err}")))
}

/// Writes `body` and a newline (unless it has one).
pub(crate) fn write_stdout(body: &str) -> Result<(), CtlError> {
    let mut stdout = std::io::stdout().lock();
    let result = stdout
        .write_all(body.as_bytes())
        .and_then(|()| {
            if body.ends_with('\n') {
                Ok(())
            } else {
                stdout.write_all(b"\n")
            }
        })
        .and_then(|()| stdout.flush());
    result.map_err(|err| match err.kind() {
        std::io::ErrorKind::BrokenPipe => CtlError::OutputClosed,
        _ => CtlError::Output(err),
    })
}
