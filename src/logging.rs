//! crashwatch's own log lines on stderr, shaped for whoever reads them: a person at a terminal,
//! journald, or a log shipper.
//!
//! Three formats, chosen with `--log-format`: `text` (tracing's human format, the default),
//! `logfmt` (`level=info msg="..." key=value`, as node_exporter's `--log.format=logfmt`) and
//! `json` (one object per line with `time`, `level`, `msg` and the fields). Two things follow
//! from where stderr goes rather than from a flag:
//!
//! - Colour only when stderr is a terminal, and never when `NO_COLOR` is set to anything but
//!   the empty string (<https://no-color.org>). A pipe or a file gets plain text.
//! - Under journald, each line starts with its syslog priority (`<3>` error, `<4>` warning, `<6>`
//!   info, `<7>` debug and trace, sd-daemon(3)'s `SD_ERR` and friends), which journald strips
//!   and stores as `PRIORITY=`, so `journalctl -p err -u crashwatch` finds the errors. journald
//!   stamps every line itself, so no timestamp is written, in any format. Journald is recognised
//!   as systemd.exec(5) describes: `$JOURNAL_STREAM` names the device and inode of the very
//!   stream stderr is, so a service whose stderr was redirected to a file is not mistaken for it.
//!
//! Text from outside (unit names, error messages from a bus or a server) cannot break a line:
//! logfmt quotes and escapes values, json escapes strings, and under journald every line of a
//! message that spans several still carries the priority.
//!
//! The one-line errors the commands end with ([`fatal`]) follow the same format, so with
//! `--log-format json` every line on stderr is JSON, and a daemon that cannot start says so at
//! `err` priority. The json format is written here rather than with tracing-subscriber's `json`
//! feature: it needs a few lines of escaping, not a serde layer over every event.

use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::str::FromStr;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;

use crate::time::{format_timestamp, now_micros};

/// How a log line is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing's human format: time, level, message, `key=value` fields.
    Text,
    /// `time=... level=info msg="..." key=value`.
    Logfmt,
    /// `{"time":"...","level":"info","msg":"...","key":value}`.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "logfmt" => Ok(LogFormat::Logfmt),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "--log-format {text:?} is not one of text, logfmt, json"
            )),
        }
    }
}

/// Where log lines go and how they look there: the format, and what stderr turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    /// The layout of each line.
    pub format: LogFormat,
    /// stderr is journald's stream: priority prefixes, no timestamps.
    pub journald: bool,
    /// ANSI colours (text format only).
    pub color: bool,
}

impl Output {
    /// Looks at stderr and the environment (`JOURNAL_STREAM`, `NO_COLOR`) to decide.
    pub fn detect(format: LogFormat) -> Output {
        let journald = std::env::var("JOURNAL_STREAM")
            .ok()
            .zip(stderr_identity())
            .is_some_and(|(value, identity)| names_stream(&value, identity));
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Output {
            format,
            journald,
            color: format == LogFormat::Text
                && !journald
                && !no_color
                && std::io::stderr().is_terminal(),
        }
    }

    /// Writes a command's final error as one line on stderr: `crashwatch: MESSAGE` in the text
    /// format, an error record in logfmt and json, with priority 3 under journald.
    pub fn fatal(&self, message: &dyn fmt::Display) {
        self.say(Level::ERROR, message);
    }

    /// Writes a command's own message on stderr, `crashwatch: MESSAGE` in the text format.
    fn say(&self, level: Level, message: &dyn fmt::Display) {
        let mut line = String::new();
        match self.format {
            LogFormat::Text => {
                let _ = writeln!(line, "crashwatch: {message}");
            }
            LogFormat::Logfmt | LogFormat::Json => {
                let record = Record {
                    time: self.timestamp(),
                    level,
                    message: message.to_string(),
                    fields: Vec::new(),
                };
                record.render(self.format, &mut line);
            }
        }
        let mut out = String::new();
        let _ = self.emit(&mut out, level, &line);
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }

    /// The time to write on a line: none under journald, which stamps lines itself.
    fn timestamp(&self) -> Option<String> {
        (!self.journald).then(|| format_timestamp(now_micros()))
    }

