//! What can go wrong in a command, how it reads on stderr and which exit code it gives.
//! Service errors come back typed (`surgery_proto::error::decode`), so the text is the
//! coordinator's own reason and the exit code follows its [`ErrorKind`].

use crate::exit;
use crate::view::FieldErrorView;
use surgery_proto::v1::{ErrorKind, ServiceError};

#[derive(Debug)]
pub enum CtlError {
    /// A bad value the command line could not catch (exit 2).
    Usage(String),
    /// A file that could not be read.
    Read { path: String, source: std::io::Error },
    /// A file that could not be written (a download).
    Write { path: String, source: std::io::Error },
    /// The spec failed local validation (exit 3); `file` names it in the lines.
    InvalidSpec {
        file: String,
        summary: String,
        fields: Vec<FieldErrorView>,
    },
    /// No connection to the coordinator at all (exit 5).
    Connect { addr: String, reason: String },
    /// A failed call, decoded; `file` is the spec submitted, if any, for field errors.
    Service { error: ServiceError, file: Option<String> },
    /// The coordinator answered something this client cannot use.
    Protocol(String),
    /// Writing the output failed for a reason other than a closed pipe.
    Output(std::io::Error),
    /// The reader of stdout went away (`surgeryctl logs -f | head`): stop quietly.
    OutputClosed,
}

impl CtlError {
    /// A failed RPC: decode the typed error the coordinator put into the status.
    pub fn rpc(status: tonic::Status) -> Self {
        CtlError::Service {
            error: surgery_proto::error::decode(&status),
            file: None,
        }
    }

    /// A failed submit of `file`, so server-side field errors name the file.
    pub fn rpc_for_file(status: tonic::Status, file: &str) -> Self {
        CtlError::Service {
            error: surgery_proto::error::decode(&status),
            file: Some(file.to_string()),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => exit::USAGE,
            CtlError::InvalidSpec { .. } => exit::INVALID_SPEC,
            CtlError::Connect { .. } => exit::UNAVAILABLE,
            CtlError::Service { error, .. } => exit::for_kind(error.kind()),
            CtlError::Read { .. } | CtlError::Write { .. } | CtlError::Protocol(_) | CtlError::Output(_) => exit::OTHER,
            CtlError::OutputClosed => exit::OK,
        }
    }

    /// The text for stderr (without a final newline); empty when nothing is to be said.
    pub fn render(&self) -> String {
        match self {
            CtlError::Usage(message) => format!("error: {message}"),
            CtlError::Read { path, source } => format!("error: cannot read {path}: {source}"),
            CtlError::Write { path, source } => format!("error: cannot write {path}: {source}"),
            CtlError::InvalidSpec { file, summary, fields } => render_spec_errors(file, summary, fields),
            CtlError::Connect { addr, reason } => {
                format!("error: cannot reach the coordinator at {addr}: {reason}\nhint: set --addr or SURGERY_ADDR")
            }
            CtlError::Service { error, file } => {
                if error.kind() == ErrorKind::InvalidSpec && !error.field_errors.is_empty() {
                    let fields: Vec<FieldErrorView> = error.field_errors.iter().map(FieldErrorView::from).collect();
                    render_spec_errors(file.as_deref().unwrap_or("<spec>"), &error.message, &fields)
                } else {
                    format!("error: {}", error.render())
                }
            }
            CtlError::Protocol(message) => format!("error: unexpected answer from the coordinator: {message}"),
            CtlError::Output(source) => format!("error: cannot write the output: {source}"),
            CtlError::OutputClosed => String::new(),
        }
    }
}

