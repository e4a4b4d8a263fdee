//! Shell-style wildcard patterns for choosing systemd units by name.
//!
//! Operators already know the pattern language `systemctl list-units 'foo@*'`
//! accepts, so configuration uses the same fnmatch-like syntax: `*`, `?`,
//! `[...]` classes (negated with `!` or `^`) and `\` escapes. Nothing more is
//! supported, because anything more (braces, `**`) would mean something
//! different to systemctl and surprise whoever copies a pattern across.
//!
//! A pattern is parsed once into tokens so that malformed patterns are
//! rejected when configuration is loaded rather than silently never matching.
//! Matching walks characters, not bytes, so a `?` consumes one whole code
//! point in an escaped unit name, and it uses the two-pointer star-backtrack
//! algorithm: each `*` remembers only the latest place it could resume from,
//! which bounds the work by pattern length times text length instead of
//! growing exponentially with the number of stars.

use std::error::Error;
use std::fmt;

use crate::event::printable;

/// A compiled wildcard pattern matched against whole unit names.
#[derive(Clone, Debug, PartialEq)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

/// Why a pattern could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlobError {
    /// A `[` has no closing `]`.
    UnclosedClass {
        /// The pattern as written.
        pattern: String,
    },
    /// The pattern ends with a `\` that has nothing to escape.
    TrailingBackslash {
        /// The pattern as written.
        pattern: String,
    },
    /// A class range runs backwards, as in `[z-a]`, and could match nothing.
    ReversedRange {
        /// The pattern as written.
        pattern: String,
        /// The first character of the range.
        start: char,
        /// The last character of the range.
        end: char,
    },
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GlobError::UnclosedClass { pattern } => {
                write!(f, "unclosed character class in \"{}\"", printable(pattern))
            }
            GlobError::TrailingBackslash { pattern } => {
                write!(f, "trailing backslash in \"{}\"", printable(pattern))
            }
            GlobError::ReversedRange {
                pattern,
                start,
                end,
            } => write!(
                f,
                "reversed range {start}-{end} in character class in \"{}\"",
                printable(pattern)
            ),
        }
    }
}

impl Error for GlobError {}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Literal(char),
    AnyChar,
    AnyRun,
    Class(CharClass),
}

impl Token {
    /// Whether this single-character token accepts `c`; `AnyRun` is handled
    /// by the matcher itself because it consumes a variable amount.
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Literal(literal) => *literal == c,
            Token::AnyChar => true,
            Token::AnyRun => false,
            Token::Class(class) => class.contains(c),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct CharClass {
    negated: bool,
    /// Inclusive ranges; a single member `c` is stored as `(c, c)` so that
    /// membership is one uniform test.
    ranges: Vec<(char, char)>,
}

impl CharClass {
    fn contains(&self, c: char) -> bool {
        let listed = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        listed != self.negated
    }
}

type PatternChars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

impl Glob {
    /// Compiles `pattern`, rejecting unclosed classes, a trailing `\` and
    /// backwards ranges.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let token = match c {
                '*' => {
                    // Adjacent stars mean the same as one; collapsing them
                    // keeps the matcher's backtracking state minimal.
                    if tokens.last() == Some(&Token::AnyRun) {
                        continue;
                    }
                    Token::AnyRun
                }
                '?' => Token::AnyChar,
                '\\' => match chars.next() {
                    Some(escaped) => Token::Literal(escaped),
                    None => {
                        return Err(GlobError::TrailingBackslash {
                            pattern: pattern.to_owned(),
                        })
                    }
                },
                '[' => Token::Class(parse_class(&mut chars, pattern)?),
                other => Token::Literal(other),
            };
            tokens.push(token);
        }
        Ok(Glob {
            pattern: pattern.to_owned(),
            tokens,
        })
    }

    /// Whether the whole of `text` matches the pattern (not merely a part of it).
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let mut token_at = 0;
        let mut text_at = 0;
        // After a mismatch, retry from the most recent star, letting it
        // swallow one more character. Older stars never need revisiting:
        // anything they could absorb the latest star can absorb too.
        let mut resume: Option<(usize, usize)> = None;

        while let Some(&c) = text.get(text_at) {
            match self.tokens.get(token_at) {
                Some(Token::AnyRun) => {
                    token_at += 1;
                    resume = Some((token_at, text_at));
                    continue;
                }
                Some(token) if token.accepts(c) => {
                    token_at += 1;
                    text_at += 1;
                    continue;
                }
                _ => {}
            }
            match resume {
                Some((after_star, swallowed_up_to)) => {
                    token_at = after_star;
                    text_at = swallowed_up_to + 1;
                    resume = Some((after_star, text_at));
                }
                None => return false,
            }
        }
        self.tokens[token_at..]
            .iter()
            .all(|token| *token == Token::AnyRun)
    }

    /// The pattern exactly as it was written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

