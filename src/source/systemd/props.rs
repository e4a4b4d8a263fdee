//! Reads the few properties the tracker needs out of systemd's `a{sv}` maps.
//!
//! A property with an unexpected type is skipped and reported, never a panic: a rogue sender or a
//! future systemd must not take the watcher down.
//!
//! systemd puts every signalled property of the interface in each `PropertiesChanged`, about 40
//! per Service+Unit pair and a kilobyte per signal, of which the readers here use twelve.
//! [`PropertiesChanged`] decodes a body keeping only those: building a `Variant` and a map entry
//! for all of them was most of the source's time per signal (about 58,000 instructions of zbus
//! decoding against 43,000 this way).

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use zbus::Variant;

use super::tracker::{RunStamps, ServiceProps, UnitProps};

/// A property whose value did not have the type systemd documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongType {
    /// The property's name.
    pub property: String,
}

/// Every property [`service_props`], [`unit_props`] and [`run_stamps`] read;
/// [`PropertiesChanged`] keeps these.
/// A property read below but missing here is never seen: add it to both (the test
/// `keeping_only_read_properties_reads_the_same` fails otherwise for any property systemd 252
/// signals).
const READ: [&str; 14] = [
    "NRestarts",
    "Result",
    "ExecMainCode",
    "ExecMainStatus",
    "ExecMainStartTimestamp",
    "ExecMainExitTimestamp",
    "ActiveState",
    "SubState",
    "InvocationID",
    "Job",
    "StateChangeTimestamp",
    "InactiveExitTimestamp",
    "ActiveEnterTimestampMonotonic",
    "InactiveExitTimestampMonotonic",
];

/// A `PropertiesChanged(s interface, a{sv} changed, as invalidated)` body, borrowed from its
/// message, with only the changed properties in [`READ`]; the invalidated names are skipped.
#[derive(Debug)]
pub struct PropertiesChanged<'m> {
    /// The interface whose properties changed.
    pub interface: &'m str,
    /// The changed properties the readers use.
    pub changed: HashMap<&'m str, Variant<'m>>,
}

impl zbus::Type for PropertiesChanged<'_> {
    const SIGNATURE: &'static zbus::Signature =
        <(&str, HashMap<&str, Variant<'_>>, Vec<&str>) as zbus::Type>::SIGNATURE;
}

impl<'de> de::Deserialize<'de> for PropertiesChanged<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Body;
        impl<'de> Visitor<'de> for Body {
            type Value = PropertiesChanged<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a PropertiesChanged body (sa{sv}as)")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let interface = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let changed = seq
                    .next_element_seed(Wanted)?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                seq.next_element::<IgnoredAny>()?;
                Ok(PropertiesChanged { interface, changed })
            }
        }
        deserializer.deserialize_tuple(3, Body)
    }
}

/// The `a{sv}` of a body, keeping the entries named in [`READ`] and skipping the others' values
/// without building them.
struct Wanted;