    /// Writes formatted `text` (one or more complete lines), each line with `level`'s priority
    /// under journald.
    fn emit(&self, out: &mut dyn fmt::Write, level: Level, text: &str) -> fmt::Result {
        if !self.journald {
            return out.write_str(text);
        }
        let priority = priority(level);
        for line in text.lines() {
            writeln!(out, "<{priority}>{line}")?;
        }
        Ok(())
    }
}

/// The output [`init`] installed, for [`fatal`].
static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Sends every log event at `level` or above to stderr as `output` says. Call once, first thing.
pub fn init(output: Output, level: Option<Level>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = OUTPUT.set(output);
    let (filter, handle) =
        reload::Layer::new(LevelFilter::from_level(level.unwrap_or(Level::INFO)));
    let _ = LEVEL.set(LevelControl {
        handle,
        from_command_line: level.is_some(),
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(output.color)
                .event_format(Lines::new(output)),
        )
        .try_init();
}

/// The level a configuration file asks for (`[log] level`, at start-up and at each reload). The
/// command line's `--log-level` wins: then this changes nothing. `None` means the default, info.
pub fn set_level_from_config(level: Option<Level>) {
    let Some(control) = LEVEL.get() else { return };
    if control.from_command_line {
        return;
    }
    let filter = LevelFilter::from_level(level.unwrap_or(Level::INFO));
    let _ = control.handle.modify(|current| *current = filter);
}

/// How the level can change after [`init`].
struct LevelControl {
    handle: reload::Handle<LevelFilter, tracing_subscriber::Registry>,
    /// `--log-level` was given; the file's level does not apply.
    from_command_line: bool,
}

static LEVEL: OnceLock<LevelControl> = OnceLock::new();

/// Ends a command with one error line on stderr, in the format [`init`] chose (`crashwatch:
/// MESSAGE` if it was never called).
pub fn fatal(message: &dyn fmt::Display) {
    installed().say(Level::ERROR, message);
}

/// A command's warning about its input, as [`fatal`] writes errors.
pub fn warning(message: &dyn fmt::Display) {
    installed().say(Level::WARN, message);
}

fn installed() -> Output {
    OUTPUT.get().copied().unwrap_or(Output {
        format: LogFormat::Text,
        journald: false,
        color: false,
    })
}

/// The syslog priority of a level (sd-daemon(3): `SD_ERR` 3, `SD_WARNING` 4, `SD_INFO` 6,
/// `SD_DEBUG` 7).
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// The level as logfmt and json write it.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Device and inode of the file stderr is, as `$JOURNAL_STREAM` gives them.
fn stderr_identity() -> Option<(u64, u64)> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(fd).metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// Whether `value` (`DEVICE:INODE`, both decimal) names the file `identity` is.
fn names_stream(value: &str, identity: (u64, u64)) -> bool {
    let Some((device, inode)) = value.split_once(':') else {
        return false;
    };
    device.parse() == Ok(identity.0) && inode.parse() == Ok(identity.1)
}

/// The tracing event formatter for every [`Output`].
struct Lines {
    output: Output,
    /// tracing's own human format, as crashwatch has always logged.
    timed: Format<Full, SystemTime>,
    /// The same without the time, for journald.
    untimed: Format<Full, ()>,
}

impl Lines {
    fn new(output: Output) -> Lines {
        let timed = tracing_subscriber::fmt::format().with_target(false);
        let untimed = timed.clone().without_time();
        Lines {
            output,
            timed,
            untimed,
        }
    }
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        let mut line = String::new();
        match self.output.format {
            LogFormat::Text if !self.output.journald => {
                return self.timed.format_event(ctx, writer, event);
            }
            LogFormat::Text => self
                .untimed
                .format_event(ctx, Writer::new(&mut line), event)?,
            LogFormat::Logfmt | LogFormat::Json => {
                let mut visitor = Visitor::default();
                event.record(&mut visitor);
                let record = Record {
                    time: self.output.timestamp(),
                    level,
                    message: visitor.message,
                    fields: visitor.fields,
                };
                record.render(self.output.format, &mut line);
            }
        }
        self.output.emit(&mut writer, level, &line)
    }
}

/// A field's value as the structured formats write it.
#[derive(Debug, PartialEq)]
enum Value {
    /// Text, quoted and escaped as the format needs.
    Text(String),
    /// A number or a boolean, written as it is.
    Bare(String),
}

