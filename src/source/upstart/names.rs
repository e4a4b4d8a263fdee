//! Upstart's object paths and the unit names crashwatch gives its jobs.
//!
//! Upstart names a job's D-Bus object after the job, and an instance's object after the job and
//! the instance, each element escaped so that any job or instance name is a valid path element
//! (init/control.c `nih_dbus_path`): `[A-Za-z0-9]` stays, every other byte becomes `_` and two
//! lowercase hex digits, and the empty string (the instance of a job without `instance`)
//! becomes `_`. The escaping is reversible, so an instance signal, which carries nothing but its
//! object path, still says which job and instance it is about without a bus call.
//!
//! A unit is named as `initctl list` prints it: `job` for a singleton instance, `job (instance)`
//! otherwise, so the same name appears in `initctl`, in `/metrics` and in alerts.

/// The object path under which Upstart publishes its jobs.
pub const JOBS_PATH: &str = "/com/ubuntu/Upstart/jobs";

/// Escapes one path element the way Upstart does. crashwatch only reads paths; the tests build
/// them to check that reading reverses Upstart's escaping.
#[cfg(test)]
pub fn escape(element: &str) -> String {
    use std::fmt::Write;
    if element.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(element.len());
    for b in element.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
    out
}

/// Reverses [`escape`]. `None` when `element` is not something Upstart could have written.
pub fn unescape(element: &str) -> Option<String> {
    if element == "_" {
        return Some(String::new());
    }
    let bytes = element.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                let hex = element.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    // Names are bytes to Upstart; a name that is not UTF-8 still gets a stable, printable name.
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The unit name of a job's instance: `job`, or `job (instance)`.
pub fn unit_name(job: &str, instance: &str) -> String {
    if instance.is_empty() {
        job.to_owned()
    } else {
        format!("{job} ({instance})")
    }
}

/// The object path of a job.
#[cfg(test)]
pub fn job_path(job: &str) -> String {
    format!("{JOBS_PATH}/{}", escape(job))
}

/// The object path of an instance of a job.
#[cfg(test)]
pub fn instance_path(job: &str, instance: &str) -> String {
    format!("{JOBS_PATH}/{}/{}", escape(job), escape(instance))
}

/// The unit named by an instance's object path, or `None` for any other path.
pub fn unit_from_instance_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix(JOBS_PATH)?.strip_prefix('/')?;
    let (job, instance) = rest.split_once('/')?;
    if instance.contains('/') {
        return None;
    }
    Some(unit_name(&unescape(job)?, &unescape(instance)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_escaped_like_upstart() {
        assert_eq!(escape("network-interface"), "network_2dinterface");
        assert_eq!(escape(""), "_");
        assert_eq!(escape("www"), "www");
        assert_eq!(escape("net/apache"), "net_2fapache");
        assert_eq!(escape("a_b"), "a_5fb");
        assert_eq!(
            instance_path("network-interface", "eth0"),
            "/com/ubuntu/Upstart/jobs/network_2dinterface/eth0"
        );
        assert_eq!(instance_path("www", ""), "/com/ubuntu/Upstart/jobs/www/_");
        assert_eq!(job_path("tty"), "/com/ubuntu/Upstart/jobs/tty");
    }

    #[test]
    fn escaping_round_trips() {
        for name in [
            "",
            "www",
            "network-interface",
            "a_b",
            "tty1",
            "x.y z",
            "é/ü",
        ] {
            assert_eq!(unescape(&escape(name)).as_deref(), Some(name), "{name:?}");
        }
        assert_eq!(unescape("bad-"), None);
        assert_eq!(unescape("_2"), None);
        assert_eq!(unescape("_zz"), None);
    }

    #[test]
    fn instance_paths_name_units() {
        assert_eq!(
            unit_from_instance_path("/com/ubuntu/Upstart/jobs/network_2dinterface/eth0").as_deref(),
            Some("network-interface (eth0)")
        );
        assert_eq!(
            unit_from_instance_path("/com/ubuntu/Upstart/jobs/www/_").as_deref(),
            Some("www")
        );
        assert_eq!(
            unit_from_instance_path("/com/ubuntu/Upstart/jobs/www"),
            None
        );
        assert_eq!(unit_from_instance_path("/com/ubuntu/Upstart"), None);
        assert_eq!(
            unit_from_instance_path("/com/ubuntu/Upstart/jobs/www/_/x"),
            None
        );
    }
}
