//! Any bytes as an import file, CSV or JSON Lines (the first byte chooses):
//! `bulk_file::parse` either refuses the whole file (unreadable, or a CSV
//! header without the columns) or sorts every row into good and bad, with
//! line numbers; never a panic. Good rows name each user once; bad rows say
//! why.
#![no_main]

use std::collections::HashSet;

use entitled::bulk_file::{self, FileError, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, file)) = data.split_first() else {
        return;
    };
    let format = if choice % 2 == 0 {
        Format::Csv
    } else {
        Format::Jsonl
    };
    let lines = file.split(|b| *b == b'\n').count() as u64;
    match bulk_file::parse(file, format) {
        Ok((good, bad)) => {
            let mut users = HashSet::new();
            for (line, row) in &good {
                assert!(*line >= 1 && *line <= lines, "line {line} of {lines}");
                assert!(
                    users.insert((row.account_id.clone(), row.user_id.clone())),
                    "a user twice among the good rows: {row:?}"
                );
            }
            for (line, problem) in &bad {
                assert!(*line <= lines, "line {line} of {lines}");
                assert!(!problem.is_empty());
            }
        }
        Err(FileError::Header(missing)) => {
            assert_eq!(format, Format::Csv);
            assert!(!missing.is_empty());
        }
        Err(FileError::Read(reason)) => assert!(!reason.is_empty()),
    }
});