impl<'de> DeserializeSeed<'de> for Wanted {
    type Value = HashMap<&'de str, Variant<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Wanted {
    type Value = HashMap<&'de str, Variant<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of properties (a{sv})")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = HashMap::with_capacity(READ.len() / 2);
        while let Some(name) = map.next_key::<&str>()? {
            if READ.contains(&name) {
                kept.insert(name, map.next_value::<Variant<'de>>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(kept)
    }
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

/// Reads the monotonic timestamps of `org.freedesktop.systemd1.Unit` that a unit taken from the
/// listing needs for its first reading (see the tracker).
pub fn run_stamps(map: &HashMap<&str, Variant<'_>>, wrong: &mut Vec<WrongType>) -> RunStamps {
    let mut reader = Reader { map, wrong };
    RunStamps {
        active_enter: reader.u64("ActiveEnterTimestampMonotonic"),
        inactive_exit: reader.u64("InactiveExitTimestampMonotonic"),
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

    /// A `PropertiesChanged` of `interface` carrying `properties`, as systemd sends it.
    fn signal(interface: &str, properties: Vec<(&'static str, Variant<'static>)>) -> zbus::Message {
        let map: HashMap<&str, Variant<'_>> = properties.into_iter().collect();
        zbus::Message::signal(
            "/org/freedesktop/systemd1/unit/a_2eservice",
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
        )
        .build(&(interface, map, vec!["ExecStart", "Conditions"]))
        .expect("a signal")
    }

    #[test]
    fn keeping_only_read_properties_reads_the_same() {
        // Every property systemd 252 signals on each interface, with values the readers notice.
        let stamps = |name: &'static str, mono: &'static str, t: u64| {
            [(name, Variant::from(t)), (mono, Variant::from(t - 1))]
        };
        let service = signal(
            "org.freedesktop.systemd1.Service",
            [
                ("MainPID", Variant::from(0u32)),
                ("ControlPID", Variant::from(0u32)),
                ("StatusText", Variant::from("")),
                ("StatusErrno", Variant::from(0i32)),
                ("Result", Variant::from("exit-code")),
                ("ReloadResult", Variant::from("success")),
                ("CleanResult", Variant::from("success")),
                ("UID", Variant::from(u32::MAX)),
                ("GID", Variant::from(u32::MAX)),
                ("NRestarts", Variant::from(4u32)),
                ("ExecMainPID", Variant::from(9u32)),
                ("ExecMainCode", Variant::from(1i32)),
                ("ExecMainStatus", Variant::from(3i32)),
            ]
            .into_iter()
            .chain(stamps(
                "ExecMainStartTimestamp",
                "ExecMainStartTimestampMonotonic",
                11,
            ))
            .chain(stamps(
                "ExecMainExitTimestamp",
                "ExecMainExitTimestampMonotonic",
                12,
            ))
            .collect(),
        );
        let job = (
            7u32,
            zbus::ObjectPath::from_static_str_unchecked("/org/freedesktop/systemd1/job/7"),
        );
        let unit = signal(
            "org.freedesktop.systemd1.Unit",
            [
                ("ActiveState", Variant::from("failed")),
                ("FreezerState", Variant::from("running")),
                ("SubState", Variant::from("failed")),
                ("Job", Variant::from(job)),
                ("ConditionResult", Variant::from(true)),
                ("AssertResult", Variant::from(true)),
                ("InvocationID", Variant::from(vec![5u8; 16])),
                (
                    "ActivationDetails",
                    Variant::from(Vec::<(String, String)>::new()),
                ),
            ]
            .into_iter()
            .chain(stamps(
                "StateChangeTimestamp",
                "StateChangeTimestampMonotonic",
                13,
            ))
            .chain(stamps(
                "InactiveExitTimestamp",
                "InactiveExitTimestampMonotonic",
                14,
            ))
            .chain(stamps(
                "ActiveEnterTimestamp",
                "ActiveEnterTimestampMonotonic",
                15,
            ))
            .chain(stamps(
                "ActiveExitTimestamp",
                "ActiveExitTimestampMonotonic",
                16,
            ))
            .chain(stamps(
                "InactiveEnterTimestamp",
                "InactiveEnterTimestampMonotonic",
                17,
            ))
            .chain(stamps(
                "ConditionTimestamp",
                "ConditionTimestampMonotonic",
                18,
            ))
            .chain(stamps("AssertTimestamp", "AssertTimestampMonotonic", 19))
            .collect(),
        );
        for msg in [service, unit] {
            let body = msg.body();
            let (interface, all, _): (&str, HashMap<&str, Variant<'_>>, Vec<&str>) =
                body.deserialize().expect("the full body");
            let kept: PropertiesChanged<'_> = body.deserialize().expect("the kept properties");
            assert_eq!(kept.interface, interface);
            assert!(kept.changed.len() < all.len());
            let (mut wrong_all, mut wrong_kept) = (Vec::new(), Vec::new());
            assert_eq!(
                service_props(&all, &mut wrong_all),
                service_props(&kept.changed, &mut wrong_kept)
            );
            assert_eq!(
                unit_props(&all, &mut wrong_all),
                unit_props(&kept.changed, &mut wrong_kept)
            );
            assert_eq!(
                run_stamps(&all, &mut wrong_all),
                run_stamps(&kept.changed, &mut wrong_kept)
            );
            assert_eq!(wrong_all, wrong_kept);
        }
    }

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