/// Parses a class body after its opening `[`, consuming the closing `]`.
fn parse_class(chars: &mut PatternChars<'_>, pattern: &str) -> Result<CharClass, GlobError> {
    let unclosed = || GlobError::UnclosedClass {
        pattern: pattern.to_owned(),
    };
    let negated = matches!(chars.peek(), Some('!' | '^'));
    if negated {
        chars.next();
    }
    let mut ranges = Vec::new();
    loop {
        let start = match chars.next().ok_or_else(unclosed)? {
            // As in fnmatch, a `]` right after the opening is a member, which
            // is the only way to put `]` in a class without an escape.
            ']' if !ranges.is_empty() => break,
            '\\' => chars.next().ok_or_else(unclosed)?,
            other => other,
        };
        let mut end = start;
        if chars.peek() == Some(&'-') {
            // A `-` just before the closing `]` is a member, not a range.
            let mut lookahead = chars.clone();
            lookahead.next();
            if let Some(&after_dash) = lookahead.peek() {
                if after_dash != ']' {
                    chars.next();
                    end = match chars.next().ok_or_else(unclosed)? {
                        '\\' => chars.next().ok_or_else(unclosed)?,
                        other => other,
                    };
                }
            }
        }
        if end < start {
            return Err(GlobError::ReversedRange {
                pattern: pattern.to_owned(),
                start,
                end,
            });
        }
        ranges.push((start, end));
    }
    Ok(CharClass { negated, ranges })
}

/// Decides which units are watched, from include and exclude pattern lists.
#[derive(Clone, Debug)]
pub struct UnitFilter {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
}

impl UnitFilter {
    /// Builds a filter. Include means "none except": an empty include list
    /// admits nothing, so watching everything has to be asked for with `*`.
    /// Exclude means "all except" and always wins over include.
    pub fn new(include: Vec<Glob>, exclude: Vec<Glob>) -> UnitFilter {
        UnitFilter { include, exclude }
    }

    /// Whether `unit` matches some include pattern and no exclude pattern.
    pub fn allows(&self, unit: &str) -> bool {
        self.include.iter().any(|glob| glob.matches(unit))
            && !self.exclude.iter().any(|glob| glob.matches(unit))
    }

