//! Any bytes as a web configuration file, and as a client certificate whose subject alternative
//! names are read: each answers with a value or one error line, never a panic.
#![no_main]

use std::path::Path;

use crashwatch::internals::{subject_alt_names, WebConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = subject_alt_names(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = WebConfig::parse(text, Path::new("/etc/crashwatch")) {
        assert!(!e.contains('\n'), "multi-line error: {e}");
    }
});
