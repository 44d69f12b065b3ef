#![no_main]
use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| {
    let mut p = dataplane::codec::imap::ImapParser::new(256, 1024);
    p.push(data);
    while let Ok(Some(_)) = p.next_event() {}
});
