//! The one place errors become `tonic::Status`. Matches are exhaustive, so a
//! new variant cannot silently become `INTERNAL`.

use tonic::{Code, Status};

use super::convert::ConversionError;
use crate::{domain::RefusalKind, proto::v1 as pb, service::DomainError, store::StoreError};

/// A batch item's error: the code and message the single call would fail
/// with, carried in the item's result instead of failing the batch.
pub fn item_error(error: impl Into<Status>) -> pb::ItemError {
    let status = error.into();
    pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

impl From<ConversionError> for Status {
    fn from(e: ConversionError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<DomainError> for Status {
    fn from(e: DomainError) -> Self {
        let message = e.to_string();
        match e {
            DomainError::AccountNotFound(_) | DomainError::UserNotFound { .. } => {
                Status::not_found(message)
            }
            DomainError::AccountExists(_) | DomainError::UserExists { .. } => {
                Status::already_exists(message)
            }
            DomainError::UnknownProductLine { .. }
            | DomainError::UnknownEdition { .. }
            | DomainError::NothingToChange => Status::invalid_argument(message),
            DomainError::ProductLineRetired(_)
            | DomainError::TierNotAllowed { .. }
            | DomainError::TierNeedsEdition { .. }
            | DomainError::AccountTooLarge { .. }
            | DomainError::ScopeNeedsSupervisor { .. } => Status::failed_precondition(message),
            DomainError::RevisionMismatch { .. } => Status::aborted(message),
            DomainError::PermissionDenied(_) => Status::permission_denied(message),
            DomainError::Unauthenticated(_) => Status::unauthenticated(message),
            DomainError::TokenNotFound(_) => Status::not_found(message),
            DomainError::InvalidToken(_) | DomainError::BadImport(_) => {
                Status::invalid_argument(message)
            }
            DomainError::TokenReplay { .. } => Status::failed_precondition(message),
            DomainError::Bootstrap(_) => Status::internal(message),
            // The operating system's trouble, not the request's: a retry
            // (perhaps on another server) may succeed.
            DomainError::NoRandomness(_) => Status::unavailable(message),
            DomainError::RevisionNotReached { .. } => Status::unavailable(message),
            DomainError::HistoryGone { .. } => Status::out_of_range(message),
            DomainError::SlowConsumer { resume_after, .. } => {
                resume_at(Status::resource_exhausted(message), resume_after)
            }
            DomainError::ShuttingDown { resume_after } => {
                resume_at(Status::unavailable(message), resume_after)
            }
            DomainError::Move(refused) => Status::new(refusal_code(refused.kind()), message),
            DomainError::Refused(refusal) => Status::new(refusal_code(refusal.kind), message),
            DomainError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::Failed(_) | StoreError::Unavailable { .. } => Status::unavailable(message),
            StoreError::RequestReused(_) => Status::failed_precondition(message),
            StoreError::Pruned { .. } => Status::out_of_range(message),
            StoreError::Locked { .. }
            | StoreError::Open { .. }
            | StoreError::Corrupt { .. }
            | StoreError::DataLost { .. }
            | StoreError::ForeignData { .. }
            | StoreError::Watermark { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Occupied { .. }
            | StoreError::NotAUrl { .. }
            | StoreError::Encode(_)
            | StoreError::Backend(_) => {
                tracing::error!(error = %message, "storage failure");
                Status::internal(message)
            }
        }
    }
}

/// The metadata key by which an ended watch names the revision to resume
/// after (also in its message), for clients that read it rather than text.
pub const RESUME_AFTER_KEY: &str = "entitled-resume-after";

fn resume_at(mut status: Status, revision: u64) -> Status {
    status
        .metadata_mut()
        .insert(RESUME_AFTER_KEY, revision.into());
    status
}

/// The code of a refusal kept for a retry: the code its first answer had.
fn refusal_code(kind: RefusalKind) -> Code {
    match kind {
        RefusalKind::InvalidArgument => Code::InvalidArgument,
        RefusalKind::NotFound => Code::NotFound,
        RefusalKind::AlreadyExists => Code::AlreadyExists,
        RefusalKind::FailedPrecondition => Code::FailedPrecondition,
        RefusalKind::Aborted => Code::Aborted,
        RefusalKind::PermissionDenied => Code::PermissionDenied,
    }
}

/// The canonical name of a code, as the audit trail records it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        domain::{AccountId, FieldError, Forbidden, Role, Rpc, Tier, UserId},
        service::{ImportError, TokenSpecError},
        store::Refusable,
    };

    /// A refusal kept for a retry answers with the code and message its
    /// first answer had; the rest are not kept.
    #[test]
    fn a_kept_refusal_answers_as_the_first_did() {
        let account = || AccountId::try_from("acme".to_owned()).unwrap();
        let user = || UserId::try_from("ada".to_owned()).unwrap();
        let kept = [
            DomainError::AccountNotFound(account()),
            DomainError::AccountExists(account()),
            DomainError::UserNotFound {
                account: account(),
                user: user(),
            },
            DomainError::UnknownProductLine {
                given: "x".into(),
                valid: vec!["work".into()],
            },
            DomainError::UnknownEdition {
                given: "X9".into(),
                product_line: "work".into(),
                valid: vec!["X1".into()],
            },
            DomainError::ProductLineRetired("old".into()),
            DomainError::TierNotAllowed {
                edition: "X2".into(),
                tier: Tier::Supervisor,
                allowing: vec!["X8".into()],
            },
            DomainError::TierNeedsEdition {
                user: user(),
                tier: Tier::Essentials,
                allowing: vec!["X1".into()],
            },
            DomainError::RevisionMismatch {
                user: user(),
                expected: 1,
                actual: 2,
            },
            DomainError::ScopeNeedsSupervisor {
                user: user(),
                tier: Tier::Essentials,
            },
            DomainError::NothingToChange,
            DomainError::AccountTooLarge {
                account: account(),
                users: 300_000,
                max: 200_000,
                rpc: Rpc::DeleteAccount,
            },
            DomainError::PermissionDenied(Forbidden::Service {
                role: Role::Gateway,
                rpc: Rpc::PutUser,
            }),
            DomainError::TokenNotFound("t".into()),
            DomainError::InvalidToken(TokenSpecError::NameRequired),
            DomainError::BadImport(ImportError::RowCount(0)),
            DomainError::BadImport(ImportError::Field(FieldError::Missing { field: "user_id" })),
        ];
        for error in kept {
            let refusal = error.refusal().unwrap_or_else(|| panic!("{error:?}"));
            let replayed = Status::from(DomainError::refused(refusal));
            let first = Status::from(error);
            assert_eq!(replayed.code(), first.code(), "{}", first.message());
            assert_eq!(replayed.message(), first.message());
        }
        let not_kept = [
            DomainError::Unauthenticated("who".into()),
            DomainError::RevisionNotReached {
                wanted: 9,
                current: 1,
                within: Duration::from_secs(1),
            },
            DomainError::ShuttingDown { resume_after: 1 },
            DomainError::NoRandomness(getrandom::Error::UNSUPPORTED),
            DomainError::Store(StoreError::Failed("disk".into())),
        ];
        for error in not_kept {
            assert!(error.refusal().is_none(), "{error:?}");
        }
    }

    /// No random numbers is the server's trouble, not a first start's: it
    /// is not reported as a bootstrap error, and a retry may succeed.
    #[test]
    fn no_randomness_is_unavailable_and_says_so() {
        let status = Status::from(DomainError::NoRandomness(getrandom::Error::UNSUPPORTED));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().starts_with("no secure random numbers: "),
            "{}",
            status.message()
        );
    }
}
