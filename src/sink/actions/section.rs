//! The `[[action]]` section of the configuration file, and its validation: each action kind is
//! checked where it is implemented.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::alertmanager;
use super::command::{self, CommandAction};
use super::http::{self, HttpUrl, Retry};
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
    /// An `http://` URL to POST a JSON object to.
    pub webhook: Option<String>,
    /// The `http://` URL of an Alertmanager; alerts go to `{url}/api/v2/alerts`.
    pub alertmanager: Option<String>,
    /// How long a command may run, or one HTTP attempt may take. Default 30s for a command, 10s
    /// for a request.
    pub timeout: Option<String>,
    /// Extra HTTP headers, e.g. `{ Authorization = "Bearer ..." }`. Webhook and Alertmanager.
    pub headers: Option<BTreeMap<String, String>>,
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
        only_for("retries", section.retries.is_some(), &http_kinds)?;
        only_for("backoff", section.backoff.is_some(), &http_kinds)?;
        only_for("max_backoff", section.max_backoff.is_some(), &http_kinds)?;
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
                let mut headers = Vec::new();
                for (name, value) in section.headers.iter().flatten() {
                    http::check_header(name, value).map_err(|e| format!("headers: {e}"))?;
                    headers.push((name.clone(), value.clone()));
                }
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
                    ActionKind::Webhook(WebhookAction {
                        url: HttpUrl::parse(url).map_err(|e| format!("webhook: {e}"))?,
                        headers,
                        retry,
                    })
                } else {
                    let url = section.alertmanager.as_deref().unwrap_or_default();
                    let url = HttpUrl::parse(url).map_err(|e| format!("alertmanager: {e}"))?;
                    ActionKind::Alertmanager(alertmanager::resolve(section, url, headers, retry)?)
                }
            }
        };
        Ok(Action { units, kind })
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
