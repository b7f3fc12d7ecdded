//! Tickets as users paste them (`meshd join TICKET`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = meshd::net::Ticket::decode(s);
    }
});
