//! Any line of the kernel log, which every process may write to through /dev/kmsg: reading it
//! must find an Upstart main process end or pass it over, never panic, and what it finds must
//! be what the line says.
#![no_main]

use crashwatch::internals::kmsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(end) = kmsg::parse_line(data) {
        assert!(end.pid > 0);
        assert!(!end.unit.is_empty());
        let text = String::from_utf8_lossy(data);
        assert!(text.contains(&format!("init: {} main process ({})", end.unit, end.pid)));
    }
});
