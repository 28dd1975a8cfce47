//! The job behind a token: a bounded set of its claims, recorded in audit
//! records.
//!
//! On GitHub every run of a workflow shares one `sub` (repository and ref),
//! so "which job was this login?" needs `run_id`, `sha`, `actor`, ...; an
//! issuer's `audit_claims` names them. What is recorded comes from a token
//! whose signature was checked, but its values are still the issuer's
//! (or the workflow author's) text: each is bounded in length, stripped of
//! control characters, and the number of claims is bounded by the config,
//! so a token cannot grow the audit log or forge table lines.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Longest recorded value, in characters; longer ones are cut and end in `…`.
pub const MAX_VALUE_CHARS: usize = 256;

/// Most array elements of one claim that are recorded (joined by `,`).
const MAX_ARRAY_ELEMENTS: usize = 16;

/// The claim `name` of `claims`: a top-level claim of that exact name, or
/// else, for a `/`-separated path, the value found by walking nested
/// objects (`kubernetes.io/pod/name`).
fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('/');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// The recorded text of a value: strings as-is, numbers and booleans in
/// JSON form, arrays of those joined by `,`; objects and null are not
/// recorded (they name no job).
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(a) => {
            let parts: Vec<String> = a
                .iter()
                .filter(|e| !e.is_array() && !e.is_object())
                .take(MAX_ARRAY_ELEMENTS)
                .filter_map(text_of)
                .collect();
            (!parts.is_empty()).then(|| parts.join(","))
        }
        Value::Null | Value::Object(_) => None,
    }
}

/// `s` made safe to store and print: control characters (newlines,
/// escapes) become U+FFFD, and it is cut at [`MAX_VALUE_CHARS`] characters.
pub fn bounded(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_VALUE_CHARS * 4));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_VALUE_CHARS {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '\u{FFFD}' } else { c });
    }
    out
}

/// The claims named by `names` that the token carries, bounded. Claims the
/// token lacks are left out (a refusal may be about a token of another
/// shape); `names` is already bounded by the config.
pub fn extract(names: &[String], claims: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in names {
        if let Some(t) = lookup(claims, n).and_then(text_of) {
            out.insert(n.clone(), bounded(&t));
        }
    }
    out
}

/// One-line form for tables: `run_id=42 sha=abc…`, in name order.
pub fn one_line(claims: &BTreeMap<String, String>) -> String {
    claims
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn github_claims_are_recorded_and_absent_ones_left_out() {
        let c = json!({"sub": "repo:acme/api:ref:refs/heads/main", "run_id": "42",
            "run_attempt": "1", "sha": "abc", "actor": "octocat"});
        let got = extract(
            &names(&["run_id", "run_attempt", "sha", "actor", "workflow_ref"]),
            c.as_object().unwrap(),
        );
        assert_eq!(got.len(), 4);
        assert_eq!(got["run_id"], "42");
        assert!(!got.contains_key("workflow_ref"));
    }

    #[test]
    fn nested_kubernetes_claims_are_found_by_path() {
        let c = json!({"kubernetes.io": {"namespace": "backup",
            "pod": {"name": "restic-1", "uid": "u-1"}}});
        let got = extract(
            &names(&[
                "kubernetes.io/pod/name",
                "kubernetes.io/pod/uid",
                "kubernetes.io/pod",
            ]),
            c.as_object().unwrap(),
        );
        assert_eq!(got["kubernetes.io/pod/name"], "restic-1");
        assert_eq!(got["kubernetes.io/pod/uid"], "u-1");
        assert!(
            !got.contains_key("kubernetes.io/pod"),
            "objects are not recorded"
        );
    }

    #[test]
    fn long_values_are_cut_and_control_characters_replaced() {
        let long = "é".repeat(MAX_VALUE_CHARS + 50);
        let c = json!({"a": long, "b": "x\ny\u{1b}[31m", "n": 7, "arr": ["p", 1, {"o": 1}]});
        let got = extract(&names(&["a", "b", "n", "arr"]), c.as_object().unwrap());
        assert_eq!(got["a"].chars().count(), MAX_VALUE_CHARS + 1);
        assert!(got["a"].ends_with('…'));
        assert_eq!(got["b"], "x\u{FFFD}y\u{FFFD}[31m");
        assert_eq!(got["n"], "7");
        assert_eq!(got["arr"], "p,1");
    }

    proptest::proptest! {
        #[test]
        fn any_value_is_bounded_and_has_no_control_characters(s in ".{0,600}") {
            let b = bounded(&s);
            proptest::prop_assert!(b.chars().count() <= MAX_VALUE_CHARS + 1);
            proptest::prop_assert!(!b.chars().any(char::is_control));
        }
    }
}
