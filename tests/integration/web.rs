//! The web server as clients see it: TLS, client certificates and basic authentication from an
//! exporter-toolkit web configuration file, read again when it or a certificate changes; gzip;
//! several listen addresses and systemd's sockets; idle clients that must not starve a scraper;
//! and a real Prometheus 2.42 scraping over TLS.
//!
//! Certificates and bcrypt hashes are made at test time with openssl and htpasswd
//! (support/tls.rs), and every request is made by a real client: curl, `openssl s_client`,
//! Prometheus. crashwatch runs with the Upstart job hook as its only source, which needs no bus,
//! so these tests need no root: the server is what is under test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::servers::{Prometheus, SecureScrape};
use crate::support::tls::{bcrypt_hash, make_certificates, make_certificates_named, Certificates};
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_crashwatch");

/// Whether curl is missing, after saying so: a skip outside CI, a failure under `CI=true`.
fn curl_missing() -> bool {
    if find_in_path("curl").is_some() {
        return false;
    }
    skip("needs curl (Debian package curl) as the HTTP and TLS client");
    true
}

/// crashwatch with the job hook as its only source (no bus needed), serving with `extra` flags.
fn start(dir: &Path, extra: &[&str]) -> Crashwatch {
    let hook = dir.join("hook.sock");
    let hook = hook.to_str().expect("UTF-8 path");
    let mut args = vec![
        "--source",
        "upstart",
        "--upstart-address",
        "none",
        "--upstart-kernel-log",
        "none",
        "--upstart-hook-socket",
        hook,
    ];
    args.extend_from_slice(extra);
    Crashwatch::spawn_on_bus("unix:path=/nonexistent", &args)
}

/// crashwatch serving with the web configuration `text`, written to `dir/web.yml`.
fn start_with_web_config(dir: &Path, text: &str) -> Crashwatch {
    let path = dir.join("web.yml");
    std::fs::write(&path, text).expect("writing the web configuration");
    start(
        dir,
        &["--web.config.file", path.to_str().expect("UTF-8 path")],
    )
}

/// `tls_server_config` with the server certificate and key of `certs`, then `extra` lines.
fn tls_section(certs: &Certificates, extra: &str) -> String {
    format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{extra}",
        certs.server_cert.display(),
        certs.server_key.display()
    )
}

