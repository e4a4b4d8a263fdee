//! Proxies from the environment, read as curl reads them, so a node configured for curl needs
//! nothing more for crashwatch.
//!
//! An `http://` URL goes through `$http_proxy` (lowercase only: a CGI program's `HTTP_PROXY` can be
//! set by a request's `Proxy:` header, so curl ignores it), an `https://` URL through
//! `$https_proxy` or `$HTTPS_PROXY`; either falls back to `$all_proxy` or `$ALL_PROXY`. The
//! lowercase variable wins. `$no_proxy` (or `$NO_PROXY`) lists hosts reached directly: `*` for
//! all, a name (with or without a leading dot) for itself and every name under it, an IP address,
//! or a CIDR range; separated by commas or spaces. Only `http://` proxies are spoken to (a
//! CONNECT tunnel for both schemes); a proxy's user and password in its URL are sent to it as
//! Basic credentials. The environment is read at each request.

use std::net::IpAddr;

use super::http::HttpUrl;

/// The proxy `url` goes through, if any. The error names the variable, never its value (which
/// may carry the proxy's password).
pub fn proxy_for(url: &HttpUrl) -> Result<Option<ureq::Proxy>, String> {
    choose(url, |name| std::env::var(name).ok())
}

fn choose(
    url: &HttpUrl,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ureq::Proxy>, String> {
    let first = |names: &[&'static str]| {
        names.iter().find_map(|name| {
            env(name)
                .filter(|value| !value.trim().is_empty())
                .map(|value| (*name, value))
        })
    };
    let for_scheme: &[&'static str] = if url.is_https() {
        &["https_proxy", "HTTPS_PROXY"]
    } else {
        &["http_proxy"]
    };
    let Some((variable, value)) = first(for_scheme).or_else(|| first(&["all_proxy", "ALL_PROXY"]))
    else {
        return Ok(None);
    };
    if let Some((_, list)) = first(&["no_proxy", "NO_PROXY"]) {
        if bypasses(&list, url.bare_host()) {
            return Ok(None);
        }
    }
    let value = value.trim();
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "${variable}: {}:// proxies are not supported; give an http:// proxy",
                scheme.to_ascii_lowercase()
            ))
        }
        None => value,
    };
    ureq::Proxy::new(&format!("http://{rest}"))
        .map(Some)
        .map_err(|_| format!("${variable} is not a proxy URL"))
}

/// Whether `host` (an IPv6 address without brackets) is in the `no_proxy` list.
pub fn bypasses(list: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let address = host.parse::<IpAddr>().ok();
    list.split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.trim_start_matches('[').trim_end_matches(']');
            if let Some(address) = address {
                return match entry.split_once('/') {
                    Some((network, bits)) => in_network(address, network, bits),
                    None => entry
                        .parse::<IpAddr>()
                        .is_ok_and(|listed| listed == address),
                };
            }
            let name = entry.trim_start_matches('.').trim_end_matches('.');
            !name.is_empty()
                && (host.eq_ignore_ascii_case(name)
                    || host.len() > name.len()
                        && host.as_bytes()[host.len() - name.len() - 1] == b'.'
                        && host[host.len() - name.len()..].eq_ignore_ascii_case(name))
        })
}

fn in_network(address: IpAddr, network: &str, bits: &str) -> bool {
    let (Ok(network), Ok(bits)) = (network.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (address, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn chosen(url: &str, vars: &[(&str, &str)]) -> Result<Option<String>, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let url = HttpUrl::parse(url).expect("url");
        choose(&url, |name| vars.get(name).cloned())
            .map(|p| p.map(|p| format!("{}:{}", p.host(), p.port())))
    }

    #[test]
    fn the_variables_are_curls() {
        let http = "http://hooks.example.org/x";
        let https = "https://hooks.example.org/x";
        assert_eq!(chosen(http, &[]), Ok(None));
        assert_eq!(
            chosen(http, &[("http_proxy", "proxy:3128")]),
            Ok(Some("proxy:3128".into()))
        );
        // The uppercase form is refused for http://, as curl does.
        assert_eq!(chosen(http, &[("HTTP_PROXY", "proxy:3128")]), Ok(None));
        assert_eq!(chosen(https, &[("http_proxy", "proxy:3128")]), Ok(None));
        assert_eq!(
            chosen(https, &[("HTTPS_PROXY", "http://up:8080")]),
            Ok(Some("up:8080".into()))
        );
        assert_eq!(
            chosen(
                https,
                &[
                    ("https_proxy", "http://low:1"),
                    ("HTTPS_PROXY", "http://up:2")
                ]
            ),
            Ok(Some("low:1".into()))
        );
        assert_eq!(
            chosen(http, &[("ALL_PROXY", "http://all:9")]),
            Ok(Some("all:9".into()))
        );
        assert_eq!(
            chosen(https, &[("all_proxy", "all")]),
            Ok(Some("all:80".into()))
        );
        assert_eq!(chosen(https, &[("https_proxy", " ")]), Ok(None));
    }

    #[test]
    fn only_http_proxies_are_spoken_to_and_their_passwords_stay_hidden() {
        let error = chosen(
            "https://a/",
            &[("https_proxy", "socks5://user:pw-s3cr3t@proxy:1080")],
        )
        .expect_err("socks");
        assert_eq!(
            error,
            "$https_proxy: socks5:// proxies are not supported; give an http:// proxy"
        );
        assert_eq!(
            chosen("https://a/", &[("https_proxy", "http://user:pw@proxy:1")]),
            Ok(Some("proxy:1".into()))
        );
    }

    #[test]
    fn no_proxy_matches_names_addresses_and_ranges() {
        let proxied = |url: &str, no_proxy: &str| {
            chosen(
                url,
                &[
                    ("http_proxy", "p:1"),
                    ("https_proxy", "p:1"),
                    ("NO_PROXY", no_proxy),
                ],
            )
            .expect("valid")
            .is_some()
        };
        assert!(!proxied("http://example.org/", "*"));
        assert!(!proxied("http://api.example.org/", ".example.org"));
        assert!(!proxied("http://api.example.org/", "example.org"));
        assert!(!proxied("http://EXAMPLE.org/", "example.org"));
        assert!(proxied("http://badexample.org/", "example.org"));
        assert!(!proxied("http://127.0.0.1:9093/", "localhost, 127.0.0.1"));
        assert!(!proxied("http://10.1.2.3/", "10.0.0.0/8"));
        assert!(proxied("http://11.1.2.3/", "10.0.0.0/8"));
        assert!(!proxied("https://[::1]:8443/", "::1"));
        assert!(!proxied("https://[fd00::5]/", "fd00::/8"));
        assert!(proxied("http://localhost/", "127.0.0.1"));
        assert!(proxied("http://a.b/", ""));
        // Lowercase wins over uppercase.
        assert_eq!(
            chosen(
                "http://a.b/",
                &[
                    ("http_proxy", "p:1"),
                    ("no_proxy", "x.y"),
                    ("NO_PROXY", "a.b")
                ]
            ),
            Ok(Some("p:1".into()))
        );
    }
}
