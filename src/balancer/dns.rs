//! A minimal DNS client for the `dns` resolver's `nameserver` option: A and AAAA lookups sent
//! straight to one server.
//!
//! The system resolver (`getaddrinfo`) caches, applies search domains and cannot be pointed at a
//! particular server, so a user who wants the balancer to see a headless Service's pods change
//! within one `interval`, or a test that runs its own DNS server, sets `nameserver` and gets this
//! client instead. It owns the wire format only as far as that needs:
//!
//! - [`build_query`]: one question, recursion desired, and an EDNS(0) record offering a 4096-byte
//!   UDP payload so large answers (hundreds of samplers) need no TCP retry;
//! - [`parse_reply`]: header, question, answer records (compression pointers followed, with a
//!   bound on jumps so a malicious pointer loop cannot hang us), keeping the A/AAAA records of the
//!   queried name and of the names a CNAME chain leads to;
//! - [`lookup_ip`]: A and AAAA queries in parallel over UDP (retried over TCP when the answer is
//!   truncated), each bounded by the timeout, combined as Go's `LookupIPAddr` (which the Collector
//!   uses) combines them: any address from either query is a success.
//!
//! The name is sent as written (no search domains): write the full name, e.g.
//! `samplers.observability.svc.cluster.local`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Record type of an IPv4 address.
pub const TYPE_A: u16 = 1;
/// Record type of an alias.
pub const TYPE_CNAME: u16 = 5;
/// Record type of an IPv6 address.
pub const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// The UDP payload size we offer in EDNS(0); the common choice of resolvers.
const EDNS_UDP_PAYLOAD: u16 = 4096;
/// A name can reference at most this many compression pointers. Real names need a handful; a
/// higher count means a loop.
const MAX_POINTER_JUMPS: usize = 64;

const RCODE_NOERROR: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("`{name}` is not a valid DNS name: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no such host `{0}` (NXDOMAIN)")]
    NoSuchHost(String),
    #[error("the nameserver answered {} for `{name}`", rcode_name(*.rcode))]
    Rcode { name: String, rcode: u8 },
    #[error("malformed DNS reply: {0}")]
    Malformed(&'static str),
    #[error("no reply from nameserver {server} within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("DNS query to {server} failed: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("rcode {other}"),
    }
}

/// The parts of a reply the resolver needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: u16,
    /// TC: the answer did not fit; ask again over TCP.
    pub truncated: bool,
    pub rcode: u8,
    /// The first question, lower-cased without the trailing dot, and its type.
    pub question: Option<(String, u16)>,
    /// Addresses of the queried type owned by the queried name or its CNAME chain, in answer
    /// order.
    pub addresses: Vec<IpAddr>,
}

impl Reply {
    /// The addresses, or the error the rcode means.
    pub fn into_result(self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        match self.rcode {
            RCODE_NOERROR => Ok(self.addresses),
            RCODE_NXDOMAIN => Err(DnsError::NoSuchHost(name.to_string())),
            rcode => Err(DnsError::Rcode {
                name: name.to_string(),
                rcode,
            }),
        }
    }

    fn answers(&self, id: u16, name: &str, qtype: u16) -> bool {
        self.id == id
            && match &self.question {
                Some((qname, qt)) => *qt == qtype && *qname == normalize(name),
                // Some servers drop the question from error replies; the ID has to do.
                None => true,
            }
    }
}

/// A query for `name` (absolute; a trailing dot is optional) of type `qtype`, class IN.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let mut packet = Vec::with_capacity(32 + name.len());
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&0x0100u16.to_be_bytes()); // standard query, recursion desired
    packet.extend_from_slice(&1u16.to_be_bytes()); // questions
    packet.extend_from_slice(&0u16.to_be_bytes()); // answers
    packet.extend_from_slice(&0u16.to_be_bytes()); // authority records
    packet.extend_from_slice(&1u16.to_be_bytes()); // additional records: the OPT below
    encode_name(&mut packet, name)?;
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&CLASS_IN.to_be_bytes());
    // EDNS(0) OPT pseudo-record: root name, type OPT, "class" = UDP payload size, extended rcode
    // and flags zero, no options.
    packet.push(0);
    packet.extend_from_slice(&TYPE_OPT.to_be_bytes());
    packet.extend_from_slice(&EDNS_UDP_PAYLOAD.to_be_bytes());
    packet.extend_from_slice(&0u32.to_be_bytes());
    packet.extend_from_slice(&0u16.to_be_bytes());
    Ok(packet)
}

