//! A CGI response head from an app: the parser never panics, reports a sane
//! length, and a prefix of the output gives "need more" or the final answer.
#![no_main]

use berth::backend::fastcgi::parse_cgi_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the size limit and where the first read ends.
    let [max, cut, input @ ..] = data else {
        return;
    };
    let max = usize::from(*max) * 64;
    let whole = parse_cgi_head(input, max);
    if let Ok(Some((_, used))) = &whole {
        assert!(*used > 0 && *used <= input.len().min(max));
        assert_eq!(input[used - 1], b'\n');
    }
    let cut = usize::from(*cut).min(input.len());
    let part = parse_cgi_head(&input[..cut], max);
    assert!(part == Ok(None) || part == whole);
});
