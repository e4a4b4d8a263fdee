//! Any lines as `journalctl -o json` output, which any local user can influence through what
//! units log: parsing must accept or skip each line, never panic.
#![no_main]

use crashwatch::internals::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let _ = parser.line(line, &mut out);
    }
});
