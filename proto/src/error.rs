//! Typed service errors across gRPC: the server encodes a [`ServiceError`] into the
//! status details; [`decode`] rebuilds it on the client (Quickwit's habit), so a CLI can
//! print field paths and lines instead of a bare status code.

use crate::v1::{ErrorKind, FieldError, ServiceError};
use prost::Message;
use tonic::{Code, Status};

impl ServiceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError {
            kind: kind as i32,
            message: message.into(),
            field_errors: Vec::new(),
        }
    }

    pub fn with_fields(mut self, field_errors: Vec<FieldError>) -> Self {
        self.field_errors = field_errors;
        self
    }

    fn code(&self) -> Code {
        match self.kind() {
            ErrorKind::InvalidSpec | ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::StaleAttempt | ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Conflict => Code::AlreadyExists,
            ErrorKind::UnknownWorker => Code::NotFound,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Internal | ErrorKind::Unspecified => Code::Internal,
        }
    }

    /// The status a server returns: code from the kind, message, the error in details.
    pub fn into_status(self) -> Status {
        let code = self.code();
        let message = self.message.clone();
        Status::with_details(code, message, self.encode_to_vec().into())
    }

    /// A readable multi-line form: the message, then one line per field error.
    pub fn render(&self) -> String {
        let mut out = self.message.clone();
        for field in &self.field_errors {
            out.push_str("\n  ");
            out.push_str(&render_field(field));
        }
        out
    }
}

/// `path (line L, column C): message`, leaving out what is unknown.
pub fn render_field(field: &FieldError) -> String {
    let mut out = if field.path.is_empty() {
        String::from("(document)")
    } else {
        field.path.clone()
    };
    if field.line > 0 {
        if field.column > 0 {
            out.push_str(&format!(" (line {}, column {})", field.line, field.column));
        } else {
            out.push_str(&format!(" (line {})", field.line));
        }
    }
    out.push_str(": ");
    out.push_str(&field.message);
    out
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Status {
        err.into_status()
    }
}

/// Rebuilds the typed error from a status; a status from elsewhere (a proxy, a transport
/// failure) becomes an error of a kind that matches its code, with its message.
pub fn decode(status: &Status) -> ServiceError {
    if !status.details().is_empty()
        && let Ok(err) = ServiceError::decode(status.details())
    {
        return err;
    }
    let kind = match status.code() {
        Code::InvalidArgument => ErrorKind::InvalidArgument,
        Code::NotFound => ErrorKind::NotFound,
        Code::FailedPrecondition => ErrorKind::StaleAttempt,
        Code::AlreadyExists => ErrorKind::Conflict,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::Unavailable | Code::DeadlineExceeded => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    let message = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    };
    ServiceError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_error_survives_a_status() {
        let err = ServiceError::new(ErrorKind::InvalidSpec, "spec has 1 error").with_fields(vec![FieldError {
            path: "surgery.rates[1]".into(),
            line: 14,
            column: 5,
            message: "rate must be at least 2".into(),
        }]);
        let status = err.clone().into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let back = decode(&status);
        assert_eq!(back, err);
        assert_eq!(
            back.render(),
            "spec has 1 error\n  surgery.rates[1] (line 14, column 5): rate must be at least 2"
        );
    }

    #[test]
    fn a_state_that_forbids_the_call_is_failed_precondition() {
        let status = ServiceError::new(ErrorKind::FailedPrecondition, "job j already ended (succeeded)").into_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(decode(&status).kind(), ErrorKind::FailedPrecondition);
        // A conflict (a request id reused with another spec) stays ALREADY_EXISTS.
        let status = ServiceError::new(ErrorKind::Conflict, "request id reused").into_status();
        assert_eq!(status.code(), Code::AlreadyExists);
    }

    #[test]
    fn plain_status_maps_to_a_kind() {
        let back = decode(&Status::unavailable("connection refused"));
        assert_eq!(back.kind(), ErrorKind::Unavailable);
        assert_eq!(back.message, "connection refused");
    }
}