fn encode_name(packet: &mut Vec<u8>, name: &str) -> Result<(), DnsError> {
    let invalid = |reason| DnsError::InvalidName {
        name: name.to_string(),
        reason,
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let start = packet.len();
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(invalid("it has an empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 bytes"));
        }
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    if packet.len() - start > 255 {
        return Err(invalid("it is longer than 255 bytes"));
    }
    Ok(())
}

/// Lower case, no trailing dot: the form names are compared in.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn malformed(what: &'static str) -> DnsError {
    DnsError::Malformed(what)
}

fn read_u16(packet: &[u8], at: usize) -> Result<u16, DnsError> {
    packet
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(malformed("it ends inside a record"))
}

/// Reads the (possibly compressed) name at `at`: the name, lower-cased, and the offset just past
/// it where it first appears.
fn read_name(packet: &[u8], at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut pos = at;
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *packet
            .get(pos)
            .ok_or(malformed("a name runs past the end"))? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => return Ok((name, end.unwrap_or(pos + 1))),
            0x00 => {
                let label = packet
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(malformed("a label runs past the end"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
                if name.len() > 255 {
                    return Err(malformed("a name is longer than 255 bytes"));
                }
                pos += 1 + len;
            }
            0xC0 => {
                let low = *packet
                    .get(pos + 1)
                    .ok_or(malformed("a pointer is cut off"))? as usize;
                end.get_or_insert(pos + 2);
                jumps += 1;
                if jumps > MAX_POINTER_JUMPS {
                    return Err(malformed("compression pointers loop"));
                }
                pos = ((len & 0x3F) << 8) | low;
            }
            _ => return Err(malformed("a label has an unknown type")),
        }
    }
}

/// Parses a reply to a query for `name` of type `qtype`.
pub fn parse_reply(packet: &[u8], name: &str, qtype: u16) -> Result<Reply, DnsError> {
    if packet.len() < 12 {
        return Err(malformed("it is shorter than a DNS header"));
    }
    let id = read_u16(packet, 0)?;
    let flags = read_u16(packet, 2)?;
    if flags & 0x8000 == 0 {
        return Err(malformed("it is a query, not a response"));
    }
    let question_count = read_u16(packet, 4)?;
    let answer_count = read_u16(packet, 6)?;

    let mut pos = 12;
    let mut question = None;
    for _ in 0..question_count {
        let (qname, next) = read_name(packet, pos)?;
        let qt = read_u16(packet, next)?;
        read_u16(packet, next + 2)?; // class
        question.get_or_insert((qname, qt));
        pos = next + 4;
    }

    // Answer records that matter: (owner name, address or CNAME target).
    enum Data {
        Address(IpAddr),
        Alias(String),
    }
    let mut records: Vec<(String, Data)> = Vec::new();
    for _ in 0..answer_count {
        let (owner, next) = read_name(packet, pos)?;
        let rtype = read_u16(packet, next)?;
        let class = read_u16(packet, next + 2)?;
        let rdlength = read_u16(packet, next + 8)? as usize;
        let rdata_start = next + 10;
        let rdata = packet
            .get(rdata_start..rdata_start + rdlength)
            .ok_or(malformed("record data runs past the end"))?;
        pos = rdata_start + rdlength;
        if class != CLASS_IN {
            continue;
        }
        let data = match (rtype, rdata.len()) {
            (TYPE_A, 4) if qtype == TYPE_A => Data::Address(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            ))),
            (TYPE_AAAA, 16) if qtype == TYPE_AAAA => {
                let octets: [u8; 16] = rdata.try_into().expect("length checked");
                Data::Address(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            (TYPE_A, _) | (TYPE_AAAA, _) if rtype == qtype => {
                return Err(malformed("an address record has the wrong length"))
            }
            (TYPE_CNAME, _) => Data::Alias(read_name(packet, rdata_start)?.0),
            _ => continue,
        };
        records.push((owner, data));
    }

    // The names whose addresses answer the question: the queried name and, transitively, what
    // it is an alias of. Resolvers send the chain in order, but the RFCs do not promise it.
    let mut names = vec![normalize(name)];
    loop {
        let before = names.len();
        for (owner, data) in &records {
            if let Data::Alias(target) = data {
                if names.contains(owner) && !names.contains(target) {
                    names.push(target.clone());
                }
            }
        }
        if names.len() == before {
            break;
        }
    }
    let addresses = records
        .iter()
        .filter_map(|(owner, data)| match data {
            Data::Address(ip) if names.contains(owner) => Some(*ip),
            _ => None,
        })
        .collect();

    Ok(Reply {
        id,
        truncated: flags & 0x0200 != 0,
        rcode: (flags & 0x000F) as u8,
        question,
        addresses,
    })
}

