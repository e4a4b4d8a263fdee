//! Basic authentication against the web configuration's `basic_auth_users` (bcrypt hashes), as
//! exporter-toolkit does it.
//!
//! A bcrypt comparison costs tens of milliseconds at cost 10, so outcomes are cached: a
//! Prometheus scraping every 15 s over one keep-alive connection pays for bcrypt once, not per
//! scrape. The cache is keyed by a SHA-256 digest of user, hash and password, so no password
//! stays in memory, and a changed hash (a new password in the file) misses it. An unknown user
//! is compared against a hash all the same, so timing does not tell which users exist; the answer
//! never says which half was wrong. Comparisons run one at a time on the blocking pool, off the
//! runtime that serves scrapes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine as _;

/// Outcomes kept; beyond it a tenth is dropped, as exporter-toolkit's cache does.
const CACHE_SIZE: usize = 100;

/// What an unknown user's password is compared against: a bcrypt hash (cost 10, as htpasswd's
/// `-C 10` makes) of a random password that was thrown away, so that the comparison costs what a
/// known user's does and matches nothing.
const DECOY_HASH: &str = "$2y$10$o8OJ.k0Tg0fdink8eQBwnuxeMXJIVB4XYzGR0ejFMBp4/XMDdlvsm";

/// The outcome of checking a request's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No users are configured, or the credentials are right.
    Allowed,
    /// Missing, malformed or wrong credentials: 401, whichever it was.
    Refused,
}

/// The cache of bcrypt outcomes, shared by every connection.
#[derive(Clone, Default)]
pub struct Authenticator {
    cache: Arc<Mutex<HashMap<[u8; 32], bool>>>,
    /// One bcrypt comparison at a time, as exporter-toolkit's `bcryptMtx`.
    comparing: Arc<tokio::sync::Mutex<()>>,
}

impl Authenticator {
    /// Checks the `Authorization` header's value against `users` (user to bcrypt hash).
    pub async fn check(
        &self,
        users: &BTreeMap<String, String>,
        authorization: Option<&[u8]>,
    ) -> Verdict {
        if users.is_empty() {
            return Verdict::Allowed;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return Verdict::Refused;
        };
        let (known, hash) = match users.get(&user) {
            Some(hash) => (true, hash.clone()),
            None => (false, DECOY_HASH.to_owned()),
        };
        let key = cache_key(&user, &hash, &password);
        let cached = self.lock_cache().get(&key).copied();
        let matched = match cached {
            Some(matched) => matched,
            None => {
                let _one_at_a_time = self.comparing.lock().await;
                let compared = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash));
                // A malformed hash (refused when the file was read, so not expected) or a
                // failed task is a refusal.
                let matched = matches!(compared.await, Ok(Ok(true)));
                let mut cache = self.lock_cache();
                if cache.len() >= CACHE_SIZE {
                    let drop: Vec<[u8; 32]> = cache.keys().take(CACHE_SIZE / 10).copied().collect();
                    for key in drop {
                        cache.remove(&key);
                    }
                }
                cache.insert(key, matched);
                matched
            }
        };
        if known && matched {
            Verdict::Allowed
        } else {
            Verdict::Refused
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], bool>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The digest a bcrypt outcome is cached under; each part is length-prefixed so that no two
/// different triples run together into the same bytes.
fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, hash, password] {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

/// User and password of an `Authorization: Basic ...` value (RFC 7617): the scheme in any case,
/// base64 of `user:password`, the user ending at the first colon.
pub fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bcrypt hash of "secret" at cost 4, as `htpasswd -nbBC 4` writes it.
    const HASH: &str = "$2y$04$zViP7VBRZFCwCsvFMZyBoePzNoauCeUl6n0yRtTdR/8ADbeRGqTfq";

    fn header(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    fn users() -> BTreeMap<String, String> {
        BTreeMap::from([("prometheus".to_owned(), HASH.to_owned())])
    }

    #[test]
    fn credentials_are_read_as_rfc_7617_says() {
        assert_eq!(
            basic_credentials(b"Basic cHJvbWV0aGV1czpzZTpjcmV0"),
            Some(("prometheus".to_owned(), "se:cret".to_owned())),
            "the password may hold colons"
        );
        assert_eq!(
            basic_credentials(b"basic   YTpi "),
            Some(("a".to_owned(), "b".to_owned()))
        );
        for bad in [
            &b"Bearer YTpi"[..],
            b"Basic",
            b"Basic !!!",
            b"Basic YWJj", // "abc": no colon
            b"Basic /w==", // not UTF-8
        ] {
            assert_eq!(basic_credentials(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn only_the_right_user_and_password_pass() {
        let auth = Authenticator::default();
        let users = users();
        let check = |h: Option<Vec<u8>>| {
            let auth = auth.clone();
            let users = users.clone();
            async move { auth.check(&users, h.as_deref()).await }
        };
        assert_eq!(
            check(Some(header("prometheus", "secret"))).await,
            Verdict::Allowed
        );
        assert_eq!(
            check(Some(header("prometheus", "wrong"))).await,
            Verdict::Refused
        );
        assert_eq!(
            check(Some(header("nobody", "secret"))).await,
            Verdict::Refused
        );
        assert_eq!(check(Some(header("", ""))).await, Verdict::Refused);
        assert_eq!(check(None).await, Verdict::Refused);
        assert_eq!(
            Authenticator::default().check(&BTreeMap::new(), None).await,
            Verdict::Allowed,
            "no users, no authentication"
        );
    }

    #[tokio::test]
    async fn outcomes_are_cached_and_a_new_hash_misses_the_cache() {
        let auth = Authenticator::default();
        let users = users();
        let right = header("prometheus", "secret");
        assert_eq!(auth.check(&users, Some(&right)).await, Verdict::Allowed);
        assert_eq!(auth.lock_cache().len(), 1);
        assert_eq!(auth.check(&users, Some(&right)).await, Verdict::Allowed);
        assert_eq!(auth.lock_cache().len(), 1, "the second check hit the cache");
        // The decoy comparison is cached too, under the decoy hash.
        let unknown = header("nobody", "x");
        assert_eq!(auth.check(&users, Some(&unknown)).await, Verdict::Refused);
        assert_eq!(auth.lock_cache().len(), 2);
        // The same password under another hash (the file changed) is compared again.
        let changed = BTreeMap::from([(
            "prometheus".to_owned(),
            bcrypt::hash_with_salt("other", 4, [7; 16])
                .expect("hash")
                .format_for_version(bcrypt::Version::TwoY),
        )]);
        assert_eq!(auth.check(&changed, Some(&right)).await, Verdict::Refused);
        assert_eq!(auth.lock_cache().len(), 3);
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let auth = Authenticator::default();
        let users = users();
        for i in 0..(CACHE_SIZE + 5) {
            let h = header("prometheus", &format!("guess{i}"));
            assert_eq!(auth.check(&users, Some(&h)).await, Verdict::Refused);
        }
        assert!(auth.lock_cache().len() <= CACHE_SIZE);
    }

    #[test]
    fn the_decoy_is_a_bcrypt_hash_of_cost_10() {
        let parts: bcrypt::HashParts = DECOY_HASH.parse().expect("a bcrypt hash");
        assert_eq!(parts.get_cost(), 10);
    }
}
