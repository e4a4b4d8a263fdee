//! Masking secrets in the log lines a crash context carries, before anything leaves the source.
//!
//! A service's last words often hold what should never leave the node: a password echoed in a
//! connection string, a token in a failed request. Each line is masked before it is cut to size,
//! so a secret straddling the cut cannot leak its first half. A pattern with a group named
//! `secret` masks only that group (`password=[masked]` keeps saying what was masked); any other
//! pattern masks its whole match.

use regex_lite::Regex;

/// What a masked part becomes.
pub const MASK: &str = "[masked]";

/// The patterns masked unless turned off: secrets in the shapes services print them.
pub const DEFAULT_PATTERNS: &[&str] = &[
    // key=value and key: value, for the names secrets go by.
    r#"(?i)\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret|private[_-]?key)\b["']?\s*[=:]\s*(?P<secret>"[^"]*"|'[^']*'|[^\s,;&"']+)"#,
    // HTTP credentials: `Authorization: Bearer …`, `Basic …`.
    r"(?i)\b(?:bearer|basic)\s+(?P<secret>[A-Za-z0-9._~+/=-]{8,})",
    // A user and password in a URL: scheme://user:password@host.
    r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:(?P<secret>[^/\s@]+)@",
    // AWS access key IDs.
    r"\b(?P<secret>(?:AKIA|ASIA)[0-9A-Z]{16})\b",
];

/// A compiled list of patterns.
#[derive(Clone, Debug, Default)]
pub struct Masks {
    patterns: Vec<Regex>,
}

impl Masks {
    /// Compiles `patterns`; an invalid one is named in the error.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Masks, String> {
        let patterns = patterns
            .iter()
            .map(|pattern| {
                let pattern = pattern.as_ref();
                Regex::new(pattern).map_err(|e| {
                    let reason = e.to_string();
                    let reason = reason.lines().last().unwrap_or("invalid").trim();
                    format!("mask pattern {pattern:?} is not a valid regular expression: {reason}")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Masks { patterns })
    }

    /// The default patterns.
    pub fn defaults() -> Masks {
        Masks::new(DEFAULT_PATTERNS).expect("the default patterns compile")
    }

    /// These patterns, then `other`'s.
    pub fn and(mut self, other: Masks) -> Masks {
        self.patterns.extend(other.patterns);
        self
    }

    /// Whether there is nothing to mask with.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// `line` with every match masked.
    pub fn apply(&self, line: String) -> String {
        let mut line = line;
        for pattern in &self.patterns {
            if !pattern.is_match(&line) {
                continue;
            }
            let secret = pattern.capture_names().any(|name| name == Some("secret"));
            let mut masked = String::with_capacity(line.len());
            let mut from = 0;
            for captures in pattern.captures_iter(&line) {
                let part = if secret {
                    captures.name("secret")
                } else {
                    captures.get(0)
                };
                // An empty match masks nothing (and would mask between every character).
                let Some(part) = part.filter(|part| !part.is_empty()) else {
                    continue;
                };
                masked.push_str(&line[from..part.start()]);
                masked.push_str(MASK);
                from = part.end();
            }
            masked.push_str(&line[from..]);
            line = masked;
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(line: &str) -> String {
        Masks::defaults().apply(line.to_owned())
    }

    #[test]
    fn the_defaults_mask_secrets_in_the_shapes_services_print_them() {
        for (line, want) in [
            (
                "connecting with password=hunter2 to db",
                "connecting with password=[masked] to db",
            ),
            (
                "PASSWORD: \"s3cr et\" rejected",
                "PASSWORD: [masked] rejected",
            ),
            ("api_key=abc123&user=x", "api_key=[masked]&user=x"),
            ("{\"token\": \"eyJhbGciOi\"}", "{\"token\": [masked]}"),
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x",
                "Authorization: Bearer [masked]",
            ),
            (
                "cannot reach postgres://app:pa55word@db:5432/app",
                "cannot reach postgres://app:[masked]@db:5432/app",
            ),
            ("key AKIAIOSFODNN7EXAMPLE denied", "key [masked] denied"),
        ] {
            assert_eq!(masked(line), want, "{line}");
        }
    }

    #[test]
    fn lines_without_secrets_stay_as_they_were() {
        for line in [
            "config error: missing key X",
            "token bucket refilled",
            "Basic setup done",
            "see https://example.org/docs",
            "",
        ] {
            assert_eq!(masked(line), line);
        }
    }

    #[test]
    fn a_pattern_without_a_secret_group_masks_its_whole_match() {
        let masks = Masks::new(&[r"card [0-9]{4}(?: [0-9]{4}){3}"]).expect("valid");
        assert_eq!(
            masks.apply("charging card 4111 1111 1111 1111 failed".to_owned()),
            "charging [masked] failed"
        );
        let empty = Masks::new(&["x*"]).expect("valid");
        assert_eq!(
            empty.apply("abc".to_owned()),
            "abc",
            "empty matches mask nothing"
        );
    }

    #[test]
    fn an_invalid_pattern_is_named() {
        let error = Masks::new(&["ok", "(unclosed"]).expect_err("invalid");
        assert!(error.contains("\"(unclosed\""), "{error}");
    }
}
