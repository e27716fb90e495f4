//! A request on the control socket, from any local user: the decoder never
//! panics; what it accepts is a whole frame within the size cap, in this
//! protocol version, with a known command, and encodes back to the same
//! request; a prefix of an accepted frame is "truncated", never another
//! request.
#![no_main]

use berth::control::proto::{self, COMMANDS, DecodeError, MAX_REQUEST, VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The body alone, as the server decodes it once the frame is read.
    if let Ok(request) = proto::decode_request(data) {
        assert_eq!(request.version, VERSION);
        assert!(COMMANDS.contains(&request.command.name()));
        let again = proto::encode(&request);
        assert_eq!(proto::decode_frame(&again), Ok((request, again.len())));
    }
    // The bytes as a frame: header and body.
    match proto::decode_frame(data) {
        Ok((request, used)) => {
            assert!(used >= 4 && used <= data.len() && used - 4 <= MAX_REQUEST);
            for cut in [0, 3, used / 2, used - 1] {
                assert!(matches!(
                    proto::decode_frame(&data[..cut.min(used - 1)]),
                    Err(DecodeError::Truncated { .. })
                ));
            }
            assert_eq!(proto::decode_request(&data[4..used]), Ok(request));
        }
        Err(DecodeError::TooLarge { len, max }) => assert!(len > max as u64),
        Err(e) => {
            // Every refusal reads as a sentence for the caller.
            assert!(!e.to_string().is_empty());
        }
    }
});
