//! PROXY protocol v1/v2 header parser. Nothing may panic; a header never claims more bytes
//! than it was given; a caller reading the header in pieces gets "incomplete" until the
//! answer is known and then the same answer as with everything at once; and the headers
//! the node builds for backends parse back to the addresses it meant.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::codec::proxy::{self, Parsed, ProxyHeader};
use switchyard_fuzz::script::Script;

/// Past this many bytes the answer cannot change (v2 headers are bounded well below it).
const DECIDED_BY: usize = 700;

fuzz_target!(|data: &[u8]| {
    let script = Script::new(data);
    prefixes(script.body);
    round_trip(script.body);
});

fn prefixes(buf: &[u8]) {
    let full = proxy::parse(buf);
    if let Ok(Parsed::Header(_, len)) = full {
        assert!(len > 0 && len <= buf.len(), "header of {len} bytes in {}", buf.len());
    }
    let mut decided = None;
    for end in 0..=buf.len().min(DECIDED_BY) {
        let answer = proxy::parse(&buf[..end]);
        match (&decided, &answer) {
            (None, Ok(Parsed::Incomplete)) => {}
            (None, _) => decided = Some(answer),
            (Some(first), _) => assert_eq!(&answer, first, "after {end} bytes"),
        }
    }
    if let Some(first) = decided {
        assert_eq!(full, first, "all {} bytes", buf.len());
    }
}

fn round_trip(body: &[u8]) {
    let mut bytes = body.iter().copied().chain(std::iter::repeat(0));
    let mut next = || bytes.next().unwrap_or(0);
    let source = address(&mut next);
    let destination = address(&mut next);
    let mapped = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) if source.is_ipv4() != destination.is_ipv4() => {
            SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), s.port())
        }
        _ => s,
    };
    let meant = ProxyHeader::Proxied { source: mapped(source), destination: mapped(destination) };
    let v2 = proxy::encode_v2(source, destination);
    assert_eq!(proxy::parse(&v2), Ok(Parsed::Header(meant, v2.len())), "v2 {source} -> {destination}");
    let v1 = proxy::encode_v1(source, destination);
    assert_eq!(proxy::parse(v1.as_bytes()), Ok(Parsed::Header(meant, v1.len())), "{v1:?}");
}

fn address(next: &mut impl FnMut() -> u8) -> SocketAddr {
    let port = u16::from_be_bytes([next(), next()]);
    let ip = if next() & 1 == 0 {
        IpAddr::V4(Ipv4Addr::from([next(), next(), next(), next()]))
    } else {
        let mut octets = [0u8; 16];
        octets.iter_mut().for_each(|o| *o = next());
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    SocketAddr::new(ip, port)
}
