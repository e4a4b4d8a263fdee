//! Reads the few properties the tracker needs out of systemd's `a{sv}` maps.
//!
//! A property with an unexpected type is skipped and reported, never a panic: a rogue sender or a
//! future systemd must not take the watcher down.

use std::collections::HashMap;

use zbus::Variant;

use super::tracker::{ServiceProps, UnitProps};

/// A property whose value did not have the type systemd documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongType {
    /// The property's name.
    pub property: String,
}

/// Reads `org.freedesktop.systemd1.Service` properties.
pub fn service_props(map: &HashMap<&str, Variant<'_>>, wrong: &mut Vec<WrongType>) -> ServiceProps {
    let mut reader = Reader { map, wrong };
    ServiceProps {
        n_restarts: reader.u32("NRestarts"),
        result: reader.string("Result"),
        exec_main_code: reader.i32("ExecMainCode"),
        exec_main_status: reader.i32("ExecMainStatus"),
        exec_main_start_timestamp: reader.u64("ExecMainStartTimestamp"),
        exec_main_exit_timestamp: reader.u64("ExecMainExitTimestamp"),
    }
}

/// Reads `org.freedesktop.systemd1.Unit` properties.
pub fn unit_props(map: &HashMap<&str, Variant<'_>>, wrong: &mut Vec<WrongType>) -> UnitProps {
    let mut reader = Reader { map, wrong };
    UnitProps {
        active_state: reader.string("ActiveState"),
        sub_state: reader.string("SubState"),
        invocation_id: reader.bytes("InvocationID"),
        job_id: reader.job_id("Job"),
        state_change_timestamp: reader.u64("StateChangeTimestamp"),
        inactive_exit_timestamp: reader.u64("InactiveExitTimestamp"),
    }
}

struct Reader<'r, 'm> {
    map: &'r HashMap<&'m str, Variant<'m>>,
    wrong: &'r mut Vec<WrongType>,
}

impl Reader<'_, '_> {
    fn get<T>(&mut self, name: &str, pick: impl FnOnce(&Variant<'_>) -> Option<T>) -> Option<T> {
        let value = self.map.get(name)?;
        // A variant inside a variant is legal D-Bus; look through it.
        let value = match value {
            Variant::Variant(inner) => inner.as_ref(),
            other => other,
        };
        let picked = pick(value);
        if picked.is_none() {
            self.wrong.push(WrongType {
                property: name.to_owned(),
            });
        }
        picked
    }

    fn string(&mut self, name: &str) -> Option<String> {
        self.get(name, |v| match v {
            Variant::Str(s) => Some(s.as_str().to_owned()),
            _ => None,
        })
    }

    fn u32(&mut self, name: &str) -> Option<u32> {
        self.get(name, |v| match v {
            Variant::U32(n) => Some(*n),
            _ => None,
        })
    }

    fn i32(&mut self, name: &str) -> Option<i32> {
        self.get(name, |v| match v {
            Variant::I32(n) => Some(*n),
            _ => None,
        })
    }

    fn u64(&mut self, name: &str) -> Option<u64> {
        self.get(name, |v| match v {
            Variant::U64(n) => Some(*n),
            _ => None,
        })
    }

    fn bytes(&mut self, name: &str) -> Option<Vec<u8>> {
        self.get(name, |v| match v {
            Variant::Array(array) => array
                .inner()
                .iter()
                .map(|b| match b {
                    Variant::U8(b) => Some(*b),
                    _ => None,
                })
                .collect(),
            _ => None,
        })
    }

    fn job_id(&mut self, name: &str) -> Option<u32> {
        self.get(name, |v| match v {
            Variant::Structure(s) => match s.fields().first() {
                Some(Variant::U32(id)) => Some(*id),
                _ => None,
            },
            _ => None,
        })
    }
}

/// The object path systemd gives a unit: `[A-Za-z0-9]` kept, every other byte `_xx`.
pub fn unit_path(name: &str) -> String {
    use std::fmt::Write;
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            path.push(b as char);
        } else {
            let _ = write!(path, "_{b:02x}");
        }
    }
    path
}

/// The unit name behind an object path under `/org/freedesktop/systemd1/unit/`, or `None` for
/// any other path or a malformed escape.
pub fn unit_name(path: &str) -> Option<String> {
    let escaped = path.strip_prefix("/org/freedesktop/systemd1/unit/")?;
    if escaped.is_empty() || escaped.contains('/') {
        return None;
    }
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'_' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_round_trip() {
        assert_eq!(
            unit_path("crashy.service"),
            "/org/freedesktop/systemd1/unit/crashy_2eservice"
        );
        for name in [
            "crashy.service",
            "a-b@c\\x3ad.service",
            "dbus.socket",
            "ünï.service",
        ] {
            assert_eq!(unit_name(&unit_path(name)).as_deref(), Some(name));
        }
    }

    #[test]
    fn malformed_paths_have_no_name() {
        assert_eq!(unit_name("/org/freedesktop/systemd1"), None);
        assert_eq!(unit_name("/org/freedesktop/systemd1/unit/"), None);
        assert_eq!(unit_name("/org/freedesktop/systemd1/unit/a_z1"), None);
        assert_eq!(unit_name("/org/freedesktop/systemd1/unit/a_2"), None);
        assert_eq!(unit_name("/org/freedesktop/systemd1/unit/a/b"), None);
    }

    #[test]
    fn wrong_types_are_reported_not_fatal() {
        let mut map = HashMap::new();
        map.insert("ActiveState", Variant::U32(7));
        map.insert("SubState", Variant::from("running"));
        let mut wrong = Vec::new();
        let props = unit_props(&map, &mut wrong);
        assert_eq!(props.active_state, None);
        assert_eq!(props.sub_state.as_deref(), Some("running"));
        assert_eq!(
            wrong,
            vec![WrongType {
                property: "ActiveState".into()
            }]
        );
    }
}
