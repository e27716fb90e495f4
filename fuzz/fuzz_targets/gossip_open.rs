//! A datagram on the gossip socket, from anyone: opening it never panics
//! and bytes not sealed with the key never open; bytes sealed open to
//! themselves once, and not at all with one byte changed.
#![no_main]

use std::net::IpAddr;
use std::time::Duration;

use berth::farm::transport::{Replay, Seal, Sender};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let seal = Seal::new(b"fuzz", Vec::new(), Duration::from_secs(1));
    let from = IpAddr::from([10, 0, 0, 2]);
    let mut replay = Replay::new(1);
    assert!(seal.open(&mut replay, from, data, NOW).is_err());

    let mut out = Vec::new();
    if seal
        .seal(&mut Sender::new(2), NOW, &mut out, |b| {
            b.extend_from_slice(data)
        })
        .is_ok()
    {
        assert_eq!(seal.open(&mut replay, from, &out, NOW), Ok(data));
        assert!(seal.open(&mut replay, from, &out, NOW).is_err());
        let i = data.first().map_or(0, |b| usize::from(*b)) % out.len();
        out[i] ^= 1;
        assert!(seal.open(&mut Replay::new(1), from, &out, NOW).is_err());
    }
});
