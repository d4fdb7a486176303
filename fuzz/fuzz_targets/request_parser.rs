//! Fuzzes the OpenAI request parsers: any byte string must give a parsed request or a 4xx error, never a
//! panic. Run: `cargo install cargo-fuzz && cargo +nightly fuzz run request_parser`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moeserve::api::validate::{parse_chat, parse_completion};

fuzz_target!(|data: &[u8]| {
    for result in [parse_chat(data, 50_000).err(), parse_completion(data, 50_000).err()] {
        if let Some(e) = result {
            assert!(e.status.is_client_error());
        }
    }
});
