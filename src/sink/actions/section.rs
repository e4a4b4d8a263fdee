//! The `[[action]]` section of the configuration file, and its validation: each action kind is
//! checked where it is implemented.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::alertmanager;
use super::command::{self, CommandAction};
use super::http::{self, Auth, AuthorizationSection, BasicAuthSection, Endpoint, HttpUrl, Retry};
use super::secret::{Credential, Secret, SecretFile};
use super::tls::{TlsSection, TlsSettings};
use super::webhook::WebhookAction;
use super::{Action, ActionKind};
use crate::glob::Glob;
use crate::time::parse_duration;

/// One `[[action]]`: what to do when a crash loop of a matching unit starts and when it ends.
/// Exactly one of `command`, `webhook` and `alertmanager`; the other keys tune that one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSection {
    /// Globs of the units this applies to. Default `["*"]`: every watched unit.
    pub units: Option<Vec<String>>,
    /// A program and its arguments, run without a shell; the loop is described in its
    /// environment (`CRASHWATCH_UNIT`, ...).
    pub command: Option<Vec<String>>,
    /// An `http://` or `https://` URL to POST a JSON object to.
    pub webhook: Option<String>,
    /// The `http://` or `https://` URL of an Alertmanager; alerts go to `{url}/api/v2/alerts`.
    pub alertmanager: Option<String>,
    /// How long a command may run, or one HTTP attempt may take. Default 30s for a command, 10s
    /// for a request.
    pub timeout: Option<String>,
    /// Extra HTTP headers, e.g. `{ X-Team = "web" }`. Webhook and Alertmanager.
    pub headers: Option<BTreeMap<String, Secret>>,
    /// Extra HTTP headers whose values are read from files at each request, e.g.
    /// `{ X-Api-Key = "api-key" }`; a relative path names a systemd credential.
    pub header_files: Option<BTreeMap<String, String>>,
    /// `{ username, password_file }` (or `username_file`, `password`), as Prometheus has it.
    pub basic_auth: Option<BasicAuthSection>,
    /// `{ type = "Bearer", credentials_file }` (or `credentials`), as Prometheus has it.
    pub authorization: Option<AuthorizationSection>,
    /// `{ ca_file, cert_file, key_file, server_name, insecure_skip_verify }` for `https://`.
    pub tls_config: Option<TlsSection>,
    /// Attempts after a failed one (5xx, 408, 429, no connection, timeout). Default 3.
    pub retries: Option<u32>,
    /// The wait before the first retry; it doubles for each next one. Default 1s.
    pub backoff: Option<String>,
    /// The longest wait between two attempts. Default 30s.
    pub max_backoff: Option<String>,
    /// Alertmanager: the `alertname` label. Default `CrashwatchUnitCrashLooping`.
    pub alertname: Option<String>,
    /// Alertmanager: the `severity` label. Default `critical`.
    pub severity: Option<String>,
    /// Alertmanager: more labels; `instance` replaces the host name.
    pub labels: Option<BTreeMap<String, String>>,
    /// Alertmanager: how often the alert of an open loop is sent again. Default 60s.
    pub resend_interval: Option<String>,
    /// Webhook and Alertmanager: also send the last lines the crashed run wrote (masked as
    /// `[crash_context]` says), which may hold what should not leave the node. Default false. A
    /// command always gets them, in a file named by `CRASHWATCH_LAST_LINES_FILE`.
    pub include_logs: Option<bool>,
}

