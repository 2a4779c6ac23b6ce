#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use super::*;

#[test]
fn a_fingerprint_round_trips_and_names_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir_all(db.join("blobs")).unwrap();
    std::fs::write(db.join("conf"), b"conf").unwrap();
    std::fs::write(db.join("db"), b"data").unwrap();
    let then = fingerprint(&db).unwrap();
    let paths: Vec<_> = then.iter().map(Entry::shown).collect();
    assert_eq!(paths, ["db/", "db/blobs", "db/conf", "db/db"]);
    let bytes = encode_fingerprint(&then).unwrap();
    assert_eq!(decode_fingerprint(&bytes).unwrap(), then);
    assert!(decode_fingerprint(&bytes[..bytes.len() - 1]).is_none());
    assert_eq!(changed(&then, &fingerprint(&db).unwrap()), None);

    // Same length, written after the settling time.
    std::thread::sleep(FINGERPRINT_SETTLE);
    std::fs::OpenOptions::new()
        .write(true)
        .open(db.join("db"))
        .unwrap()
        .write_all_at(b"DATA", 0)
        .unwrap();
    let now = fingerprint(&db).unwrap();
    assert_eq!(
        changed(&then, &now).unwrap(),
        "`db/db` was written or replaced"
    );
    std::fs::write(db.join("snap.01"), b"").unwrap();
    let added = fingerprint(&db).unwrap();
    // `db/` itself changed too (an entry was added to it).
    assert!(changed(&now, &added).is_some());
    assert_eq!(
        changed(&now[1..], &added[1..]).unwrap(),
        "`db/snap.01` was added"
    );
    assert_eq!(
        changed(&added[1..], &now[1..]).unwrap(),
        "`db/snap.01` was removed"
    );
}
