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
use surgery_core::spec::{FieldError, JobSpec, SpecError};

/// The spec's name (what errors call it by: `<stdin>` for `-`) and its bytes, unchecked.
pub fn read_spec(path: &Path) -> Result<(String, Vec<u8>), CtlError> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|source| CtlError::Read {
                path: "<stdin>".to_string(),
                source,
            })?;
        return Ok(("<stdin>".to_string(), bytes));
    }
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => Ok((name, bytes)),
        Err(source) => Err(CtlError::Read { path: name, source }),
    }
}

/// The spec's text; bytes that are not UTF-8 make it an invalid spec like any other, with
/// the line and column (1-based, in characters) of the first bad byte.
pub fn spec_text(bytes: Vec<u8>) -> Result<String, SpecError> {
    String::from_utf8(bytes).map_err(|error| {
        let bytes = error.as_bytes();
        let utf8 = error.utf8_error();
        let valid = std::str::from_utf8(&bytes[..utf8.valid_up_to()]).expect("valid up to here");
        let line_start = valid.rfind('\n').map_or(0, |newline| newline + 1);
        let line = valid.matches('\n').count() + 1;
        let column = valid[line_start..].chars().count() + 1;
        let first = bytes[utf8.valid_up_to()];
        let message = match utf8.error_len() {
            Some(_) => format!("byte 0x{first:02x} is not valid UTF-8; a spec must be UTF-8 text"),
            None => format!("the spec ends inside a UTF-8 character (byte 0x{first:02x}); a spec must be UTF-8 text"),
        };
        SpecError::single(FieldError {
            path: String::new(),
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
            message,
        })
    })
}

/// The text, then the spec parsed from it.
fn parse(bytes: Vec<u8>) -> Result<(String, JobSpec), SpecError> {
    let text = spec_text(bytes)?;
    let spec = JobSpec::parse(&text)?;
    Ok((text, spec))
}

fn field_views(error: &SpecError) -> Vec<FieldErrorView> {
    error.errors.iter().map(FieldErrorView::from).collect()
}

fn invalid_spec(file: &str, error: &SpecError) -> CtlError {
    CtlError::InvalidSpec {
        file: file.to_string(),
        summary: error.summary(),
        fields: field_views(error),
    }
}

/// The spec's text once it parses, or every problem as an [`CtlError::InvalidSpec`]
/// naming `file`.
pub fn check(file: &str, bytes: Vec<u8>) -> Result<String, CtlError> {
    parse(bytes)
        .map(|(text, _)| text)
        .map_err(|error| invalid_spec(file, &error))
}

pub fn run(ctx: &Context, path: &Path) -> Result<u8, CtlError> {
    let (file, bytes) = read_spec(path)?;
    let parsed = parse(bytes);
    let view = ValidateView {
        valid: parsed.is_ok(),
        errors: parsed.as_ref().err().map(field_views).unwrap_or_default(),
        summary: parsed.as_ref().ok().map(|(_, spec)| SpecSummaryView::from(spec)),
    };
    match (&parsed, ctx.printer.format) {
        (Ok(_), _) => {
            ctx.printer.document(&view, |view| {
                view.summary.as_ref().map(render::valid_spec).unwrap_or_default()
            })?;
            Ok(exit::OK)
        }
        // In the table form the errors go to stderr, compiler-style, like any error.
        (Err(error), crate::cli::OutputFormat::Table) => Err(invalid_spec(&file, error)),
        // JSON and YAML readers get the errors in the document and the exit code.
        (Err(_), _) => {
            ctx.printer.document(&view, |_| String::new())?;
            Ok(exit::INVALID_SPEC)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (line, column, message) of the one error about `text` followed by `bad`.
    fn position(text: &str, bad: &[u8]) -> (u32, u32, String) {
        let error = spec_text([text.as_bytes(), bad].concat()).unwrap_err();
        let field = &error.errors[0];
        assert_eq!((error.errors.len(), field.path.as_str()), (1, ""));
        (field.line, field.column, field.message.clone())
    }

    #[test]
    fn the_first_bad_byte_is_located_in_characters() {
        assert_eq!(spec_text(b"name: x\n".to_vec()).unwrap(), "name: x\n");
        let (line, column, message) = position("version: 1\nname: caf", b"\xe9\n");
        assert_eq!((line, column), (2, 10));
        assert_eq!(message, "byte 0xe9 is not valid UTF-8; a spec must be UTF-8 text");
        // Multi-byte characters before it count once; the first byte is column 1.
        assert_eq!(position("a\n\u{e9}\u{e9}: \u{1f600}", b"\xff").0, 2);
        assert_eq!(position("a\n\u{e9}\u{e9}: \u{1f600}", b"\xff").1, 6);
        assert_eq!(position("", b"\xffname: x").1, 1);
        // A character cut off at the end.
        let (line, column, message) = position("name: x\n\n# ", b"\xe2\x82");
        assert_eq!((line, column), (3, 3));
        assert!(
            message.starts_with("the spec ends inside a UTF-8 character (byte 0xe2)"),
            "{message}"
        );
    }
}
