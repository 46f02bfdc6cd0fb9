//! `surgeryctl validate FILE`: the spec checked by the same code the coordinator runs
//! (`JobSpec::parse`), with no server; also the spec reading and local check `submit`
//! does before it sends anything.

use super::Context;
use crate::error::CtlError;
use crate::exit;
use crate::render;
use crate::view::{FieldErrorView, SpecSummaryView, ValidateView};
use std::io::Read;
use std::path::Path;
use surgery_core::spec::{JobSpec, SpecError};

/// The spec's text and the name errors should call it by (`<stdin>` for `-`).
pub fn read_spec(path: &Path) -> Result<(String, String), CtlError> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| CtlError::Read {
                path: "<stdin>".to_string(),
                source,
            })?;
        return Ok(("<stdin>".to_string(), text));
    }
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((name, text)),
        Err(source) => Err(CtlError::Read { path: name, source }),
    }
}

fn field_views(error: &SpecError) -> Vec<FieldErrorView> {
    error.errors.iter().map(FieldErrorView::from).collect()
}

/// The parsed spec, or every problem as an [`CtlError::InvalidSpec`] naming `file`.
pub fn check(file: &str, yaml: &str) -> Result<JobSpec, CtlError> {
    JobSpec::parse(yaml).map_err(|error| CtlError::InvalidSpec {
        file: file.to_string(),
        summary: error.summary(),
        fields: field_views(&error),
    })
}

pub fn run(ctx: &Context, path: &Path) -> Result<u8, CtlError> {
    let (file, yaml) = read_spec(path)?;
    let parsed = JobSpec::parse(&yaml);
    let view = ValidateView {
        valid: parsed.is_ok(),
        errors: parsed.as_ref().err().map(field_views).unwrap_or_default(),
        summary: parsed.as_ref().ok().map(SpecSummaryView::from),
    };
    match (&parsed, ctx.printer.format) {
        (Ok(_), _) => {
            ctx.printer.document(&view, |view| {
                view.summary.as_ref().map(render::valid_spec).unwrap_or_default()
            })?;
            Ok(exit::OK)
        }
        // In the table form the errors go to stderr, compiler-style, like any error.
        (Err(error), crate::cli::OutputFormat::Table) => Err(CtlError::InvalidSpec {
            file,
            summary: error.summary(),
            fields: view.errors,
        }),
        // JSON and YAML readers get the errors in the document and the exit code.
        (Err(_), _) => {
            ctx.printer.document(&view, |_| String::new())?;
            Ok(exit::INVALID_SPEC)
        }
    }
}
