//! Fuzz target: the control socket's request parser.
//!
//! The input is what a client may write: split into lines as the server
//! splits it, each line is parsed. A request that parses must survive the
//! round trip the client makes (serialise, send as one line, parse again).

#![no_main]

use drover::control::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        let Ok(request) = parse_request(line) else {
            continue;
        };
        let wire = serde_json::to_vec(&request).expect("requests serialise");
        assert!(
            !wire.contains(&b'\n'),
            "{request:?} serialises to more than one line"
        );
        assert_eq!(
            parse_request(&wire).as_ref(),
            Ok(&request),
            "{request:?} does not survive the round trip"
        );
    }
});
