//! Any bytes as a catalogue file: it parses, or it is refused with a
//! message that says where; never a panic. A catalogue that parses can be
//! served (converted to its protobuf answer) and every edition in it can be
//! looked up, with each lower tier allowed where a higher one is.
#![no_main]

use entitled::{
    catalogue::{Catalogue, CatalogueError},
    domain::Tier,
    proto::v1 as pb,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Catalogue::from_toml(text, "fuzz") {
        Ok(catalogue) => {
            let served = pb::GetCatalogueResponse::from(&catalogue);
            assert_eq!(served.product_lines.len(), catalogue.product_lines().len());
            for line in catalogue.product_lines() {
                assert_eq!(catalogue.product_line(&line.id), Some(line));
                for edition in &line.editions {
                    assert_eq!(line.edition(&edition.id), Some(edition));
                    assert!(edition.allows(Tier::None));
                    if edition.allows(Tier::Supervisor) {
                        assert!(edition.allows(Tier::Essentials));
                    }
                }
            }
        }
        Err(CatalogueError::Invalid { line, message, .. }) => {
            let lines = text.lines().count();
            assert!(
                line >= 1 && line <= lines + 1,
                "line {line} of {lines}: {message}"
            );
            assert!(!message.is_empty());
        }
        Err(CatalogueError::Parse { message, .. }) => assert!(!message.is_empty()),
        Err(CatalogueError::Read { .. }) => unreachable!("nothing is read from disk"),
    }
});
