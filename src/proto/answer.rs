//! `CheckAnswer`: the server's way of writing an `entitled.v1.CheckAnalyticsAccessResponse`,
//! byte for byte what the generated type writes for the same values, but
//! with the report list already encoded.
//!
//! Why: a check answers with one of six report lists (tier × data ready),
//! and encoding its twelve reports field by field was the largest part of
//! the check's own work (callgrind: about 6,500 instructions per call). The
//! lists are encoded once (`EncodedReports`) and copied into each answer.
//! Only the server writes this type; clients read the generated one, which
//! stays the definition (`proto/entitled/v1/access.proto`).

use std::{borrow::Cow, sync::Arc};

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{self, DecodeContext, WireType},
};

use super::v1::{ItemError, Report, SupervisorScope};
use crate::domain::Text;

/// The `reports` field (7) of a `CheckAnalyticsAccessResponse`, encoded:
/// each report's key, length and message, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedReports(Arc<[u8]>);

const REPORTS: u32 = 7;

impl EncodedReports {
    pub fn new(reports: &[Report]) -> Self {
        let mut buf = Vec::new();
        for report in reports {
            encoding::message::encode(REPORTS, report, &mut buf);
        }
        EncodedReports(buf.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The `supervisor_scope` field (11) of a `CheckAnalyticsAccessResponse`,
/// encoded: nothing when the answer's tier is not Supervisor, a constant
/// for the whole account (what nearly every supervisor has, so it costs no
/// more than before), and only for a supervisor scoped to a list of groups
/// an encoding made for the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedScope(Cow<'static, [u8]>);

const SCOPE: u32 = 11;

/// Field 11, length 2, holding `whole_account` (1) = true.
const WHOLE_ACCOUNT: &[u8] = &[(SCOPE << 3 | 2) as u8, 2, 1 << 3, 1];

impl EncodedScope {
    /// No scope (the answer's tier is not Supervisor).
    pub const NONE: EncodedScope = EncodedScope(Cow::Borrowed(&[]));
    pub const WHOLE_ACCOUNT: EncodedScope = EncodedScope(Cow::Borrowed(WHOLE_ACCOUNT));

    /// Any scope, encoded now (a list of groups).
    pub fn new(scope: &SupervisorScope) -> Self {
        let mut buf = Vec::with_capacity(encoding::message::encoded_len(SCOPE, scope));
        encoding::message::encode(SCOPE, scope, &mut buf);
        EncodedScope(Cow::Owned(buf))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A `CheckAnalyticsAccessResponse` to be written: every field as the
/// generated type has it, but `reports`, which is `EncodedReports`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckAnswer {
    pub allowed: bool,
    pub tier: i32,
    /// Shared with the catalogue's texts where it can be (`Text`).
    pub edition: Text,
    pub denial_reason: i32,
    pub data_available_at: Option<prost_types::Timestamp>,
    pub data_ready: bool,
    pub reports: EncodedReports,
    pub revision: u64,
    pub stored_tier: i32,
    pub reason: Text,
    pub supervisor_scope: EncodedScope,
}

impl Message for CheckAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // In field order, each left out at its default, as prost does.
        if self.allowed {
            encoding::bool::encode(1, &self.allowed, buf);
        }
        if self.tier != 0 {
            encoding::int32::encode(2, &self.tier, buf);
        }
        if !self.edition.is_empty() {
            encode_str(3, &self.edition, buf);
        }
        if self.denial_reason != 0 {
            encoding::int32::encode(4, &self.denial_reason, buf);
        }
        if let Some(at) = &self.data_available_at {
            encoding::message::encode(5, at, buf);
        }
        if self.data_ready {
            encoding::bool::encode(6, &self.data_ready, buf);
        }
        buf.put_slice(self.reports.as_bytes());
        if self.revision != 0 {
            encoding::uint64::encode(8, &self.revision, buf);
        }
        if self.stored_tier != 0 {
            encoding::int32::encode(9, &self.stored_tier, buf);
        }
        if !self.reason.is_empty() {
            encode_str(10, &self.reason, buf);
        }
        buf.put_slice(self.supervisor_scope.as_bytes());
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Written, never read: clients decode the generated type.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let mut len = 0;
        if self.allowed {
            len += encoding::bool::encoded_len(1, &self.allowed);
        }
        if self.tier != 0 {
            len += encoding::int32::encoded_len(2, &self.tier);
        }
        if !self.edition.is_empty() {
            len += str_len(3, &self.edition);
        }
        if self.denial_reason != 0 {
            len += encoding::int32::encoded_len(4, &self.denial_reason);
        }
        if let Some(at) = &self.data_available_at {
            len += encoding::message::encoded_len(5, at);
        }
        if self.data_ready {
            len += encoding::bool::encoded_len(6, &self.data_ready);
        }
        len += self.reports.as_bytes().len();
        if self.revision != 0 {
            len += encoding::uint64::encoded_len(8, &self.revision);
        }
        if self.stored_tier != 0 {
            len += encoding::int32::encoded_len(9, &self.stored_tier);
        }
        if !self.reason.is_empty() {
            len += str_len(10, &self.reason);
        }
        len + self.supervisor_scope.as_bytes().len()
    }

    fn clear(&mut self) {
        *self = CheckAnswer::default();
    }
}

/// A string field, as prost writes one (`encoding::string` takes only a
/// `String`).
fn encode_str(tag: u32, value: &str, buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(value.len() as u64, buf);
    buf.put_slice(value.as_bytes());
}

fn str_len(tag: u32, value: &str) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(value.len() as u64) + value.len()
}

/// A `BatchCheckAnalyticsAccessResponse` to be written: each item's answer
/// as a `CheckAnswer`, or its error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchAnswer {
    pub results: Vec<Result<CheckAnswer, ItemError>>,
    pub revision: u64,
}

/// `CheckResult.outcome`'s two cases, tags 1 (answer) and 2 (error).
fn result_len(result: &Result<CheckAnswer, ItemError>) -> usize {
    match result {
        Ok(answer) => encoding::message::encoded_len(1, answer),
        Err(error) => encoding::message::encoded_len(2, error),
    }
}

impl BatchAnswer {
    /// One item's bytes in the batch's message: its `results` (1) key,
    /// length and `CheckResult`. A sum of lengths: nothing is encoded.
    pub fn result_len(result: &Result<CheckAnswer, ItemError>) -> usize {
        let len = result_len(result);
        encoding::key_len(1) + encoding::encoded_len_varint(len as u64) + len
    }
}

impl Message for BatchAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for result in &self.results {
            // `results` (1): a `CheckResult` holding one of the two.
            encoding::encode_key(1, WireType::LengthDelimited, buf);
            encoding::encode_varint(result_len(result) as u64, buf);
            match result {
                Ok(answer) => encoding::message::encode(1, answer, buf),
                Err(error) => encoding::message::encode(2, error, buf),
            }
        }
        if self.revision != 0 {
            encoding::uint64::encode(2, &self.revision, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Written, never read: clients decode the generated type.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let results: usize = self.results.iter().map(BatchAnswer::result_len).sum();
        results
            + if self.revision != 0 {
                encoding::uint64::encoded_len(2, &self.revision)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        *self = BatchAnswer::default();
    }
}
