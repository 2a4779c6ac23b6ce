//! Answers bounded in bytes as well as in records: no stored record (a
//! supervisor scope of 1,000 groups, a long refusal) can make a listing or a
//! batch exceed what a default gRPC client accepts.
//!
//! Listings (ListChanges, ListUsers, ExportUsers' and MigrateAccount's
//! messages) are cut into pages of at most `MAX_PAGE_BYTES` by `Pages`; the
//! batch check, whose items cannot be cut, is refused once its answers
//! would not fit (`batch_answers`).

use std::iter::Peekable;

use prost::Message;

use super::{ConversionError, OMIT_REPORTS};

/// The largest message a gRPC client accepts unless told otherwise (tonic's,
/// grpc-go's and grpc-java's default).
pub const CLIENT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The most bytes of records one page (or one streamed message) carries: a
/// quarter of a default client's limit. A record is far smaller (a user
/// with a full scope, the largest, is about 135 KB).
pub const MAX_PAGE_BYTES: usize = CLIENT_MESSAGE_BYTES / 4;

/// A repeated field's tag and length prefix, at most.
const FIELD_OVERHEAD: usize = 6;

/// Records, converted to their messages and cut into pages: each page holds
/// at most `max_records` records and at most `MAX_PAGE_BYTES` of them, and
/// at least one (so paging always moves on). A page's records are the next
/// ones in order: none is skipped, none repeated. Converted as the pages are
/// taken, each record once.
pub struct Pages<I: Iterator, F> {
    records: Peekable<I>,
    max_records: usize,
    convert: F,
}

impl<I: Iterator, F> Pages<I, F> {
    pub fn new<P: Message>(records: I, max_records: usize, convert: F) -> Self
    where
        F: FnMut(&I::Item) -> P,
    {
        Pages {
            records: records.peekable(),
            max_records: max_records.max(1),
            convert,
        }
    }
}

impl<I, F, P> Iterator for Pages<I, F>
where
    I: Iterator,
    F: FnMut(&I::Item) -> P,
    P: Message,
{
    type Item = Vec<P>;

    fn next(&mut self) -> Option<Vec<P>> {
        self.records.peek()?;
        let mut page = Vec::new();
        let mut bytes = 0;
        while page.len() < self.max_records {
            let Some(record) = self.records.peek() else {
                break;
            };
            let message = (self.convert)(record);
            let len = message.encoded_len() + FIELD_OVERHEAD;
            if !page.is_empty() && bytes + len > MAX_PAGE_BYTES {
                break;
            }
            bytes += len;
            page.push(message);
            self.records.next();
        }
        Some(page)
    }
}

/// The first page of `records` (at most `MAX_PAGE_BYTES`, at least one
/// record when there is one): the caller's page size already bounds them
/// in number. The records it holds are `records[..page.len()]`.
pub fn first_page<R, P: Message>(records: &[R], convert: impl FnMut(&&R) -> P) -> Vec<P> {
    Pages::new(records.iter(), records.len(), convert)
        .next()
        .unwrap_or_default()
}

/// What a batch's answers may take of its message: a default client's
/// limit, less the `revision` field (a key and a varint).
const BATCH_ANSWERS_BYTES: usize = CLIENT_MESSAGE_BYTES - 11;

/// A batch check's answers, made one by one from its `results` by
/// `answer`, as long as together they fit a default client (`len`: an
/// answer's encoded length in the batch's message, a sum of lengths already
/// known: nothing is encoded to learn it). Past that the batch is refused
/// as soon as it is known, before more answers are made: its items cannot
/// be cut into pages, so the caller is told how many fit.
pub fn batch_answers<R, A>(
    results: Vec<R>,
    omit_reports: bool,
    mut answer: impl FnMut(R) -> A,
    len: impl Fn(&A) -> usize,
) -> Result<Vec<A>, ConversionError> {
    let items = results.len();
    let mut answers = Vec::with_capacity(items);
    let mut bytes = 0;
    for result in results {
        let made = answer(result);
        bytes += len(&made);
        if bytes > BATCH_ANSWERS_BYTES {
            return Err(too_large(items, answers.len(), omit_reports));
        }
        answers.push(made);
    }
    Ok(answers)
}

/// The refusal of a batch of `items` whose first `fit` answers fit a
/// default client and the next did not.
fn too_large(items: usize, fit: usize, omit_reports: bool) -> ConversionError {
    let first = fit + 1;
    // Each answer alone fits (a user's is at most about 140 KB).
    let fit = fit.max(1);
    ConversionError::AnswerTooLarge {
        field: "items",
        items,
        first,
        max: CLIENT_MESSAGE_BYTES,
        advice: if omit_reports {
            format!("send at most {fit} such items per call")
        } else {
            format!(
                "send at most {fit} such items per call, or ask for the answers without their \
                 reports (metadata `{OMIT_REPORTS}: true`)"
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1 as pb;

    fn user(i: usize, name_len: usize) -> pb::User {
        pb::User {
            user_id: format!("u{i:04}"),
            display_name: "n".repeat(name_len),
            ..Default::default()
        }
    }

    #[test]
    fn pages_hold_every_record_once_in_order_each_within_the_budget() {
        // Records of 100 KB: ten fit in a page of 1 MiB.
        let records: Vec<usize> = (0..95).collect();
        let pages: Vec<Vec<pb::User>> =
            Pages::new(records.iter(), 1000, |i: &&usize| user(**i, 100_000)).collect();
        assert_eq!(pages.len(), 10);
        for page in &pages {
            let bytes: usize = page.iter().map(|u| u.encoded_len() + FIELD_OVERHEAD).sum();
            assert!(bytes <= MAX_PAGE_BYTES, "{bytes}");
        }
        let ids: Vec<String> = pages.into_iter().flatten().map(|u| u.user_id).collect();
        let want: Vec<String> = records.iter().map(|i| format!("u{i:04}")).collect();
        assert_eq!(ids, want);
    }

    #[test]
    fn a_page_holds_at_most_its_records_and_at_least_one_whatever_its_size() {
        let small: Vec<usize> = (0..25).collect();
        let sizes: Vec<usize> = Pages::new(small.iter(), 10, |i: &&usize| user(**i, 10))
            .map(|p| p.len())
            .collect();
        assert_eq!(sizes, [10, 10, 5]);
        let huge = [0, 1];
        let sizes: Vec<usize> = Pages::new(huge.iter(), 10, |i: &&usize| user(**i, 2 << 20))
            .map(|p| p.len())
            .collect();
        assert_eq!(sizes, [1, 1]);
        assert!(first_page(&[] as &[usize], |i| user(**i, 1)).is_empty());
    }

    #[test]
    fn a_batch_whose_answers_pass_a_clients_limit_is_refused_saying_how_many_fit() {
        // Answers of 1 MiB: four fit with the revision, five do not.
        let answered = batch_answers(vec![1; 4], false, |i| i << 20, |a| *a - 11);
        assert_eq!(answered.unwrap().len(), 4);
        let refused = batch_answers(vec![1; 1000], false, |i| i << 20, |a| *a)
            .unwrap_err()
            .to_string();
        for part in [
            "items: ",
            "the first 4 of these 1000 items",
            "4194304 bytes",
            "send at most 3 such items",
            OMIT_REPORTS,
        ] {
            assert!(refused.contains(part), "{part:?} in {refused}");
        }
        // One answer alone past the limit: at least one is still said to fit.
        let refused = batch_answers(vec![5; 3], true, |i| i << 20, |a| *a)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("send at most 1 such"), "{refused}");
        assert!(!refused.contains(OMIT_REPORTS), "{refused}");
    }
}
