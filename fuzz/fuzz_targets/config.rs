//! Any bytes as a configuration file: parsing and checking must answer with a value or one
//! error line, never panic.
#![no_main]

use std::path::Path;

use crashwatch::config::{parse_file, Config, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    match parse_file(text, path).and_then(|f| Config::resolve(f, Overrides::default(), "fuzz.toml")) {
        Ok(_) => {}
        Err(e) => assert!(!e.to_string().contains('\n'), "multi-line error: {e}"),
    }
});