/// `error: <summary>` then one compiler-style line per field error, the form `validate`
/// and `submit` share whichever side found the problem.
pub fn render_spec_errors(file: &str, summary: &str, fields: &[FieldErrorView]) -> String {
    let mut out = format!("error: {summary}");
    for field in fields {
        out.push('\n');
        out.push_str(&field.compiler_line(file));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use surgery_proto::v1::FieldError;

    fn service(kind: ErrorKind, message: &str) -> CtlError {
        CtlError::Service {
            error: ServiceError::new(kind, message),
            file: None,
        }
    }

    #[test]
    fn every_error_kind_has_its_exit_code() {
        let expected = [
            (ErrorKind::Unspecified, 1),
            (ErrorKind::InvalidSpec, 3),
            (ErrorKind::NotFound, 4),
            (ErrorKind::StaleAttempt, 6),
            (ErrorKind::Conflict, 6),
            (ErrorKind::UnknownWorker, 4),
            (ErrorKind::InvalidArgument, 1),
            (ErrorKind::Internal, 1),
            (ErrorKind::Unauthenticated, 7),
            (ErrorKind::Unavailable, 5),
            (ErrorKind::FailedPrecondition, 6),
        ];
        for (kind, code) in expected {
            assert_eq!(service(kind, "x").exit_code(), code, "{kind:?}");
        }
    }

    #[test]
    fn statuses_from_the_wire_keep_their_kind() {
        let typed = ServiceError::new(ErrorKind::FailedPrecondition, "job tiny-1 already ended").into_status();
        assert_eq!(typed.code(), tonic::Code::FailedPrecondition);
        let err = CtlError::rpc(typed);
        assert_eq!(err.exit_code(), exit::CONFLICT);
        assert_eq!(err.render(), "error: job tiny-1 already ended");

        // A status without details (a proxy, the server's auth layer) maps by its code.
        let plain = CtlError::rpc(tonic::Status::unauthenticated("missing bearer token"));
        assert_eq!(plain.exit_code(), exit::UNAUTHENTICATED);
        assert_eq!(plain.render(), "error: missing bearer token");
        assert_eq!(
            CtlError::rpc(tonic::Status::not_found("no job x")).exit_code(),
            exit::NOT_FOUND
        );
        assert_eq!(
            CtlError::rpc(tonic::Status::unavailable("down")).exit_code(),
            exit::UNAVAILABLE
        );
    }

    #[test]
    fn server_side_spec_errors_print_like_validate() {
        let error = ServiceError::new(ErrorKind::InvalidSpec, "invalid job spec (2 errors)").with_fields(vec![
            FieldError {
                path: "surgery.rates[1]".into(),
                line: 14,
                column: 5,
                message: "rate must be at least 2".into(),
            },
            FieldError {
                path: "".into(),
                line: 0,
                column: 0,
                message: "the teacher cannot be read".into(),
            },
        ]);
        let err = CtlError::rpc_for_file(error.into_status(), "job.yaml");
        assert_eq!(err.exit_code(), exit::INVALID_SPEC);
        assert_eq!(
            err.render(),
            "error: invalid job spec (2 errors)\n\
             job.yaml:14:5: surgery.rates[1]: rate must be at least 2\n\
             job.yaml: (document): the teacher cannot be read"
        );
    }

    #[test]
    fn other_errors_render_with_their_codes() {
        let connect = CtlError::Connect {
            addr: "http://127.0.0.1:1".into(),
            reason: "Connection refused".into(),
        };
        assert_eq!(connect.exit_code(), exit::UNAVAILABLE);
        assert_eq!(
            connect.render(),
            "error: cannot reach the coordinator at http://127.0.0.1:1: Connection refused\n\
             hint: set --addr or SURGERY_ADDR"
        );
        let read = CtlError::Read {
            path: "job.yaml".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory"),
        };
        assert_eq!(read.exit_code(), exit::OTHER);
        assert_eq!(read.render(), "error: cannot read job.yaml: No such file or directory");
        assert_eq!(CtlError::OutputClosed.exit_code(), exit::OK);
        assert_eq!(CtlError::OutputClosed.render(), "");
        assert_eq!(CtlError::Usage("bad".into()).exit_code(), exit::USAGE);
    }
}
