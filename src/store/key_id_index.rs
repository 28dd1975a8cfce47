//! The audit log's key-id index, kept small.
//!
//! Every certificate mayfly issues has a key id that ends in its serial
//! (`mayfly:<role>:<issuer>:<sub>:<serial>`, see [`crate::ca::spec::key_id`]).
//! Indexing those key ids costs every group commit: key ids start with the
//! role and identity, so each record of a batch lands on another index leaf,
//! and SQLite wrote ~37 WAL pages per commit of 10 records with the index
//! against ~23 without it. The serial already finds those rows (through the
//! unique `audit_serial` index, whose keys only grow), so the key-id index
//! is partial: it leaves out every `cert_issued` row whose key id ends in
//! `:<its serial>`, and keeps every other row with a key id (revocations,
//! rows written outside mayfly).
//!
//! A lookup by key id `K` is then the union of two index reads, which
//! together find exactly the rows with `key_id = K`:
//! - the partial index, for the rows it holds;
//! - `serial = S AND key_id = K`, where `S` is the number after `K`'s last
//!   `:`. A row the index leaves out has a key id ending in `:` and its
//!   serial written in decimal, so if its key id is `K`, its serial is `S`.
//!
//! Both backends keep the predicate here, and every query that looks up a
//! key id repeats it word for word: a planner uses a partial index only for
//! a query whose conditions include the index's own.

/// The SQLite index's predicate.
pub const SQLITE_INDEXED: &str = "key_id IS NOT NULL AND NOT (event = 'cert_issued' \
    AND serial IS NOT NULL AND substr(key_id, -1 - length(serial)) = ':' || serial)";

/// The PostgreSQL index's predicate.
pub const PG_INDEXED: &str = "key_id IS NOT NULL AND NOT (event = 'cert_issued' \
    AND serial IS NOT NULL AND right(key_id, length(serial::text) + 1) = ':' || serial::text)";

/// Name of the partial index (both backends).
pub const INDEX: &str = "audit_key_id_rest";

/// Name of the full index it replaces (both backends).
pub const OLD_INDEX: &str = "audit_key_id";

/// The serial a row the partial index leaves out must have if its key id
/// is `key_id`: the number after the last `:`. `None` when there is none;
/// then every row with that key id is in the index.
pub fn serial_of(key_id: &str) -> Option<i64> {
    let (_, last) = key_id.rsplit_once(':')?;
    let n: i64 = last.parse().ok()?;
    // Only the decimal form a database writes for `n` can end a key id
    // the index leaves out ("+5" or "05" never does).
    (n.to_string() == last).then_some(n)
}

/// The condition "the row's key id is `key`" for a query on `audit`, in
/// the terms the indexes serve. `indexed` is the backend's predicate,
/// `key` and `serial` the placeholders bound to the key id and to
/// [`serial_of`] it (`serial` is `None` when `serial_of` is).
pub fn condition(indexed: &str, key: &str, serial: Option<&str>) -> String {
    let rest = serial
        .map(|s| format!(" UNION ALL SELECT seq FROM audit WHERE serial = {s} AND key_id = {key}"))
        .unwrap_or_default();
    format!("seq IN (SELECT seq FROM audit WHERE key_id = {key} AND {indexed}{rest})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serial_is_the_decimal_after_the_last_colon() {
        assert_eq!(serial_of("mayfly:deploy:ci:bot:42"), Some(42));
        assert_eq!(serial_of("mayfly-host:h:web1:7"), Some(7));
        assert_eq!(serial_of("mayfly:deploy:ci:bot:-3"), Some(-3));
        assert_eq!(serial_of("mayfly:deploy:ci:bot:042"), None);
        assert_eq!(serial_of("mayfly:deploy:ci:bot:+42"), None);
        assert_eq!(serial_of("mayfly:deploy:ci:bot:x"), None);
        assert_eq!(serial_of("42"), None);
        assert_eq!(serial_of("mayfly:deploy:"), None);
    }

    #[test]
    fn the_condition_names_the_predicate_and_both_placeholders() {
        let c = condition(SQLITE_INDEXED, "?2", Some("?3"));
        assert!(
            c.contains(&format!("key_id = ?2 AND {SQLITE_INDEXED}")),
            "{c}"
        );
        assert!(c.contains("serial = ?3 AND key_id = ?2"), "{c}");
        let c = condition(PG_INDEXED, "$2", None);
        assert!(!c.contains("UNION"), "{c}");
    }
}
