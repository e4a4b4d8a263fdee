//! Any bytes as what crashwatch parses of HTTP itself rather than through hyper or ureq: a
//! configured URL, a redirect's `Location` against it, a `no_proxy` list against a host, and an
//! `Authorization: Basic` value. Each answers with a value or an error line, never a panic.
#![no_main]

use crashwatch::internals::{basic_credentials, bypasses, HttpUrl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((user, _password)) = basic_credentials(data) {
        assert!(!user.contains(':'), "the user ends at the first colon");
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(2, '\n');
    let (first, second) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let _ = bypasses(second, first);
    match HttpUrl::parse(first) {
        Ok(url) => {
            if let Ok(next) = url.follow(second) {
                let _ = next.port();
            }
            for base in ["http://127.0.0.1:9/a/b?q", "https://[::1]/x/"] {
                let base = HttpUrl::parse(base).expect("a valid base");
                if let Ok(next) = base.follow(first) {
                    let _ = next.bare_host();
                }
            }
        }
        Err(e) => assert!(!e.contains('\n'), "multi-line error: {e}"),
    }
});
