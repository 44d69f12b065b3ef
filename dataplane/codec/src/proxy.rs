//! The PROXY protocol header (v1 text, v2 binary), without I/O: parsing what a trusted
//! load balancer puts in front of a client connection, and building the header the node
//! sends a backend so it sees the real client address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::CodecError;

/// The v2 signature; also never a valid start of a v1 header or of any mail protocol line.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers are at most 107 bytes including CRLF.
const V1_MAX: usize = 107;
/// The largest v2 header we accept (addresses + TLVs); real ones are far smaller.
const V2_MAX: usize = 16 + 536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The connection was proxied for `source`, which connected to `destination`.
    Proxied { source: SocketAddr, destination: SocketAddr },
    /// A health check or unknown family: keep the connection's own addresses.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header of `len` bytes at the start of the buffer.
    Header(ProxyHeader, usize),
    /// The data does not start with a PROXY header.
    Absent,
    /// Could still be a header: read more.
    Incomplete,
}

/// Looks for a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, CodecError> {
    if could_start(buf, &V2_SIGNATURE) {
        return if buf.len() < 16 { Ok(Parsed::Incomplete) } else { parse_v2(buf) };
    }
    if could_start(buf, b"PROXY ") {
        return if buf.len() < 6 { Ok(Parsed::Incomplete) } else { parse_v1(buf) };
    }
    Ok(Parsed::Absent)
}

/// True when `buf` is a prefix of `magic` or starts with it.
fn could_start(buf: &[u8], magic: &[u8]) -> bool {
    let n = buf.len().min(magic.len());
    buf[..n] == magic[..n]
}

fn malformed(what: &'static str) -> CodecError {
    CodecError::Malformed(what)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, CodecError> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX { Err(malformed("PROXY v1 header too long")) } else { Ok(Parsed::Incomplete) };
    };
    let line = buf[..end].strip_suffix(b"\r").ok_or_else(|| malformed("PROXY v1 header without CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| CodecError::InvalidUtf8)?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyHeader::Local,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, CodecError> {
                let ip: IpAddr = s.parse().map_err(|_| malformed("PROXY v1 address"))?;
                match (ip, *family) {
                    (IpAddr::V4(_), "TCP4") | (IpAddr::V6(_), "TCP6") => Ok(ip),
                    _ => Err(malformed("PROXY v1 address does not match its family")),
                }
            };
            let port = |s: &str| -> Result<u16, CodecError> {
                if s.starts_with('0') && s.len() > 1 {
                    return Err(malformed("PROXY v1 port with a leading zero"));
                }
                s.parse().map_err(|_| malformed("PROXY v1 port"))
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(malformed("PROXY v1 header fields")),
    };
    Ok(Parsed::Header(header, end + 1))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, CodecError> {
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(malformed("PROXY v2 version"));
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(malformed("PROXY v2 header too long"));
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    let header = match (version_command & 0x0f, buf[13]) {
        (0x0, _) => ProxyHeader::Local,
        (0x1, 0x11) if body.len() >= 12 => {
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]));
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        (0x1, 0x21) if body.len() >= 36 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC, UNIX sockets or UDP: nothing usable for a TCP mail session.
        (0x1, 0x00 | 0x31 | 0x32 | 0x12 | 0x22) => ProxyHeader::Local,
        (0x1, _) => return Err(malformed("PROXY v2 address block too short or unknown family")),
        _ => return Err(malformed("PROXY v2 command")),
    };
    Ok(Parsed::Header(header, len))
}

/// Both addresses in one family: an IPv4 one becomes IPv4-mapped IPv6 next to an IPv6 one.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    match (a.ip(), b.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (a, b),
        _ => (v6(a), v6(b)),
    }
}

/// A v2 PROXY header (no TLVs) for a client `source` that connected to `destination`.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let octets = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6.octets(),
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            };
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&octets(s));
            out.extend_from_slice(&octets(d));
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// A v1 PROXY header line, CRLF included.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> String {
    let (source, destination) = same_family(source, destination);
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {family} {} {} {} {}\r\n", source.ip(), destination.ip(), source.port(), destination.port())
}

#[cfg(test)]
mod tests;
