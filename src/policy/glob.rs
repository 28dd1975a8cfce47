//! Claim value patterns: exact strings, or globs where `*` matches any run of
//! characters (including none, and including `/` and `:`).

/// A compiled claim pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
}

impl Pattern {
    /// Compiles `text`; `*` is the only special character.
    pub fn new(text: &str) -> Pattern {
        Pattern {
            text: text.to_string(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern contains a wildcard.
    pub fn is_glob(&self) -> bool {
        self.text.contains('*')
    }

    /// Whether `value` matches. Linear-time greedy matching with
    /// backtracking to the last star only, so hostile patterns or values
    /// cannot blow up.
    pub fn matches(&self, value: &str) -> bool {
        let p = self.text.as_bytes();
        let v = value.as_bytes();
        let (mut pi, mut vi) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while vi < v.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, vi));
                pi += 1;
            } else if pi < p.len() && p[pi] == v[vi] {
                pi += 1;
                vi += 1;
            } else if let Some((sp, sv)) = star {
                pi = sp + 1;
                vi = sv + 1;
                star = Some((sp, sv + 1));
            } else {
                return false;
            }
        }
        while pi < p.len() && p[pi] == b'*' {
            pi += 1;
        }
        pi == p.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_and_glob() {
        assert!(Pattern::new("acme/api").matches("acme/api"));
        assert!(!Pattern::new("acme/api").matches("acme/api2"));
        assert!(Pattern::new("acme/*").matches("acme/api"));
        assert!(Pattern::new("acme/*").matches("acme/"));
        assert!(!Pattern::new("acme/*").matches("acmex/api"));
        assert!(Pattern::new("repo:acme/*:ref:refs/heads/main")
            .matches("repo:acme/x:ref:refs/heads/main"));
        assert!(!Pattern::new("repo:acme/*:ref:refs/heads/main")
            .matches("repo:acme/x:ref:refs/heads/dev"));
        assert!(Pattern::new("*").matches(""));
        assert!(Pattern::new("a*b*c").matches("aXbYc"));
        assert!(!Pattern::new("a*b*c").matches("aXbY"));
    }

    fn naive(p: &[u8], v: &[u8]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some(b'*'), _) => naive(&p[1..], v) || (!v.is_empty() && naive(p, &v[1..])),
            (Some(a), Some(b)) if a == b => naive(&p[1..], &v[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference_matcher(p in "[ab*]{0,8}", v in "[ab]{0,10}") {
            prop_assert_eq!(Pattern::new(&p).matches(&v), naive(p.as_bytes(), v.as_bytes()));
        }

        #[test]
        fn pattern_without_star_is_equality(p in "[^*]{0,12}", v in ".{0,12}") {
            prop_assert_eq!(Pattern::new(&p).matches(&v), p == v);
        }
    }
}
