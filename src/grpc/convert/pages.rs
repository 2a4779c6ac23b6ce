//! Answers bounded in bytes as well as in records: no stored record (a
//! long refusal) can make a listing exceed what a default gRPC client
//! accepts. Listings (ListChanges, MigrateAccount's messages) are cut into
//! pages of at most `MAX_PAGE_BYTES` by `Pages`.

use std::iter::Peekable;

use prost::Message;

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
}