/// A query ID nobody else can predict, so a stray or forged datagram is ignored. Not
/// cryptographic: `RandomState` is seeded randomly per process and changes per instance.
fn query_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish() as u16
}

/// A and AAAA addresses of `name`, asked of `server` directly. Each query is bounded by
/// `timeout`; they run in parallel.
///
/// As Go's resolver (which the Collector uses): addresses from either query are a success even
/// if the other failed; with no address, the first real failure is the error; NXDOMAIN from
/// both is [`DnsError::NoSuchHost`]; an empty answer (NODATA) is `Ok` and empty.
pub async fn lookup_ip(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, DnsError> {
    let bounded = |qtype| async move {
        tokio::time::timeout(timeout, query(server, name, qtype))
            .await
            .unwrap_or(Err(DnsError::Timeout { server, timeout }))
    };
    let (v4, v6) = tokio::join!(bounded(TYPE_A), bounded(TYPE_AAAA));
    combine(v4, v6)
}

fn combine(
    v4: Result<Vec<IpAddr>, DnsError>,
    v6: Result<Vec<IpAddr>, DnsError>,
) -> Result<Vec<IpAddr>, DnsError> {
    let mut addresses = Vec::new();
    let mut failure: Option<DnsError> = None;
    for result in [v4, v6] {
        match result {
            Ok(found) => addresses.extend(found),
            Err(err) => {
                // A real failure says more than NXDOMAIN; keep the first of those.
                let keep = match &failure {
                    None => true,
                    Some(DnsError::NoSuchHost(_)) => !matches!(err, DnsError::NoSuchHost(_)),
                    Some(_) => false,
                };
                if keep {
                    failure = Some(err);
                }
            }
        }
    }
    match failure {
        Some(err) if addresses.is_empty() => Err(err),
        _ => Ok(addresses),
    }
}

/// One question over UDP, retried over TCP if the reply is truncated.
async fn query(server: SocketAddr, name: &str, qtype: u16) -> Result<Vec<IpAddr>, DnsError> {
    let io = |source| DnsError::Io { server, source };
    let id = query_id();
    let packet = build_query(id, name, qtype)?;
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    // Connected: the kernel drops datagrams from anyone but the server.
    socket.connect(server).await.map_err(io)?;
    socket.send(&packet).await.map_err(io)?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let len = socket.recv(&mut buf).await.map_err(io)?;
        let datagram = &buf[..len];
        if datagram.len() < 2 || u16::from_be_bytes([datagram[0], datagram[1]]) != id {
            continue; // a late reply to an earlier query
        }
        let reply = parse_reply(datagram, name, qtype)?;
        if !reply.answers(id, name, qtype) {
            continue;
        }
        if reply.truncated {
            return query_tcp(server, name, qtype).await;
        }
        return reply.into_result(name);
    }
}

