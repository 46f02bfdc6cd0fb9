//! The exit codes of surgeryctl, the one place they are defined. Scripts branch on them,
//! so they are part of the interface: never renumber one, only add.
//!
//! | code | constant            | meaning                                                        |
//! |------|---------------------|----------------------------------------------------------------|
//! | 0    | [`OK`]              | success                                                        |
//! | 1    | [`OTHER`]           | any other error (unreadable file, internal server error, ...)  |
//! | 2    | [`USAGE`]           | bad command line (clap's own code)                             |
//! | 3    | [`INVALID_SPEC`]    | the job spec is invalid (locally or on the server)             |
//! | 4    | [`NOT_FOUND`]       | no such job, task or worker                                    |
//! | 5    | [`UNAVAILABLE`]     | the coordinator cannot be reached or is unavailable            |
//! | 6    | [`CONFLICT`]        | request id reused with another spec, cancelling an ended job,  |
//! |      |                     | resuming a job that has not ended                              |
//! | 7    | [`UNAUTHENTICATED`] | missing or wrong token                                         |
//! | 8    | [`JOB_FAILED`]      | the watched job failed or was cancelled                        |

use surgery_proto::v1::ErrorKind;

pub const OK: u8 = 0;
pub const OTHER: u8 = 1;
pub const USAGE: u8 = 2;
pub const INVALID_SPEC: u8 = 3;
pub const NOT_FOUND: u8 = 4;
pub const UNAVAILABLE: u8 = 5;
pub const CONFLICT: u8 = 6;
pub const UNAUTHENTICATED: u8 = 7;
pub const JOB_FAILED: u8 = 8;

/// The table above, for `--help`.
pub const HELP: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage error (bad command line)
  3  invalid job spec
  4  not found (job, task or worker)
  5  coordinator unreachable or unavailable
  6  conflict (request id reused with another spec, job already ended or not ended, stale attempt)
  7  unauthenticated (missing or wrong --token / SURGERY_TOKEN)
  8  the watched job failed or was cancelled";

/// The exit code of a service error of this kind. INVALID_ARGUMENT is the server
/// rejecting a value clap accepted, not a malformed command line, so it is "other" and 2
/// stays clap's alone.
pub fn for_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidSpec => INVALID_SPEC,
        ErrorKind::NotFound | ErrorKind::UnknownWorker => NOT_FOUND,
        ErrorKind::Unavailable => UNAVAILABLE,
        // FAILED_PRECONDITION (cancel an ended job, resume a running one) kept the code
        // these calls had when the coordinator answered them as conflicts.
        ErrorKind::Conflict | ErrorKind::StaleAttempt | ErrorKind::FailedPrecondition => CONFLICT,
        ErrorKind::Unauthenticated => UNAUTHENTICATED,
        ErrorKind::InvalidArgument | ErrorKind::Internal | ErrorKind::Unspecified => OTHER,
    }
}
