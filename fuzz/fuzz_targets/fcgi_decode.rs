//! FastCGI records from an app: the decoder never panics, always makes progress,
//! and gives the same records and error however the bytes are split.
#![no_main]

use berth::backend::fastcgi::{Decoder, FcgiError, Record};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn decode(input: &[u8], step: usize) -> (Vec<Record>, Option<FcgiError>) {
    let mut dec = Decoder::new(1);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for chunk in input.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(record)) => {
                    assert!(buf.len() < before, "a record without consuming bytes");
                    got.push(record);
                }
                Ok(None) => break,
                Err(e) => return (got, Some(e)),
            }
        }
    }
    let _ = dec.at_eof(&buf);
    (got, None)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the rest is split into reads.
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, input.len().max(1));
    assert_eq!(decode(input, usize::from(step).max(1)), whole);
});
