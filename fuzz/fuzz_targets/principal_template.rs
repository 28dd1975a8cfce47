//! Principal template expansion: `{claim}` templates from a role file,
//! expanded with token claims into `Principal`s (`Role::principals_for`).
//!
//! Invariants: never panics; a template the loader accepts expands to
//! principals that obey `[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}`, with no
//! duplicates, one per template at most, never an empty list; the
//! expansion is exactly the templates with each `{claim}` replaced by the
//! claim's string value.
#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mayfly::policy::load::parse_role;
use mayfly::policy::Segment;
use mayfly_fuzz::principal_grammar_ok;
use serde_json::{Map, Value};

#[derive(Arbitrary, Debug)]
enum Claim {
    Str(String),
    Num(i64),
    Bool(bool),
    List(Vec<String>),
    Null,
}

#[derive(Arbitrary, Debug)]
struct Input {
    templates: Vec<String>,
    claims: Vec<(String, Claim)>,
}

fn toml_string(s: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(s).unwrap_or_default()
}

fuzz_target!(|input: Input| {
    if input.templates.is_empty() {
        return;
    }
    let list: Vec<String> = input.templates.iter().map(|t| toml_string(t)).collect();
    let text = format!(
        "description = \"fuzz\"\nowner = \"fuzz@example.com\"\nissuer = \"fuzz\"\n\
         principals = [{}]\nmax_ttl = \"10m\"\n[claims]\nsub = \"*\"\n",
        list.join(", ")
    );
    let Ok(role) = parse_role("fuzz", Path::new("fuzz.toml"), &text) else {
        return;
    };
    assert_eq!(role.principals.len(), input.templates.len());
    let mut claims = Map::new();
    for (name, value) in input.claims {
        let v = match value {
            Claim::Str(s) => Value::String(s),
            Claim::Num(n) => Value::from(n),
            Claim::Bool(b) => Value::Bool(b),
            Claim::List(l) => Value::from(l),
            Claim::Null => Value::Null,
        };
        claims.insert(name, v);
    }
    let Ok(principals) = role.principals_for(&claims) else {
        return;
    };
    assert!(
        !principals.is_empty(),
        "no principals from {:?}",
        input.templates
    );
    assert!(principals.len() <= role.principals.len());
    for p in &principals {
        assert!(
            principal_grammar_ok(p.as_str()),
            "principal {:?}",
            p.as_str()
        );
    }
    for (i, a) in principals.iter().enumerate() {
        assert!(
            !principals[i + 1..].contains(a),
            "duplicate principal {}",
            a.as_str()
        );
    }
    // Independent expansion: every template, claims substituted.
    let mut expected: Vec<String> = Vec::new();
    for t in &role.principals {
        let mut s = String::new();
        for seg in &t.segments {
            match seg {
                Segment::Literal(l) => s.push_str(l),
                Segment::Claim(c) => match claims.get(c) {
                    Some(Value::String(v)) => s.push_str(v),
                    other => panic!("expansion succeeded without string claim {c}: {other:?}"),
                },
            }
        }
        if !expected.contains(&s) {
            expected.push(s);
        }
    }
    let got: Vec<&str> = principals.iter().map(|p| p.as_str()).collect();
    assert_eq!(got, expected);
});