/// Collects an event's message and fields.
#[derive(Default)]
struct Visitor {
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Visitor {
    fn add(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::Text(text) | Value::Bare(text) => text,
            };
        } else {
            self.fields.push((field.name(), value));
        }
    }
}

impl Visit for Visitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = if value.is_finite() {
            Value::Bare(value.to_string())
        } else {
            Value::Text(value.to_string())
        };
        self.add(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, Value::Bare(value.to_string()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.add(field, Value::Bare(value.to_string()));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.add(field, Value::Bare(value.to_string()));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.add(field, Value::Bare(value.to_string()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, Value::Bare(value.to_string()));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, Value::Text(value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.add(field, Value::Text(format!("{value:?}")));
    }
}

/// One log line's content, for the structured formats.
struct Record {
    time: Option<String>,
    level: Level,
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Record {
    /// Appends the line, newline included.
    fn render(&self, format: LogFormat, out: &mut String) {
        let mut line = Pairs {
            json: format == LogFormat::Json,
            out,
            empty: true,
        };
        line.open();
        if let Some(time) = &self.time {
            line.text("time", time);
        }
        line.text("level", level_name(self.level));
        line.text("msg", &self.message);
        for (key, value) in &self.fields {
            match value {
                Value::Text(text) => line.text(key, text),
                Value::Bare(text) => line.bare(key, text),
            }
        }
        line.close();
    }
}

/// Writes `key=value` pairs (logfmt) or the members of one object (json).
struct Pairs<'a> {
    json: bool,
    out: &'a mut String,
    empty: bool,
}

impl Pairs<'_> {
    fn open(&mut self) {
        if self.json {
            self.out.push('{');
        }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(if self.json { ',' } else { ' ' });
        }
        self.empty = false;
        if self.json {
            quoted(self.out, key);
            self.out.push(':');
        } else {
            self.out.push_str(key);
            self.out.push('=');
        }
    }

    fn text(&mut self, key: &str, text: &str) {
        self.key(key);
        if self.json {
            quoted(self.out, text);
        } else {
            logfmt_value(self.out, text);
        }
    }

    fn bare(&mut self, key: &str, text: &str) {
        self.key(key);
        self.out.push_str(text);
    }

    fn close(&mut self) {
        if self.json {
            self.out.push('}');
        }
        self.out.push('\n');
    }
}

/// Appends `text` as a logfmt value: bare when it is one plain word, else quoted, as go-logfmt
/// writes them.
fn logfmt_value(out: &mut String, text: &str) {
    let plain = !text.is_empty()
        && !text
            .chars()
            .any(|c| c == '=' || c == '"' || c.is_whitespace() || c.is_control());
    if plain {
        out.push_str(text);
    } else {
        quoted(out, text);
    }
}