async fn query_tcp(server: SocketAddr, name: &str, qtype: u16) -> Result<Vec<IpAddr>, DnsError> {
    let io = |source| DnsError::Io { server, source };
    let id = query_id();
    let packet = build_query(id, name, qtype)?;
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    // Over TCP each message is preceded by its length.
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    framed.extend_from_slice(&packet);
    stream.write_all(&framed).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.map_err(io)?;
    let reply = parse_reply(&buf, name, qtype)?;
    if !reply.answers(id, name, qtype) {
        return Err(malformed("the TCP reply answers a different question"));
    }
    reply.into_result(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply header: ID, flags, then counts.
    fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
        let mut p = Vec::new();
        for word in [id, flags, qd, an, 0, 0] {
            p.extend_from_slice(&word.to_be_bytes());
        }
        p
    }

    fn labels(name: &str) -> Vec<u8> {
        let mut p = Vec::new();
        for label in name.split('.') {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p
    }

    /// An answer record whose owner is the compression pointer `owner` (or inline labels).
    fn record(owner: &[u8], rtype: u16, rdata: &[u8]) -> Vec<u8> {
        let mut p = owner.to_vec();
        p.extend_from_slice(&rtype.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        p.extend_from_slice(&30u32.to_be_bytes());
        p.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        p.extend_from_slice(rdata);
        p
    }

    const POINTER_TO_QUESTION: [u8; 2] = [0xC0, 12];

    /// A reply to an A query for `samplers.example` with the given addresses.
    fn a_reply(id: u16, addresses: &[[u8; 4]]) -> Vec<u8> {
        let mut p = header(id, 0x8180, 1, addresses.len() as u16);
        p.extend(labels("samplers.example"));
        p.extend_from_slice(&TYPE_A.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        for address in addresses {
            p.extend(record(&POINTER_TO_QUESTION, TYPE_A, address));
        }
        p
    }

    #[test]
    fn a_query_packet_has_the_header_question_and_edns_record_byte_for_byte() {
        let packet = build_query(0xBEEF, "samplers.tailgate.svc.", TYPE_A).unwrap();
        let mut want = vec![
            0xBE, 0xEF, // ID
            0x01, 0x00, // standard query, RD
            0x00, 0x01, // one question
            0x00, 0x00, 0x00, 0x00, // no answers or authority
            0x00, 0x01, // one additional record
        ];
        want.extend_from_slice(b"\x08samplers\x08tailgate\x03svc\x00");
        want.extend_from_slice(&[0x00, 0x01, 0x00, 0x01]); // A, IN
        want.extend_from_slice(&[0x00, 0x00, 0x29, 0x10, 0x00, 0, 0, 0, 0, 0x00, 0x00]); // OPT
        assert_eq!(packet, want);
        // The trailing dot is optional.
        assert_eq!(
            build_query(0xBEEF, "samplers.tailgate.svc", TYPE_A).unwrap(),
            packet
        );
    }

    #[test]
    fn names_dns_cannot_carry_are_refused_before_sending() {
        let long_label = "a".repeat(64);
        let long_name = vec!["abcdefghij"; 24].join(".");
        for name in ["", ".", "a..b", long_label.as_str(), long_name.as_str()] {
            let err = build_query(1, name, TYPE_A).unwrap_err();
            assert!(matches!(err, DnsError::InvalidName { .. }), "{name}: {err}");
        }
        assert!(build_query(1, &"a".repeat(63), TYPE_A).is_ok());
    }

    #[test]
    fn a_records_behind_compression_pointers_are_read() {
        let packet = a_reply(7, &[[10, 0, 0, 2], [10, 0, 0, 1]]);
        let reply = parse_reply(&packet, "Samplers.Example.", TYPE_A).unwrap();
        assert_eq!(reply.id, 7);
        assert!(!reply.truncated);
        assert_eq!(reply.rcode, 0);
        assert_eq!(reply.question, Some(("samplers.example".into(), TYPE_A)));
        assert_eq!(
            reply.addresses,
            vec![IpAddr::from([10, 0, 0, 2]), IpAddr::from([10, 0, 0, 1])]
        );
    }

    #[test]
    fn aaaa_records_are_read_for_aaaa_queries_only() {
        let v6: [u8; 16] = "fd00::7".parse::<Ipv6Addr>().unwrap().octets();
        let mut p = header(9, 0x8180, 1, 2);
        p.extend(labels("samplers.example"));
        p.extend_from_slice(&TYPE_AAAA.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        p.extend(record(&POINTER_TO_QUESTION, TYPE_AAAA, &v6));
        p.extend(record(&POINTER_TO_QUESTION, TYPE_A, &[10, 0, 0, 1]));
        let reply = parse_reply(&p, "samplers.example", TYPE_AAAA).unwrap();
        assert_eq!(reply.addresses, vec![IpAddr::from(v6)]);
    }

    #[test]
    fn a_cname_chain_is_followed_to_its_addresses_and_strangers_are_ignored() {
        // samplers.example CNAME pool.example. ; pool.example CNAME pods.pool.example ;
        // pods.pool.example A 10.0.0.5 ; other.example A 10.9.9.9 (not on the chain)
        let mut p = header(3, 0x8180, 1, 4);
        p.extend(labels("samplers.example")); // offset 12: "samplers" at 12, "example" at 21
        p.extend_from_slice(&TYPE_A.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        // pool.example: a label then a pointer to "example" in the question.
        let pool_offset = p.len() + 2 + 10; // where the first record's rdata starts
        p.extend(record(
            &POINTER_TO_QUESTION,
            TYPE_CNAME,
            b"\x04pool\xC0\x15",
        ));
        let pods_offset = p.len() + 2 + 10;
        // pods.pool.example: "pods" then a pointer to the "pool.example" just written.
        p.extend(record(
            &[0xC0, pool_offset as u8],
            TYPE_CNAME,
            &[4, b'p', b'o', b'd', b's', 0xC0, pool_offset as u8],
        ));
        p.extend(record(&labels("other.example"), TYPE_A, &[10, 9, 9, 9]));
        p.extend(record(&[0xC0, pods_offset as u8], TYPE_A, &[10, 0, 0, 5]));
        let reply = parse_reply(&p, "samplers.example", TYPE_A).unwrap();
        assert_eq!(reply.addresses, vec![IpAddr::from([10, 0, 0, 5])]);
    }

    #[test]
    fn rcodes_become_errors_that_say_what_the_server_said() {
        let nxdomain = parse_reply(&header(1, 0x8183, 0, 0), "x.example", TYPE_A).unwrap();
        assert!(matches!(
            nxdomain.into_result("x.example"),
            Err(DnsError::NoSuchHost(name)) if name == "x.example"
        ));
        let servfail = parse_reply(&header(1, 0x8182, 0, 0), "x.example", TYPE_A).unwrap();
        let err = servfail.into_result("x.example").unwrap_err();
        assert!(err.to_string().contains("SERVFAIL"), "{err}");
        let nodata = parse_reply(&header(1, 0x8180, 0, 0), "x.example", TYPE_A).unwrap();
        assert!(nodata.into_result("x.example").unwrap().is_empty());
    }

    #[test]
    fn the_truncated_flag_is_reported() {
        let reply = parse_reply(&header(1, 0x8380, 0, 0), "x.example", TYPE_A).unwrap();
        assert!(reply.truncated);
    }

    #[test]
    fn every_truncation_of_a_reply_is_an_error_not_a_panic() {
        let packet = a_reply(7, &[[10, 0, 0, 2], [10, 0, 0, 1]]);
        for len in 0..packet.len() {
            assert!(
                parse_reply(&packet[..len], "samplers.example", TYPE_A).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
    }

    #[test]
    fn a_compression_pointer_loop_is_malformed() {
        let mut p = header(1, 0x8180, 1, 0);
        p.extend_from_slice(&[0xC0, 12]); // points at itself
        p.extend_from_slice(&[0, 1, 0, 1]);
        let err = parse_reply(&p, "x.example", TYPE_A).unwrap_err();
        assert!(matches!(err, DnsError::Malformed(_)), "{err}");
    }

    #[test]
    fn a_query_is_not_taken_for_a_reply() {
        let query = build_query(5, "x.example", TYPE_A).unwrap();
        assert!(parse_reply(&query, "x.example", TYPE_A).is_err());
    }

    #[test]
    fn either_family_answering_is_enough_and_failures_surface_only_without_addresses() {
        let ip = IpAddr::from([10, 0, 0, 1]);
        let servfail = || DnsError::Rcode {
            name: "x".into(),
            rcode: 2,
        };
        let nx = || DnsError::NoSuchHost("x".into());
        assert_eq!(combine(Ok(vec![ip]), Err(servfail())).unwrap(), vec![ip]);
        assert_eq!(combine(Err(nx()), Ok(vec![ip])).unwrap(), vec![ip]);
        assert!(combine(Ok(vec![]), Ok(vec![])).unwrap().is_empty());
        assert!(matches!(
            combine(Err(nx()), Err(nx())),
            Err(DnsError::NoSuchHost(_))
        ));
        assert!(matches!(
            combine(Err(nx()), Err(servfail())),
            Err(DnsError::Rcode { rcode: 2, .. })
        ));
        assert!(matches!(
            combine(Err(servfail()), Err(nx())),
            Err(DnsError::Rcode { rcode: 2, .. })
        ));
    }

    /// Answers every UDP query on a loopback socket with the datagrams `respond(query)` returns.
    async fn udp_server(
        respond: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            loop {
                let (len, peer) = socket.recv_from(&mut buf).await.unwrap();
                for reply in respond(&buf[..len]) {
                    socket.send_to(&reply, peer).await.unwrap();
                }
            }
        });
        (addr, task)
    }

    fn qtype_of(query: &[u8]) -> u16 {
        let (_, next) = read_name(query, 12).unwrap();
        read_u16(query, next).unwrap()
    }

    #[tokio::test]
    async fn a_lookup_over_udp_returns_the_a_records_and_ignores_a_stale_reply_first() {
        let (server, task) = udp_server(|query| {
            let id = u16::from_be_bytes([query[0], query[1]]);
            if qtype_of(query) != TYPE_A {
                return vec![header(id, 0x8180, 0, 0)]; // NODATA for AAAA
            }
            // A reply to some earlier query (another ID) arrives first and must be skipped.
            vec![
                a_reply(id.wrapping_add(1), &[[127, 0, 0, 66]]),
                a_reply(id, &[[127, 0, 0, 9]]),
            ]
        })
        .await;
        let found = lookup_ip(server, "samplers.example", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(found, vec![IpAddr::from([127, 0, 0, 9])]);
        task.abort();
    }

    #[tokio::test]
    async fn a_truncated_udp_reply_is_asked_again_over_tcp() {
        let (server, udp_task) = udp_server(|query| {
            let id = u16::from_be_bytes([query[0], query[1]]);
            vec![header(id, 0x8380, 0, 0)] // TC set, no records
        })
        .await;
        // The TCP side listens on the same port number as the UDP side.
        let listener = tokio::net::TcpListener::bind(server).await.unwrap();
        let tcp_task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let len = stream.read_u16().await.unwrap() as usize;
                let mut query = vec![0u8; len];
                stream.read_exact(&mut query).await.unwrap();
                let id = u16::from_be_bytes([query[0], query[1]]);
                let reply = if qtype_of(&query) == TYPE_A {
                    a_reply(id, &[[127, 0, 0, 11], [127, 0, 0, 12]])
                } else {
                    header(id, 0x8180, 0, 0)
                };
                stream
                    .write_all(&(reply.len() as u16).to_be_bytes())
                    .await
                    .unwrap();
                stream.write_all(&reply).await.unwrap();
            }
        });
        let found = lookup_ip(server, "samplers.example", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            found,
            vec![IpAddr::from([127, 0, 0, 11]), IpAddr::from([127, 0, 0, 12])]
        );
        udp_task.abort();
        tcp_task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_nameserver_times_out_with_an_error_naming_it() {
        let (server, task) = udp_server(|_| vec![]).await;
        let err = lookup_ip(server, "samplers.example", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains(&server.to_string()), "{err}");
        task.abort();
    }
}