    /// The same filter, also excluding exactly `unit` (crashwatch's own unit, say).
    pub fn excluding(mut self, unit: &str) -> UnitFilter {
        let escaped: String = unit
            .chars()
            .flat_map(|c| {
                let special = matches!(c, '*' | '?' | '[' | ']' | '\\');
                [special.then_some('\\'), Some(c)].into_iter().flatten()
            })
            .collect();
        if let Ok(glob) = Glob::new(&escaped) {
            self.exclude.push(glob);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str) -> Glob {
        Glob::new(pattern).expect("pattern should compile")
    }

    #[test]
    fn excluding_takes_names_literally() {
        let filter = UnitFilter::new(vec![glob("*")], Vec::new()).excluding("we*rd[1].service");
        assert!(!filter.allows("we*rd[1].service"));
        assert!(filter.allows("weird1.service"));
    }

    #[test]
    fn literals_match_only_themselves() {
        let g = glob("nginx.service");
        assert!(g.matches("nginx.service"));
        assert!(!g.matches("nginx.servic"));
        assert!(!g.matches("nginx.service2"));
        assert!(!g.matches("xnginx.service"));
        assert_eq!(g.as_str(), "nginx.service");
    }

    #[test]
    fn empty_pattern_matches_only_empty_text() {
        let g = glob("");
        assert!(g.matches(""));
        assert!(!g.matches("a"));
    }

    #[test]
    fn star_matches_any_run_including_none() {
        let g = glob("getty@*.service");
        assert!(g.matches("getty@tty1.service"));
        assert!(g.matches("getty@.service"));
        assert!(!g.matches("getty@tty1.socket"));
        assert!(glob("*").matches(""));
        assert!(glob("*").matches("anything at all"));
        assert!(glob("**").matches("x"));
        assert!(glob("a*b*c").matches("aXXbYYc"));
        assert!(glob("a*b*c").matches("abc"));
        assert!(!glob("a*b*c").matches("aXXbYY"));
        assert!(glob("*.service").matches(".service"));
    }

    #[test]
    fn star_backtracks_past_false_starts() {
        assert!(glob("*ab").matches("aab"));
        assert!(glob("*abc*d").matches("abababcxd"));
        assert!(!glob("*abc*d").matches("abababcx"));
    }

    #[test]
    fn question_mark_matches_exactly_one_char() {
        let g = glob("tty?");
        assert!(g.matches("tty1"));
        assert!(!g.matches("tty"));
        assert!(!g.matches("tty12"));
        assert!(glob("??").matches("ab"));
    }

    #[test]
    fn classes_match_listed_chars_and_ranges() {
        let g = glob("worker-[0-9a-c].service");
        assert!(g.matches("worker-7.service"));
        assert!(g.matches("worker-b.service"));
        assert!(!g.matches("worker-d.service"));
        assert!(!g.matches("worker-.service"));
        assert!(glob("[abc]").matches("c"));
        assert!(!glob("[abc]").matches("d"));
    }

    #[test]
    fn class_edge_members() {
        // `]` first and `-` last are members, not syntax.
        let g = glob("[]a-]");
        assert!(g.matches("]"));
        assert!(g.matches("a"));
        assert!(g.matches("-"));
        assert!(!g.matches("b"));
        assert!(glob("[\\]]").matches("]"));
        assert!(glob("[a\\-z]").matches("-"));
        assert!(!glob("[a\\-z]").matches("m"));
    }

    #[test]
    fn negated_classes_match_everything_else() {
        for g in [glob("[!a-z]"), glob("[^a-z]")] {
            assert!(g.matches("A"));
            assert!(g.matches("5"));
            assert!(!g.matches("q"));
            assert!(!g.matches(""));
        }
        assert!(glob("[!]]").matches("x"));
        assert!(!glob("[!]]").matches("]"));
    }

    #[test]
    fn escapes_make_syntax_literal() {
        assert!(glob("a\\*b").matches("a*b"));
        assert!(!glob("a\\*b").matches("aXb"));
        assert!(glob("\\?").matches("?"));
        assert!(!glob("\\?").matches("x"));
        assert!(glob("\\[x]").matches("[x]"));
        assert!(glob("back\\\\slash").matches("back\\slash"));
    }

    #[test]
    fn matching_is_per_char_not_per_byte() {
        assert!(glob("caf?").matches("café"));
        assert!(glob("?").matches("日"));
        assert!(!glob("??").matches("日"));
        assert!(glob("*本*").matches("日本語"));
        assert!(glob("[à-ÿ]").matches("é"));
        assert!(!glob("[à-ÿ]").matches("e"));
    }

    #[test]
    fn pathological_pattern_finishes() {
        let text = "a".repeat(10_000);
        assert!(!glob("*a*a*a*a*a*a*a*a*b").matches(&text));
        let mut with_b = text.clone();
        with_b.push('b');
        assert!(glob("*a*a*a*a*a*a*a*a*b").matches(&with_b));
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        assert_eq!(
            Glob::new("foo[ab"),
            Err(GlobError::UnclosedClass {
                pattern: "foo[ab".to_owned()
            })
        );
        assert!(matches!(
            Glob::new("[]"),
            Err(GlobError::UnclosedClass { .. })
        ));
        assert!(matches!(
            Glob::new("[a-"),
            Err(GlobError::UnclosedClass { .. })
        ));
        assert!(matches!(
            Glob::new("[a\\"),
            Err(GlobError::UnclosedClass { .. })
        ));
        assert!(matches!(
            Glob::new("foo\\"),
            Err(GlobError::TrailingBackslash { .. })
        ));
        assert!(matches!(
            Glob::new("[z-a]"),
            Err(GlobError::ReversedRange {
                start: 'z',
                end: 'a',
                ..
            })
        ));
    }

    #[test]
    fn errors_read_as_lowercase_fragments() {
        let err = Glob::new("foo[ab").expect_err("unclosed class");
        assert_eq!(err.to_string(), "unclosed character class in \"foo[ab\"");
        let err = Glob::new("a[\n").expect_err("a line break in the pattern");
        assert_eq!(err.to_string(), "unclosed character class in \"a[\\n\"");
        let err = Glob::new("foo\\").expect_err("trailing backslash");
        assert_eq!(err.to_string(), "trailing backslash in \"foo\\\"");
        let err = Glob::new("[z-a]").expect_err("reversed range");
        assert_eq!(
            err.to_string(),
            "reversed range z-a in character class in \"[z-a]\""
        );
        let as_dyn: &dyn Error = &err;
        assert!(as_dyn.source().is_none());
    }

    #[test]
    fn filter_include_is_none_except_and_exclude_wins() {
        let nothing = UnitFilter::new(Vec::new(), Vec::new());
        assert!(!nothing.allows("nginx.service"));

        let filter = UnitFilter::new(
            vec![glob("*.service")],
            vec![glob("systemd-*"), glob("user@*")],
        );
        assert!(filter.allows("nginx.service"));
        assert!(!filter.allows("systemd-journald.service"));
        assert!(!filter.allows("user@1000.service"));
        assert!(!filter.allows("backup.timer"));
    }
}