/// An HTTP answer as curl received it.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Header names in lowercase.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `curl -sS -i` with `args`; an error (TLS refused, connection closed) is curl's exit status
/// and message.
fn curl(args: &[&str]) -> Result<Reply, String> {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    if !out.status.success() {
        return Err(format!(
            "curl {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers: {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// `https://127.0.0.1:<port><path>` trusting `ca`, with `extra` curl arguments first.
fn https(port: u16, path: &str, ca: &Path, extra: &[&str]) -> Result<Reply, String> {
    let url = format!("https://127.0.0.1:{port}{path}");
    let ca = ca.to_str().expect("UTF-8 path");
    let mut args = vec!["--cacert", ca];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

fn counted(metrics: &str, error_type: &str) -> f64 {
    metric_value(
        metrics,
        "crashwatch_errors_total",
        &[("component", "http"), ("error_type", error_type)],
    )
    .unwrap_or(0.0)
}

/// Waits until `error_type` has been counted `at_least` times, reading /metrics with `scrape`.
fn wait_counted(
    error_type: &str,
    at_least: f64,
    mut scrape: impl FnMut() -> Result<Reply, String>,
) -> f64 {
    let mut seen = 0.0;
    wait_until(Duration::from_secs(10), || {
        seen = scrape().map_or(0.0, |r| counted(&r.text(), error_type));
        seen >= at_least
    });
    seen
}

/// The serial number of the certificate the server on `port` presents, as openssl prints it.
fn served_serial(port: u16) -> Result<String, String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("openssl s_client: {e}"))?;
    certificate_serial(&out.stdout)
}

fn file_serial(path: &Path) -> String {
    certificate_serial(&std::fs::read(path).expect("reading a certificate"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn certificate_serial(pem: &[u8]) -> Result<String, String> {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("openssl x509: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(pem)
        .map_err(|e| format!("writing to openssl x509: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Replaces `to` with a copy of `from` at once (a rename), as certificate tools renew files.
fn replace(from: &Path, to: &Path) {
    let staged = to.with_extension("staged");
    std::fs::copy(from, &staged).expect("staging a file");
    std::fs::rename(&staged, to).expect("renaming a file into place");
}

#[test]
fn tls_serves_clients_that_trust_its_ca_and_refuses_plain_http() {
    if curl_missing() {
        return;
    }
    require_tls_tools!();
    let dir = TempDir::new("cw-web");
    let certs = make_certificates(dir.path());
    let cw = start_with_web_config(dir.path(), &tls_section(&certs, ""));
    assert!(
        cw.stderr()
            .contains(&format!("https://127.0.0.1:{}/metrics", cw.port())),
        "the start-up line names the https URL:\n{}",
        cw.stderr()
    );
    let reply = https(cw.port(), "/metrics", &certs.ca, &[]).expect("a TLS scrape");
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("crashwatch_"), "{}", reply.text());
    let reply = curl(&[
        "--cacert",
        certs.ca.to_str().unwrap(),
        "--tlsv1.2",
        "--tls-max",
        "1.2",
        &format!("https://localhost:{}/", cw.port()),
    ])
    .expect("TLS 1.2 by name");
    assert_eq!(reply.status, 200);

    let error = https(cw.port(), "/metrics", &certs.other_ca, &[]).expect_err("wrong CA");
    assert!(error.contains("exit status: 60"), "{error}");

    let plain = curl(&[&format!("http://127.0.0.1:{}/metrics", cw.port())])
        .expect("an answer in plain HTTP");
    assert_eq!(plain.status, 400);
    assert!(plain.text().contains("HTTPS"), "{}", plain.text());
    let seen = wait_counted("tls_handshake", 2.0, || {
        https(cw.port(), "/metrics", &certs.ca, &[])
    });
    assert!(
        seen >= 2.0,
        "the refused CA and plain HTTP were counted: {seen}"
    );
}

#[test]
fn basic_auth_refuses_a_wrong_user_and_a_wrong_password_alike() {
    if curl_missing() {
        return;
    }
    require_tls_tools!();
    let dir = TempDir::new("cw-web");
    let certs = make_certificates(dir.path());
    let config = format!(
        "{}basic_auth_users:\n  prometheus: {}\nhttp_server_config:\n  headers:\n    \
         X-Frame-Options: deny\n",
        tls_section(&certs, ""),
        bcrypt_hash("right horse")
    );
    let cw = start_with_web_config(dir.path(), &config);
    let port = cw.port();
    let ok = https(
        port,
        "/metrics",
        &certs.ca,
        &["-u", "prometheus:right horse"],
    )
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("x-frame-options"), Some("deny"));

    let wrong_password = https(
        port,
        "/metrics",
        &certs.ca,
        &["-u", "prometheus:horse-battery"],
    )
    .unwrap();
    let wrong_user = https(port, "/metrics", &certs.ca, &["-u", "grafana:right horse"]).unwrap();
    let none = https(port, "/metrics", &certs.ca, &[]).unwrap();
    for reply in [&wrong_password, &wrong_user, &none] {
        assert_eq!(reply.status, 401, "{reply:?}");
        assert_eq!(reply.header("www-authenticate"), Some("Basic"));
        assert_eq!(reply.header("x-frame-options"), Some("deny"));
    }
    assert_eq!(
        wrong_password.body, wrong_user.body,
        "the same refusal for both"
    );
    assert_eq!(wrong_password.headers.len(), wrong_user.headers.len());
    // The API and the landing page are behind the same door.
    for path in ["/", "/api/units"] {
        assert_eq!(
            https(port, path, &certs.ca, &[]).unwrap().status,
            401,
            "{path}"
        );
    }
    let seen = wait_counted("unauthorized", 5.0, || {
        https(
            port,
            "/metrics",
            &certs.ca,
            &["-u", "prometheus:right horse"],
        )
    });
    assert!(seen >= 5.0, "refusals counted: {seen}");
    assert!(
        !cw.stderr().contains("right horse") && !cw.stderr().contains("horse-battery"),
        "no password in the log:\n{}",
        cw.stderr()
    );
}

#[test]
fn client_certificates_are_required_and_checked_against_the_client_ca() {
    if curl_missing() {
        return;
    }
    require_tls_tools!();
    let dir = TempDir::new("cw-web");
    let certs = make_certificates(dir.path());
    let extra = format!(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
        certs.ca.display()
    );
    let cw = start_with_web_config(dir.path(), &tls_section(&certs, &extra));
    let port = cw.port();
    let cert = |c: &Path, k: &Path| {
        vec![
            "--cert".to_owned(),
            c.display().to_string(),
            "--key".to_owned(),
            k.display().to_string(),
        ]
    };
    let good = cert(&certs.client_cert, &certs.client_key);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let reply = https(port, "/metrics", &certs.ca, &good).expect("the client CA's certificate");
    assert_eq!(reply.status, 200);

    https(port, "/metrics", &certs.ca, &[]).expect_err("no certificate");
    let stranger = cert(&certs.other_client_cert, &certs.other_client_key);
    let stranger: Vec<&str> = stranger.iter().map(String::as_str).collect();
    https(port, "/metrics", &certs.ca, &stranger).expect_err("a stranger's certificate");
    for version in ["1.2", "1.3"] {
        let mut args = vec!["--tls-max", version];
        args.extend_from_slice(&stranger);
        https(port, "/metrics", &certs.ca, &args).expect_err(version);
    }
    let seen = wait_counted("tls_handshake", 4.0, || {
        https(port, "/metrics", &certs.ca, &good)
    });
    assert!(seen >= 4.0, "the refused handshakes were counted: {seen}");
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    if curl_missing() {
        return;
    }
    require_tls_tools!();
    let dir = TempDir::new("cw-web");
    let certs = make_certificates(dir.path());
    let renewed = make_certificates_named(dir.path(), "renewed-");
    let mut cw = start_with_web_config(dir.path(), &tls_section(&certs, ""));
    let before = served_serial(cw.port()).expect("a served certificate");
    assert_eq!(before, file_serial(&certs.server_cert));
    let expected = file_serial(&renewed.server_cert);
    assert_ne!(before, expected);

    replace(&renewed.server_key, &certs.server_key);
    replace(&renewed.server_cert, &certs.server_cert);
    let mut served = String::new();
    let renewed_served = wait_until(Duration::from_secs(10), || {
        served = served_serial(cw.port()).unwrap_or_default();
        served == expected
    });
    assert!(
        renewed_served,
        "still serving {served}, not {expected}\n{}",
        cw.stderr()
    );
    // Clients that trust the new CA get through; the process is the same.
    let reply = https(cw.port(), "/metrics", &renewed.ca, &[]).expect("the renewed chain");
    assert_eq!(reply.status, 200);
    assert_eq!(cw.exit_status(), None);
}

#[test]
fn a_changed_password_takes_effect_and_a_broken_file_keeps_the_last_good() {
    if curl_missing() {
        return;
    }
    require_tls_tools!();
    let dir = TempDir::new("cw-web");
    let path = dir.path().join("web.yml");
    let users = |password: &str| format!("basic_auth_users:\n  ops: {}\n", bcrypt_hash(password));
    std::fs::write(&path, users("first")).unwrap();
    let cw = start(dir.path(), &["--web.config.file", path.to_str().unwrap()]);
    let get = |credentials: &str| {
        let url = format!("http://127.0.0.1:{}/metrics", cw.port());
        curl(&["-u", credentials, &url]).expect("an answer")
    };
    assert_eq!(get("ops:first").status, 200);

    std::fs::write(&path, users("second")).unwrap();
    let changed = wait_until(Duration::from_secs(10), || get("ops:second").status == 200);
    assert!(changed, "the new password was not taken\n{}", cw.stderr());
    assert_eq!(
        get("ops:first").status,
        401,
        "the old password no longer works"
    );

    std::fs::write(&path, "basic_auth_users:\n  ops: not-a-hash\n").unwrap();
    let reply = get("ops:second");
    assert_eq!(
        reply.status, 200,
        "the last good configuration still serves"
    );
    let text = reply.text();
    assert_eq!(counted(&text, "web_config_reload_failed"), 1.0, "{text}");
    let log = cw.stderr();
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Refused the changed web configuration"))
        .collect();
    assert_eq!(logged.len(), 1, "one line per broken version: {logged:?}");
    assert!(logged[0].contains("web.yml"), "{}", logged[0]);
    assert!(!logged[0].contains("not-a-hash"), "{}", logged[0]);
    assert_eq!(get("ops:second").status, 200);
    assert_eq!(
        counted(&get("ops:second").text(), "web_config_reload_failed"),
        1.0,
        "counted once, not per request"
    );
}

#[test]
fn a_broken_web_config_stops_the_start_with_one_line_naming_it() {
    let dir = TempDir::new("cw-web");
    let cases = [
        (
            "unknown-key.yml",
            "tls_server_config:\n  cert_fil: a.pem\n",
            "cert_fil",
        ),
        (
            "missing-cert.yml",
            "tls_server_config:\n  cert_file: nowhere.pem\n  key_file: nowhere-key.pem\n",
            "nowhere.pem",
        ),
        (
            "old-tls.yml",
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n",
            "TLS10",
        ),
        (
            "plain-password.yml",
            "basic_auth_users:\n  ops: hunter2\n",
            "bcrypt",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["run", "--listen", "127.0.0.1:0", "--web.config.file"])
            .arg(&path)
            .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
            .stdin(Stdio::null())
            .output()
            .expect("running crashwatch");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(lines.len(), 1, "{name}: one line: {lines:?}");
        assert!(
            lines[0].contains(&path.display().to_string()),
            "{name}: {}",
            lines[0]
        );
        assert!(lines[0].contains(expected), "{name}: {}", lines[0]);
        assert!(!lines[0].contains("hunter2"), "{name}: {}", lines[0]);
    }
}

#[test]
fn check_config_checks_the_web_config_and_prints_no_secret() {
    require_tls_tools!();
    let dir = TempDir::new("cw-web");
    let certs = make_certificates(dir.path());
    let hash = bcrypt_hash("s3cret");
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "{}basic_auth_users:\n  ops: {hash}\n",
            tls_section(&certs, "")
        ),
    )
    .unwrap();
    let toml = dir.path().join("crashwatch.toml");
    std::fs::write(
        &toml,
        format!(
            "[web]\nlisten_addresses = [\"127.0.0.1:9863\", \":9864\"]\nconfig_file = {:?}\n",
            web.display().to_string()
        ),
    )
    .unwrap();
    let check = || {
        Command::new(BIN)
            .arg("check-config")
            .arg(&toml)
            .output()
            .expect("running check-config")
    };
    let out: Output = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{}: ok (TLS)", web.display())),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&hash) && !stdout.contains("BEGIN"),
        "{stdout}"
    );

    // A key that does not go with the certificate.
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            certs.server_cert.display(),
            certs.client_key.display()
        ),
    )
    .unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("web.config_file") && stderr.contains("do not go together"),
        "{stderr}"
    );
    let key_text = std::fs::read_to_string(&certs.client_key).unwrap();
    let key_body = key_text.lines().nth(1).unwrap_or("unused");
    assert!(!stderr.contains(key_body), "{stderr}");
}

#[test]
fn metrics_and_the_api_are_gzipped_only_when_asked() {
    if curl_missing() {
        return;
    }
    let dir = TempDir::new("cw-web");
    let cw = start(dir.path(), &[]);
    for path in ["/metrics", "/api/units"] {
        let url = format!("http://127.0.0.1:{}{path}", cw.port());
        let packed = curl(&["-H", "Accept-Encoding: gzip", &url]).expect("an answer");
        assert_eq!(packed.status, 200);
        assert_eq!(packed.header("content-encoding"), Some("gzip"), "{path}");
        assert_eq!(packed.header("vary"), Some("Accept-Encoding"), "{path}");
        let mut gunzip = Command::new("gzip")
            .args(["-dc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("running gzip");
        gunzip
            .stdin
            .take()
            .unwrap()
            .write_all(&packed.body)
            .unwrap();
        let unpacked = gunzip.wait_with_output().expect("gzip");
        assert!(unpacked.status.success(), "{path}: not gzip");
        let unpacked = String::from_utf8(unpacked.stdout).expect("UTF-8");

        let plain = curl(&[&url]).expect("an answer");
        assert_eq!(plain.header("content-encoding"), None, "{path}");
        assert_eq!(plain.header("vary"), Some("Accept-Encoding"), "{path}");
        if path == "/metrics" {
            assert!(unpacked.contains("# TYPE crashwatch_"), "{unpacked}");
            assert!(plain.text().contains("# TYPE crashwatch_"));
            promtool_or_skip(&unpacked);
        } else {
            let document: serde_json::Value = serde_json::from_str(&unpacked).expect("JSON");
            assert!(document["units"].is_array(), "{document}");
        }
        let refused = curl(&["-H", "Accept-Encoding: gzip;q=0, identity", &url]).unwrap();
        assert_eq!(refused.header("content-encoding"), None, "{path}");
    }
}

/// `promtool check metrics` on `text`, when promtool is here (a skip outside CI otherwise).
fn promtool_or_skip(text: &str) {
    if let Err(reason) = promtool_prerequisites() {
        skip(&reason);
        return;
    }
    promtool_check_metrics(text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn only_get_and_head_are_answered_and_heads_are_capped() {
    if curl_missing() {
        return;
    }
    let dir = TempDir::new("cw-web");
    let cw = start(dir.path(), &[]);
    let url = format!("http://127.0.0.1:{}/metrics", cw.port());
    let post = curl(&["-X", "POST", &url]).unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let get = curl(&[&url]).unwrap();
    let head = curl(&["-I", &url]).unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // The exposition can change between the two requests only in its values, never in size
    // by much; the length must be there and close to the body's.
    let length: usize = head
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("HEAD has no length: {head:?}"));
    assert!(
        length.abs_diff(get.body.len()) < 64,
        "{length} vs {}",
        get.body.len()
    );
    let huge = format!("X-Filler: {}", "a".repeat(20_000));
    let too_large = curl(&["-H", &huge, &url]).unwrap();
    assert_eq!(too_large.status, 431);
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{}/nope", cw.port())])
            .unwrap()
            .status,
        404
    );
    let metrics = http_get(cw.port(), "/metrics").unwrap();
    assert!(counted(&metrics, "method_not_allowed") >= 1.0, "{metrics}");
    assert!(counted(&metrics, "request_too_large") >= 1.0, "{metrics}");
}

#[test]
fn the_api_can_be_turned_off() {
    if curl_missing() {
        return;
    }
    let dir = TempDir::new("cw-web");
    let cw = start(dir.path(), &["--web.disable-api"]);
    let base = format!("http://127.0.0.1:{}", cw.port());
    assert_eq!(curl(&[&format!("{base}/metrics")]).unwrap().status, 200);
    for path in [
        "/api/units",
        "/api/units/x.service",
        "/api/units/x.service/events",
    ] {
        assert_eq!(
            curl(&[&format!("{base}{path}")]).unwrap().status,
            404,
            "{path}"
        );
    }
    let landing = curl(&[&format!("{base}/")]).unwrap();
    assert_eq!(landing.status, 200);
    assert_eq!(
        landing.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    // The page's links are relative, so they hold behind a proxy that serves it under a path.
    let page = landing.text();
    assert!(
        page.contains("href=\"metrics\"") && !page.contains("api/units"),
        "{page}"
    );

    let other = TempDir::new("cw-web");
    let on = start(other.path(), &[]);
    let units = curl(&[&format!("http://127.0.0.1:{}/api/units", on.port())]).unwrap();
    assert_eq!(units.status, 200, "served when not turned off");
}

#[test]
fn every_listen_address_serves() {
    if curl_missing() {
        return;
    }
    let dir = TempDir::new("cw-web");
    let second = free_port();
    let cw = start(
        dir.path(),
        &["--web.listen-address", &format!("127.0.0.2:{second}")],
    );
    assert!(http_get(cw.port(), "/metrics").is_ok(), "the first address");
    let reply = curl(&[&format!("http://127.0.0.2:{second}/metrics")]).expect("the second");
    assert_eq!(reply.status, 200);
    assert!(
        cw.stderr()
            .contains(&format!("http://127.0.0.2:{second}/metrics")),
        "{}",
        cw.stderr()
    );
}

#[test]
fn sockets_passed_by_systemd_are_served() {
    if find_in_path("systemd-socket-activate").is_none() {
        skip("needs systemd-socket-activate (Debian package systemd)");
        return;
    }
    let dir = TempDir::new("cw-web");
    let port = free_port();
    let hook = dir.path().join("hook.sock");
    // systemd-socket-activate binds, then starts crashwatch with the socket as fd 3 when the
    // first client connects, as a .socket unit does.
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}")])
        .args([BIN, "run", "--web.systemd-socket", "--source", "upstart"])
        .args(["--upstart-address", "none", "--upstart-kernel-log", "none"])
        .arg("--upstart-hook-socket")
        .arg(&hook)
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running systemd-socket-activate");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().expect("piped");
    let child = Reap(child);
    let connected = wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(connected, "systemd-socket-activate did not listen");
    let body = http_get(port, "/metrics");
    drop(child);
    let mut log = String::new();
    let _ = std::io::BufReader::new(stderr).read_to_string(&mut log);
    let body = body.unwrap_or_else(|e| panic!("scraping the passed socket: {e}\n{log}"));
    assert!(body.contains("crashwatch_"), "{body}");
    assert!(log.contains("the sockets systemd passed"), "{log}");

    // Without sockets to take, the start stops with one line.
    let out = Command::new(BIN)
        .args(["run", "--web.systemd-socket", "--source", "upstart"])
        .args(["--upstart-address", "none", "--upstart-kernel-log", "none"])
        .arg("--upstart-hook-socket")
        .arg(dir.path().join("hook2.sock"))
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .output()
        .expect("running crashwatch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("LISTEN_")).collect();
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("$LISTEN_PID and $LISTEN_FDS are not set"),
        "{stderr}"
    );
}

#[test]
fn idle_and_quiet_connections_never_delay_a_scrape() {
    if curl_missing() {
        return;
    }
    let dir = TempDir::new("cw-web");
    let cw = start(dir.path(), &[]);
    let port = cw.port();
    // A hundred clients that connect and send nothing, and some that stop mid-request.
    let mut idle = Vec::new();
    for i in 0..120 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
        if i % 4 == 0 {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        }
        idle.push(s);
    }
    let scrape = |what: &str| {
        let started = Instant::now();
        let metrics = http_get(port, "/metrics").unwrap_or_else(|e| panic!("{what}: {e}"));
        (started.elapsed(), metrics)
    };
    let (took, _) = scrape("with idle clients");
    assert!(
        took < Duration::from_secs(1),
        "a scrape took {took:?} behind idle clients"
    );

    // Established keep-alive connections beyond the cap: the quietest make room, the scrape
    // goes on.
    let mut kept = Vec::new();
    for _ in 0..80 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("a request");
        let mut answer = [0u8; 512];
        let n = s.read(&mut answer).expect("an answer");
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 404"),
            "{:?}",
            &answer[..n]
        );
        kept.push(s);
    }
    let (took, metrics) = scrape("with keep-alive clients");
    assert!(
        took < Duration::from_secs(1),
        "a scrape took {took:?} behind keep-alive clients"
    );
    let dropped = wait_counted("too_many_connections", 16.0, || {
        curl(&[&format!("http://127.0.0.1:{port}/metrics")])
    });
    assert!(
        dropped >= 16.0,
        "80 established over a cap of 64: {dropped}\n{metrics}"
    );

    // The silent ones are dropped after their few seconds, and counted.
    let timed_out = wait_counted("timeout", 120.0, || {
        curl(&[&format!("http://127.0.0.1:{port}/metrics")])
    });
    assert!(
        timed_out >= 120.0,
        "the idle clients were not timed out: {timed_out}"
    );
    let mut closed = 0;
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(1))).ok();
        let mut byte = [0u8; 1];
        if matches!(s.read(&mut byte), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 120,
        "every idle connection was closed by the server"
    );
}

