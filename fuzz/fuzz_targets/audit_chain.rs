//! The audit hash chain: records built from the input are chained
//! (`chain::chain`), walked (`ChainWalker`), exported and verified
//! (`verify_export_file`); then one column of one record is changed.
//!
//! Invariants: never panics; an untouched chain verifies intact, both in
//! memory and through an export; a changed column, a changed hash, a
//! dropped or swapped record is always reported.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use mayfly::audit::chain::{self, ChainWalker, StoredRecord, GENESIS};
use mayfly::audit::export::to_json;
use mayfly::audit::verify::verify_export_file;
use mayfly_fuzz::{alter, record};

/// Largest time an export line can carry: 9999-12-31T23:59:59.999Z.
const MAX_EXPORT_MS: i64 = 253_402_300_799_999;

fn walk(records: &[StoredRecord]) -> ChainWalker {
    let mut w = ChainWalker::from_genesis();
    for r in records {
        w.push(r);
    }
    w
}

fn export(records: &[StoredRecord]) -> String {
    records.iter().map(|r| to_json(r) + "\n").collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut records = Vec::new();
    while records.len() < 8 {
        let Ok(mut r) = record(&mut u) else { break };
        if u.arbitrary::<bool>().unwrap_or(false) {
            break;
        }
        r.seq = records.len() as u64 + 1;
        records.push(r);
    }
    if records.is_empty() {
        return;
    }
    let head = chain::chain(&mut records, GENESIS);
    let w = walk(&records);
    assert!(w.problems().is_empty(), "fresh chain: {:?}", w.problems());
    assert_eq!(w.last_hash(), Some(head));

    let text = export(&records);
    let report = verify_export_file(text.as_bytes(), "fuzz").expect("reading from memory");
    let _ = report.to_string();
    let exportable = records
        .iter()
        .all(|r| (0..=MAX_EXPORT_MS).contains(&r.time_ms));
    if exportable {
        assert!(report.is_intact(), "exported chain: {report}");
        assert_eq!(report.records, records.len() as u64);
        assert_eq!(report.head, Some(head));
    }

    // One change anywhere must be found.
    let which: u8 = u.arbitrary().unwrap_or(0);
    let at = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % records.len();
    let mut changed = records.clone();
    alter(&mut changed[at], which);
    assert!(
        !walk(&changed).problems().is_empty(),
        "column {which} of record {at} changed unnoticed"
    );
    if exportable {
        let report = verify_export_file(export(&changed).as_bytes(), "fuzz").expect("memory");
        assert!(!report.is_intact(), "changed export verified intact");
    }

    if records.len() > 1 {
        let mut dropped = records.clone();
        dropped.remove(at);
        let w = walk(&dropped);
        assert!(!w.problems().is_empty() || at == records.len() - 1);
        let mut swapped = records.clone();
        swapped.swap(at, (at + 1) % records.len());
        assert!(
            !walk(&swapped).problems().is_empty(),
            "swapped records unnoticed"
        );
    }
});
