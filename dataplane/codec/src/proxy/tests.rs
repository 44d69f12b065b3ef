//! PROXY header tests: both versions round-trip, chunked arrival, malformed headers.

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn v1_and_v2_round_trip_for_both_families() {
    for (src, dst) in [("203.0.113.7:51234", "192.0.2.1:143"), ("[2001:db8::7]:51234", "[2001:db8::1]:993")] {
        let (src, dst) = (addr(src), addr(dst));
        let expected = ProxyHeader::Proxied { source: src, destination: dst };
        let v2 = encode_v2(src, dst);
        assert_eq!(parse(&v2).unwrap(), Parsed::Header(expected, v2.len()));
        let v1 = encode_v1(src, dst);
        assert_eq!(parse(v1.as_bytes()).unwrap(), Parsed::Header(expected, v1.len()));
    }
}

#[test]
fn mixed_families_use_ipv4_mapped_addresses() {
    let (src, dst) = (addr("203.0.113.7:1000"), addr("[2001:db8::1]:143"));
    let Parsed::Header(ProxyHeader::Proxied { source, .. }, _) = parse(&encode_v2(src, dst)).unwrap() else { panic!() };
    assert_eq!(source, addr("[::ffff:203.0.113.7]:1000"));
    assert!(encode_v1(src, dst).starts_with("PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 "));
}

#[test]
fn a_header_arriving_in_pieces_is_incomplete_until_whole_and_data_after_it_is_left() {
    let mut v2 = encode_v2(addr("10.0.0.1:1"), addr("10.0.0.2:2"));
    let header_len = v2.len();
    v2.extend_from_slice(b"a1 LOGIN x y\r\n");
    for cut in 1..header_len {
        assert_eq!(parse(&v2[..cut]).unwrap(), Parsed::Incomplete, "cut at {cut}");
    }
    assert!(matches!(parse(&v2).unwrap(), Parsed::Header(_, n) if n == header_len));
    let v1 = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\nrest";
    for cut in 1..34 {
        assert_eq!(parse(&v1[..cut]).unwrap(), Parsed::Incomplete, "cut at {cut}");
    }
    assert_eq!(
        parse(v1).unwrap(),
        Parsed::Header(ProxyHeader::Proxied { source: addr("10.0.0.1:1"), destination: addr("10.0.0.2:2") }, 34)
    );
}

#[test]
fn ordinary_protocol_data_is_not_a_header() {
    for data in [&b"a1 CAPABILITY\r\n"[..], b"EHLO x\r\n", b"USER a\r\n", b"P", b"\r\n"] {
        let expected = if V2_SIGNATURE.starts_with(data) || b"PROXY ".starts_with(data) {
            Parsed::Incomplete
        } else {
            Parsed::Absent
        };
        assert_eq!(parse(data).unwrap(), expected, "{data:?}");
    }
}

#[test]
fn local_and_unknown_headers_keep_the_connection_addresses() {
    assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Parsed::Header(ProxyHeader::Local, 15));
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert_eq!(parse(&local).unwrap(), Parsed::Header(ProxyHeader::Local, 16));
}

#[test]
fn malformed_headers_are_errors() {
    let mut bad_version = encode_v2(addr("10.0.0.1:1"), addr("10.0.0.2:2"));
    bad_version[12] = 0x31;
    let mut short_block = V2_SIGNATURE.to_vec();
    short_block.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
    let mut too_long = V2_SIGNATURE.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let cases: Vec<Vec<u8>> = vec![
        bad_version,
        short_block,
        too_long,
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1\r\n".to_vec(),
        b"PROXY TCP4 ::1 10.0.0.2 1 2\r\n".to_vec(),
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 99999\r\n".to_vec(),
        b"PROXY TCP4 10.0.0.1 10.0.0.2 01 2\r\n".to_vec(),
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n".to_vec(),
        b"PROXY SCTP 10.0.0.1 10.0.0.2 1 2\r\n".to_vec(),
        [b"PROXY ".as_slice(), &[b'x'; 120]].concat(),
    ];
    for case in cases {
        assert!(parse(&case).is_err(), "{case:?}");
    }
}
