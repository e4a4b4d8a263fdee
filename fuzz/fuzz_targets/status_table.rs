//! Any answer on the status port, which a daemon of another version or anything else listening
//! there may send: once it parses as JSON, both tables of `crashwatch status` must print it,
//! never panic, and never pass a control character through to the terminal.
#![no_main]

use crashwatch::commands::status::{events_table, units_table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for text in [units_table(&document), events_table(&document)] {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "a control character reached the terminal: {text:?}"
        );
    }
});
