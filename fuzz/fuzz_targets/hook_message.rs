//! Any datagram on the Upstart job hook's socket, which anyone allowed to write to it can send:
//! decoding must accept it or refuse it, never panic.
#![no_main]

use crashwatch::internals::HookMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = HookMessage::decode(data);
});