/// Appends `text` in double quotes with quotes, backslashes and every control character escaped
/// (`\n`, `\u001b`): a string in JSON and a quoted value in logfmt alike.
fn quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The lines `log` writes through [`Lines`] for `output`.
    fn lines_of(output: Output, log: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(output.color)
            .event_format(Lines::new(output))
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes)
            .expect("UTF-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn output(format: LogFormat, journald: bool) -> Output {
        Output {
            format,
            journald,
            color: false,
        }
    }

    const HOSTILE: &str = "we\"ird= name\nsecond line\\ \u{1b}[31m ünï.service";

    fn log_hostile() {
        tracing::warn!(unit = HOSTILE, count = 3u64, ok = true, "Saw {HOSTILE}.");
    }

    #[test]
    fn formats_are_named_as_on_the_command_line() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("logfmt".parse(), Ok(LogFormat::Logfmt));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        let error = "JSON".parse::<LogFormat>().unwrap_err();
        assert_eq!(
            error,
            "--log-format \"JSON\" is not one of text, logfmt, json"
        );
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(names_stream("8:1234", (8, 1234)));
        assert!(!names_stream("8:1235", (8, 1234)));
        assert!(!names_stream("9:1234", (8, 1234)));
        for bad in ["", "8", "8:", ":1234", "8:1234:5", "x:y", " 8:1234"] {
            assert!(!names_stream(bad, (8, 1234)), "{bad:?}");
        }
    }

    #[test]
    fn json_lines_parse_and_keep_hostile_text_whole() {
        let lines = lines_of(output(LogFormat::Json, false), log_hostile);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let value: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!(value["level"], "warn");
        assert_eq!(value["msg"], format!("Saw {HOSTILE}."));
        assert_eq!(value["unit"], HOSTILE);
        assert_eq!(value["count"], 3);
        assert_eq!(value["ok"], true);
        let time = value["time"].as_str().expect("a time");
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
        assert!(lines[0].starts_with("{\"time\":"), "{}", lines[0]);
    }

    #[test]
    fn logfmt_quotes_and_escapes_values() {
        let lines = lines_of(output(LogFormat::Logfmt, false), log_hostile);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.starts_with("time=20"), "{line}");
        let expected = concat!(
            r#" level=warn msg="Saw we\"ird= name\nsecond line\\ \u001b[31m ünï.service." "#,
            r#"unit="we\"ird= name\nsecond line\\ \u001b[31m ünï.service" count=3 ok=true"#
        );
        assert!(
            line.ends_with(expected),
            "{line}\nwanted the end:\n{expected}"
        );

        let mut out = String::new();
        for value in ["plain", "", "a=b", "two words", "tab\t", "back\\slash"] {
            logfmt_value(&mut out, value);
            out.push('|');
        }
        assert_eq!(out, r#"plain|""|"a=b"|"two words"|"tab\t"|back\slash|"#);
    }

    #[test]
    fn journald_lines_carry_their_priority_and_no_time() {
        let log = || {
            tracing::error!("An error.");
            tracing::warn!(unit = "a.service", "A warning.");
            tracing::info!("News.");
            tracing::debug!("Detail.");
            tracing::trace!("More detail.");
            tracing::info!("Two\nlines.");
        };
        let lines = lines_of(output(LogFormat::Text, true), log);
        assert_eq!(
            lines,
            [
                "<3>ERROR An error.",
                "<4> WARN A warning. unit=\"a.service\"",
                "<6> INFO News.",
                "<7>DEBUG Detail.",
                "<7>TRACE More detail.",
                "<6> INFO Two",
                "<6>lines.",
            ]
        );
        for format in [LogFormat::Logfmt, LogFormat::Json] {
            let lines = lines_of(output(format, true), log_hostile);
            assert_eq!(lines.len(), 1, "{lines:?}");
            let body = lines[0].strip_prefix("<4>").expect("priority 4");
            assert!(!body.contains("time"), "{body}");
            if format == LogFormat::Json {
                let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
                assert_eq!(value["unit"], HOSTILE);
            }
        }
    }

    #[test]
    fn text_keeps_the_human_format() {
        let lines = lines_of(output(LogFormat::Text, false), || {
            tracing::info!(units = 3, "Watching 3 units.");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (time, rest) = lines[0].split_once(' ').expect("a time first");
        assert!(time.starts_with("20") && time.ends_with('Z'), "{time}");
        assert_eq!(rest, " INFO Watching 3 units. units=3");
        assert!(!lines[0].contains('\u{1b}'));

        let coloured = Output {
            color: true,
            ..output(LogFormat::Text, false)
        };
        let lines = lines_of(coloured, || tracing::info!("Colour."));
        assert!(lines[0].contains('\u{1b}'), "{:?}", lines[0]);
    }

    #[test]
    fn fatal_lines_follow_the_format() {
        let render = |output: Output| {
            let mut line = String::new();
            let record = Record {
                time: output.timestamp(),
                level: Level::ERROR,
                message: "cannot listen".to_owned(),
                fields: Vec::new(),
            };
            record.render(output.format, &mut line);
            let mut out = String::new();
            output.emit(&mut out, Level::ERROR, &line).unwrap();
            out
        };
        assert_eq!(
            render(output(LogFormat::Logfmt, true)),
            "<3>level=error msg=\"cannot listen\"\n"
        );
        assert_eq!(
            render(output(LogFormat::Json, true)),
            "<3>{\"level\":\"error\",\"msg\":\"cannot listen\"}\n"
        );
    }

    #[test]
    fn json_strings_escape_every_control_character() {
        let text: String = (0u8..0x80).map(char::from).chain(['\u{85}', 'é']).collect();
        let mut out = String::new();
        quoted(&mut out, &text);
        let back: String = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(back, text);
        assert!(!out.contains('\n'));
    }
}
