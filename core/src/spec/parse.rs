//! From YAML text to a [`JobSpec`](super::JobSpec): serde_yaml through
//! serde_path_to_error, so a wrong type or an unknown field comes back with its path and
//! line; and the error types shared with validation.

use super::JobSpec;
use std::fmt;

/// One problem with a spec, pointing at the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, for example `surgery.rates[1]`; empty for the whole document.
    pub path: String,
    /// 1-based; 0 when unknown.
    pub line: u32,
    /// 1-based; 0 when unknown.
    pub column: u32,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(document)" } else { &self.path };
        match (self.line, self.column) {
            (0, _) => write!(f, "{path}: {}", self.message),
            (line, 0) => write!(f, "{path} (line {line}): {}", self.message),
            (line, column) => write!(f, "{path} (line {line}, column {column}): {}", self.message),
        }
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub errors: Vec<FieldError>,
}

impl SpecError {
    pub fn single(error: FieldError) -> SpecError {
        SpecError { errors: vec![error] }
    }

    /// "invalid job spec (2 errors)".
    pub fn summary(&self) -> String {
        match self.errors.len() {
            1 => "invalid job spec (1 error)".to_string(),
            n => format!("invalid job spec ({n} errors)"),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.summary())?;
        for error in &self.errors {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

pub(super) fn deserialize(yaml: &str) -> Result<JobSpec, SpecError> {
    if yaml.trim().is_empty() {
        return Err(SpecError::single(FieldError {
            path: String::new(),
            line: 0,
            column: 0,
            message: "the spec is empty".to_string(),
        }));
    }
    let deserializer = serde_yaml::Deserializer::from_str(yaml);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let (line, column) = inner
            .location()
            .map(|loc| (loc.line() as u32, loc.column() as u32))
            .unwrap_or((0, 0));
        let path = if path == "." { String::new() } else { path };
        SpecError::single(FieldError {
            message: clean_message(&inner.to_string(), &path),
            path,
            line,
            column,
        })
    })
}

/// serde_yaml's text repeats the path in front and the position behind; both are
/// reported separately.
fn clean_message(raw: &str, path: &str) -> String {
    let mut message = raw;
    if let Some(at) = message.rfind(" at line ") {
        message = &message[..at];
    }
    // The prefix is the path or one of its ancestors (for an unknown field, the parent).
    let mut prefix = path;
    while !prefix.is_empty() {
        if let Some(rest) = message.strip_prefix(prefix).and_then(|m| m.strip_prefix(": ")) {
            message = rest;
            break;
        }
        prefix = prefix.rfind(['.', '[']).map_or("", |cut| &prefix[..cut]);
    }
    message.to_string()
}