/// A Prometheus scraping `port` until its target's health is `want`; the last health and error.
fn wait_health(prometheus: &Prometheus, want: &str) -> (bool, String, String) {
    let mut last = (String::new(), String::new());
    let reached = wait_until(Duration::from_secs(30), || {
        if let Ok(health) = prometheus.target_health() {
            last = health;
        }
        last.0 == want
    });
    (reached, last.0, last.1)
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth_and_a_wrong_password_is_down() {
    require_tls_tools!();
    require_prometheus!();
    let dir = TempDir::new("cw-web");
    let certs = make_certificates(dir.path());
    let config = format!(
        "{}basic_auth_users:\n  prometheus: {}\n",
        tls_section(&certs, ""),
        bcrypt_hash("scrape-me")
    );
    let cw = start_with_web_config(dir.path(), &config);
    let good = Prometheus::start_secure(&SecureScrape {
        port: cw.port(),
        ca: &certs.ca,
        client_cert: None,
        basic_auth: Some(("prometheus", "scrape-me")),
    });
    let bad = Prometheus::start_secure(&SecureScrape {
        port: cw.port(),
        ca: &certs.ca,
        client_cert: None,
        basic_auth: Some(("prometheus", "guess")),
    });
    let (up, health, error) = wait_health(&good, "up");
    assert!(
        up,
        "health {health:?}, error {error:?}\n{}",
        good.log_tail(20)
    );
    let crashwatch_up = good.value("up{job=\"crashwatch\"}", &[]);
    assert_eq!(crashwatch_up, Some(1.0));
    let scraped = good.value(
        "count({job=\"crashwatch\", __name__=~\"crashwatch_.*\"})",
        &[],
    );
    assert!(
        scraped.is_some_and(|v| v >= 1.0),
        "no crashwatch series in Prometheus"
    );

    let (down, health, error) = wait_health(&bad, "down");
    assert!(
        down,
        "health {health:?}, error {error:?}\n{}",
        bad.log_tail(20)
    );
    assert!(error.contains("401"), "{error}");
}

#[test]
fn prometheus_scrapes_with_a_client_certificate() {
    require_tls_tools!();
    require_prometheus!();
    let dir = TempDir::new("cw-web");
    let certs = make_certificates(dir.path());
    let extra = format!(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
        certs.ca.display()
    );
    let cw = start_with_web_config(dir.path(), &tls_section(&certs, &extra));
    let with_cert = Prometheus::start_secure(&SecureScrape {
        port: cw.port(),
        ca: &certs.ca,
        client_cert: Some((&certs.client_cert, &certs.client_key)),
        basic_auth: None,
    });
    let (up, health, error) = wait_health(&with_cert, "up");
    assert!(
        up,
        "health {health:?}, error {error:?}\n{}",
        with_cert.log_tail(20)
    );
    let stranger = Prometheus::start_secure(&SecureScrape {
        port: cw.port(),
        ca: &certs.ca,
        client_cert: Some((&certs.other_client_cert, &certs.other_client_key)),
        basic_auth: None,
    });
    let (down, health, error) = wait_health(&stranger, "down");
    assert!(
        down,
        "health {health:?}, error {error:?}\n{}",
        stranger.log_tail(20)
    );
}

/// `crashwatch status` reads a daemon that serves TLS with basic authentication, with the flags
/// that mirror the server's web configuration file; a wrong password or an untrusted certificate
/// is one line on stderr and exit 1, and the password is never printed.
#[test]
fn status_reads_a_daemon_behind_tls_and_basic_auth() {
    require_tls_tools!();
    let dir = TempDir::new("cw-web");
    let certs = make_certificates(dir.path());
    let hash = bcrypt_hash("status-s3cret");
    let cw = start_with_web_config(
        dir.path(),
        &tls_section(
            &certs,
            &format!("basic_auth_users:\n  operator: '{hash}'\n"),
        ),
    );
    let password = dir.path().join("password");
    std::fs::write(&password, "status-s3cret\n").expect("the password file");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-it\n").expect("the wrong password file");
    let status = |password: &Path, ca: &Path| {
        Command::new(BIN)
            .args([
                "status",
                "--address",
                &format!("https://localhost:{}", cw.port()),
            ])
            .arg("--tls.ca-file")
            .arg(ca)
            .args(["--basic-auth.username", "operator"])
            .arg("--basic-auth.password-file")
            .arg(password)
            .env_remove("CRASHWATCH_CONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("running crashwatch status")
    };
    let ok = status(&password, &certs.ca);
    let printed = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{ok:?}");
    assert!(printed.contains("units watched"), "{printed}");

    for (what, out) in [
        ("a wrong password", status(&wrong, &certs.ca)),
        (
            "a CA that signed nothing here",
            status(&password, &certs.other_ca),
        ),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line\n{stderr}"
        );
        for secret in ["status-s3cret", "not-it"] {
            assert!(
                !stderr.contains(secret),
                "{what}: a password on stderr\n{stderr}"
            );
        }
    }
    let refused = String::from_utf8_lossy(&status(&wrong, &certs.ca).stderr).into_owned();
    assert!(refused.contains("401"), "{refused}");
}
