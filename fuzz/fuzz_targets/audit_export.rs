//! The audit record decoder and the chain verifier on arbitrary bytes: an
//! exported JSON Lines file as `mayfly audit verify --export` reads it
//! (`record_from_line`, `verify_export_file`).
//!
//! Invariants: never panics (also when printing the report); a decoded
//! line encodes back (`to_json`) to a line that decodes to the same record;
//! the report counts every decoded record and is intact only if it has no
//! problems.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mayfly::audit::export::{record_from_line, to_json};
use mayfly::audit::verify::verify_export_file;

fuzz_target!(|data: &[u8]| {
    let mut decoded = 0u64;
    for line in data.split(|b| *b == b'\n') {
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let Ok(r) = record_from_line(text) else {
            continue;
        };
        decoded += 1;
        let again = record_from_line(&to_json(&r)).expect("an encoded record decodes");
        assert_eq!(again, r, "record changed in an export round trip");
    }
    let Ok(report) = verify_export_file(std::io::Cursor::new(data), "fuzz") else {
        return;
    };
    let _ = report.to_string();
    assert_eq!(report.is_intact(), report.problem_count == 0);
    assert!(report.problems.len() as u64 <= report.problem_count);
    if std::str::from_utf8(data).is_ok() {
        assert_eq!(report.records, decoded);
    }
});