impl ActionSection {
    /// Checks the section. Errors are fragments to follow `action[N]: `, naming the key.
    pub fn resolve(&self) -> Result<Action, String> {
        let section = self;
        let units = match &section.units {
            Some(patterns) if patterns.is_empty() => {
                return Err("units must not be empty (leave it out for every unit)".to_owned())
            }
            Some(patterns) => patterns
                .iter()
                .map(|p| Glob::new(p).map_err(|e| format!("units: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![Glob::new("*").map_err(|e| e.to_string())?],
        };
        let kinds: Vec<&str> = [
            ("command", section.command.is_some()),
            ("webhook", section.webhook.is_some()),
            ("alertmanager", section.alertmanager.is_some()),
        ]
        .iter()
        .filter(|(_, given)| *given)
        .map(|(name, _)| *name)
        .collect();
        let kind = match kinds.as_slice() {
            [kind] => *kind,
            [] => return Err("needs one of command, webhook or alertmanager".to_owned()),
            several => {
                return Err(format!(
                    "has {}; give one per [[action]]",
                    several.join(" and ")
                ))
            }
        };
        let only_for = |key: &str, given: bool, kinds: &[&str]| -> Result<(), String> {
            if given && !kinds.contains(&kind) {
                return Err(format!(
                    "{key} applies to {} actions, not {kind}",
                    kinds.join(" and ")
                ));
            }
            Ok(())
        };
        let http_kinds = ["webhook", "alertmanager"];
        only_for("headers", section.headers.is_some(), &http_kinds)?;
        only_for("header_files", section.header_files.is_some(), &http_kinds)?;
        only_for("basic_auth", section.basic_auth.is_some(), &http_kinds)?;
        only_for(
            "authorization",
            section.authorization.is_some(),
            &http_kinds,
        )?;
        only_for("tls_config", section.tls_config.is_some(), &http_kinds)?;
        only_for("retries", section.retries.is_some(), &http_kinds)?;
        only_for("backoff", section.backoff.is_some(), &http_kinds)?;
        only_for("max_backoff", section.max_backoff.is_some(), &http_kinds)?;
        only_for("include_logs", section.include_logs.is_some(), &http_kinds)?;
        for (key, given) in [
            ("alertname", section.alertname.is_some()),
            ("severity", section.severity.is_some()),
            ("labels", section.labels.is_some()),
            ("resend_interval", section.resend_interval.is_some()),
        ] {
            only_for(key, given, &["alertmanager"])?;
        }
        let kind = match kind {
            "command" => {
                let argv = section.command.clone().unwrap_or_default();
                command::check_program(&argv).map_err(|e| format!("command: {e}"))?;
                ActionKind::Command(CommandAction {
                    argv,
                    timeout: duration(
                        "timeout",
                        section.timeout.as_ref(),
                        Duration::from_secs(30),
                    )?,
                })
            }
            _ => {
                let retries = section.retries.unwrap_or(3);
                if retries > 100 {
                    return Err(format!("retries must be at most 100, not {retries}"));
                }
                let backoff =
                    duration("backoff", section.backoff.as_ref(), Duration::from_secs(1))?;
                let max_backoff = duration(
                    "max_backoff",
                    section.max_backoff.as_ref(),
                    Duration::from_secs(30).max(backoff),
                )?;
                if max_backoff < backoff {
                    return Err("max_backoff must not be shorter than backoff".to_owned());
                }
                let retry = Retry {
                    timeout: duration(
                        "timeout",
                        section.timeout.as_ref(),
                        Duration::from_secs(10),
                    )?,
                    retries,
                    backoff,
                    max_backoff,
                };
                if let Some(url) = &section.webhook {
                    let url = HttpUrl::parse(url).map_err(|e| format!("webhook: {e}"))?;
                    ActionKind::Webhook(WebhookAction {
                        endpoint: section.endpoint("webhook", url)?,
                        retry,
                        include_logs: section.include_logs.unwrap_or(false),
                    })
                } else {
                    let url = section.alertmanager.as_deref().unwrap_or_default();
                    let url = HttpUrl::parse(url).map_err(|e| format!("alertmanager: {e}"))?;
                    let endpoint = section.endpoint("alertmanager", url.join("/api/v2/alerts"))?;
                    ActionKind::Alertmanager(alertmanager::resolve(section, endpoint, retry)?)
                }
            }
        };
        Ok(Action { units, kind })
    }
}

impl ActionSection {
    /// The request settings of a webhook or Alertmanager action whose URL is under `key`.
    fn endpoint(&self, key: &str, url: HttpUrl) -> Result<Endpoint, String> {
        let mut headers = Vec::new();
        for (name, value) in self.headers.iter().flatten() {
            http::check_header(name, value.expose()).map_err(|e| format!("headers: {e}"))?;
            headers.push((name.clone(), Credential::Inline(value.clone())));
        }
        for (name, path) in self.header_files.iter().flatten() {
            if self.headers.as_ref().is_some_and(|h| h.contains_key(name)) {
                return Err(format!("{name} is in both headers and header_files"));
            }
            http::check_header(name, "").map_err(|e| format!("header_files: {e}"))?;
            let file = SecretFile::open(&format!("header_files.{name}"), path)?;
            http::check_header(name, file.read()?.expose())
                .map_err(|e| format!("header_files: {e}"))?;
            headers.push((name.clone(), Credential::File(file)));
        }
        let auth = Auth::resolve(self.basic_auth.as_ref(), self.authorization.as_ref())?;
        if auth.is_some() {
            if let Some((name, _)) = headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            {
                let with = if self.basic_auth.is_some() {
                    "basic_auth"
                } else {
                    "authorization"
                };
                return Err(format!("a header {name} cannot be given with {with}"));
            }
        }
        let tls = match &self.tls_config {
            Some(_) if !url.is_https() => {
                return Err(format!("tls_config applies to an https:// {key} URL"))
            }
            Some(section) => TlsSettings::resolve(section, "tls_config")?,
            None if url.is_https() => TlsSettings::resolve(&TlsSection::default(), "tls_config")?,
            None => TlsSettings::default(),
        };
        Ok(Endpoint {
            url,
            headers,
            auth,
            tls,
        })
    }
}

/// An action's duration `key`: `text` parsed, or `default`; never zero.
pub(super) fn duration(
    key: &str,
    text: Option<&String>,
    default: Duration,
) -> Result<Duration, String> {
    let value = match text {
        Some(text) => parse_duration(text).map_err(|e| format!("{key}: {e}"))?,
        None => default,
    };
    if value.is_zero() {
        return Err(format!("{key} must be longer than zero"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> ActionSection {
        toml::from_str(text).expect("valid TOML")
    }

    #[test]
    fn inline_secrets_are_read_and_never_shown() {
        let section = section(
            r#"
            webhook = "http://127.0.0.1:9/hook"
            headers = { X-Api-Key = "key-s3cr3t" }
            basic_auth = { username = "cw", password = "password-s3cr3t" }
            "#,
        );
        let action = section.resolve().expect("valid");
        let shown = format!("{section:?} {action:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let ActionKind::Webhook(webhook) = &action.kind else {
            panic!("a webhook")
        };
        assert_eq!(
            webhook.endpoint.headers[0]
                .1
                .read()
                .expect("inline")
                .expose(),
            "key-s3cr3t"
        );
        let bearer = self::section(
            r#"
            alertmanager = "https://127.0.0.1:9093"
            authorization = { credentials = "token-s3cr3t" }
            tls_config = { insecure_skip_verify = true }
            "#,
        );
        let action = bearer.resolve().expect("valid");
        assert!(!format!("{bearer:?} {action:?}").contains("s3cr3t"));
    }

    #[test]
    fn request_keys_belong_to_http_actions_and_name_themselves() {
        let cases = [
            (
                "command = [\"/bin/true\"]\nbasic_auth = { username = \"a\" }",
                "basic_auth applies to webhook and alertmanager actions, not command",
            ),
            (
                "command = [\"/bin/true\"]\ntls_config = {}",
                "tls_config applies to webhook and alertmanager actions, not command",
            ),
            (
                "webhook = \"http://a/\"\nheader_files = { X = \"/nonexistent/x\" }",
                "header_files.X: reading /nonexistent/x: ",
            ),
            (
                "webhook = \"http://a/\"\nheaders = { X = \"1\" }\nheader_files = { X = \"/x\" }",
                "X is in both headers and header_files",
            ),
            (
                "webhook = \"http://a/\"\nheader_files = { Host = \"/x\" }",
                "header_files: Host is set by crashwatch and cannot be given",
            ),
            (
                "webhook = \"http://a/\"\nauthorization = { type = \"Bad Type\", credentials = \"x\" }",
                "authorization.type: \"Bad Type\" is not a scheme name",
            ),
            (
                "webhook = \"https://a/\"\ntls_config = { server_name = \"-\" }",
                "tls_config.server_name: \"-\" is not a host name",
            ),
        ];
        for (text, expected) in cases {
            let error = section(text).resolve().expect_err(text);
            assert!(error.starts_with(expected), "{expected:?}: {error}");
        }
    }
}
