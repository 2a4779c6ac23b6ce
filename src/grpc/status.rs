//! The one place errors become `tonic::Status`. Matches are exhaustive, so a
//! new variant cannot silently become `INTERNAL`.

use tonic::{Code, Status};

use super::convert::ConversionError;
use crate::{proto::v1 as pb, service::DomainError, store::StoreError};

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
            DomainError::AccountExists(_) => Status::already_exists(message),
            DomainError::UnknownProductLine { .. }
            | DomainError::UnknownEdition { .. }
            | DomainError::NothingToChange => Status::invalid_argument(message),
            DomainError::ProductLineRetired(_)
            | DomainError::TierNotAllowed { .. }
            | DomainError::TierNeedsEdition { .. } => Status::failed_precondition(message),
            DomainError::RevisionMismatch { .. } => Status::aborted(message),
            DomainError::PermissionDenied(_) => Status::permission_denied(message),
            DomainError::Unauthenticated(_) => Status::unauthenticated(message),
            DomainError::TokenNotFound(_) => Status::not_found(message),
            DomainError::InvalidToken(_) | DomainError::BadImport(_) => {
                Status::invalid_argument(message)
            }
            DomainError::TokenReplay { .. } => Status::failed_precondition(message),
            DomainError::Bootstrap(_) => Status::internal(message),
            DomainError::RevisionNotReached { .. } => Status::unavailable(message),
            DomainError::HistoryGone { .. } => Status::out_of_range(message),
            DomainError::SlowConsumer { .. } => Status::resource_exhausted(message),
            DomainError::ShuttingDown => Status::unavailable(message),
            DomainError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::Failed(_) => Status::unavailable(message),
            StoreError::RequestReused(_) => Status::failed_precondition(message),
            StoreError::Locked { .. }
            | StoreError::Open { .. }
            | StoreError::Corrupt { .. }
            | StoreError::DataLost { .. }
            | StoreError::ForeignData { .. }
            | StoreError::Watermark { .. }
            | StoreError::Encode(_)
            | StoreError::Sled(_) => {
                tracing::error!(error = %message, "storage failure");
                Status::internal(message)
            }
        }
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
