//! The webhook action: one JSON object POSTed per loop start and per loop end.

use serde_json::{json, Value};

use super::http::{Endpoint, Retry};
use super::ActionRequest;
use crate::time::format_timestamp;

/// A configured webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookAction {
    /// Where to POST, with which headers, credentials and TLS settings.
    pub endpoint: Endpoint,
    /// Timeout and retries.
    pub retry: Retry,
    /// Whether the body carries the crashed run's last lines.
    pub include_logs: bool,
}

/// The body posted for `request`; with `include_logs`, a loop's start also carries the last
/// lines of the crash before it (`last_lines`, and `last_lines_status` as the status API has it).
pub fn body(request: &ActionRequest, hostname: &str, include_logs: bool) -> Value {
    let event = &request.event;
    let last = request.last_exit.as_ref();
    let mut body = json!({
        "unit": event.unit,
        "source": event.source,
        "event": request.event_name(),
        "outcome": event.ended.map(|o| o.as_str()),
        "restarts_in_window": event.restarts_in_window,
        "threshold": event.threshold,
        "window_seconds": event.window_seconds,
        "last_exit": last.map(|l| l.reason.as_str()),
        "last_exit_status": last.and_then(|l| l.status),
        "timestamp": format_timestamp(event.timestamp),
        "hostname": hostname,
    });
    if let (true, Some(context)) = (include_logs, &request.context) {
        body["last_lines"] = json!(context.lines);
        body["last_lines_status"] = json!(context.status);
        if let Some(reason) = &context.reason {
            body["last_lines_reason"] = json!(reason);
        }
        if let Some(dump) = &context.core_dump {
            body["core_dump"] = json!(dump);
        }
        if let Some(oom) = &context.oom_kill {
            body["oom_kill"] = json!(oom);
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{LoopEvent, LoopOutcome, SourceKind};

    #[test]
    fn the_body_names_the_loop_and_escapes_the_unit() {
        let request = ActionRequest {
            event: LoopEvent {
                unit: "evil\"\n.service".to_owned(),
                source: SourceKind::Upstart,
                timestamp: 1_700_000_000_000_000,
                ended: Some(LoopOutcome::Recovered),
                restarts_in_window: 0,
                threshold: 3,
                window_seconds: 2.5,
            },
            last_exit: None,
            context: None,
        };
        let text = body(&request, "node1", false).to_string();
        let back: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            back,
            json!({
                "unit": "evil\"\n.service",
                "source": "upstart",
                "event": "loop_ended",
                "outcome": "recovered",
                "restarts_in_window": 0,
                "threshold": 3,
                "window_seconds": 2.5,
                "last_exit": null,
                "last_exit_status": null,
                "timestamp": "2023-11-14T22:13:20.000Z",
                "hostname": "node1",
            })
        );
    }
}
