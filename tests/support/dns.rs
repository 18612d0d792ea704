//! [`DnsServer`]: a tiny authoritative DNS server for tests of the `dns` resolver.
//!
//! It answers UDP queries on a loopback address for one name: A queries with the addresses the
//! test sets ([`DnsServer::set_answer`]), AAAA queries with no records, other names with
//! NXDOMAIN. The test can switch it at run time to SERVFAIL ([`DnsServer::fail`]), to an empty
//! answer ([`DnsServer::answer_empty`]) or to silence ([`DnsServer::go_silent`]).
//!
//! It is written independently of `tailgate::balancer::dns` (the client under test) and runs on
//! its own thread, so it works under any runtime. Every A query it answers is counted;
//! [`DnsServer::wait_for_a_queries`] waits on that count (a `watch` channel) so tests synchronise
//! with the resolver's attempts instead of sleeping. Dropping the server stops it.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_NOERROR: u16 = 0;
const RCODE_SERVFAIL: u16 = 2;
const RCODE_NXDOMAIN: u16 = 3;

/// How the server answers A queries for its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// NOERROR with these A records (none is the same as [`Behaviour::Empty`]).
    Answer(Vec<Ipv4Addr>),
    /// NOERROR with no records (NODATA).
    Empty,
    /// SERVFAIL.
    ServFail,
    /// No reply at all: the client times out.
    Silent,
}

struct State {
    behaviour: Behaviour,
    /// Counts answered A queries; written under the same lock that decides the answer, so a
    /// count read after a behaviour change only includes queries answered the new way from then.
    a_queries: watch::Sender<u64>,
}

/// A DNS server answering for one name on a loopback UDP port.
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    a_queries: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `name` with `addresses` on `127.0.0.1` at a free port.
    pub fn start(name: &str, addresses: Vec<Ipv4Addr>) -> DnsServer {
        Self::start_on((Ipv4Addr::LOCALHOST, 0).into(), name, addresses)
            .expect("bind a loopback UDP port")
    }

    /// Serves `name` with `addresses` on `bind` (a loopback address; port 0 picks one).
    pub fn start_on(
        bind: SocketAddr,
        name: &str,
        addresses: Vec<Ipv4Addr>,
    ) -> std::io::Result<DnsServer> {
        let socket = UdpSocket::bind(bind)?;
        let addr = socket.local_addr()?;
        let (count_tx, count_rx) = watch::channel(0);
        let state = Arc::new(Mutex::new(State {
            behaviour: Behaviour::Answer(addresses),
            a_queries: count_tx,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            let name = normalize(name);
            std::thread::Builder::new()
                .name("test-dns-server".into())
                .spawn(move || serve(socket, &name, &state, &stop))?
        };
        Ok(DnsServer {
            addr,
            state,
            a_queries: count_rx,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the server listens (`nameserver:` in a resolver config).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers A queries with `behaviour` from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().behaviour = behaviour;
    }

    /// Answers A queries with these addresses from now on.
    pub fn set_answer(&self, addresses: Vec<Ipv4Addr>) {
        self.set_behaviour(Behaviour::Answer(addresses));
    }

    /// Answers every query with SERVFAIL from now on.
    pub fn fail(&self) {
        self.set_behaviour(Behaviour::ServFail);
    }

    /// Answers NOERROR with no records from now on.
    pub fn answer_empty(&self) {
        self.set_behaviour(Behaviour::Empty);
    }

    /// Stops replying (queries still count) from now on.
    pub fn go_silent(&self) {
        self.set_behaviour(Behaviour::Silent);
    }

    /// A queries for the server's name received so far.
    pub fn a_queries(&self) -> u64 {
        *self.a_queries.borrow()
    }

    /// Waits until at least `n` A queries have been received, or `timeout` passes.
    pub async fn wait_for_a_queries(&self, n: u64, timeout: Duration) {
        let mut rx = self.a_queries.clone();
        let seen = tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await;
        assert!(
            matches!(seen, Ok(Ok(_))),
            "the DNS server saw {} A queries within {timeout:?}, expected {n}",
            self.a_queries()
        );
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked `recv_from` with a datagram of our own; the loop sees `stop` and exits.
        if let Ok(waker) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) {
            let _ = waker.send_to(&[], self.addr);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(socket: UdpSocket, name: &str, state: &Mutex<State>, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    loop {
        let received = socket.recv_from(&mut buf);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((len, peer)) = received else { continue };
        if let Some(reply) = answer(&buf[..len], name, state) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

/// The reply to `query`, or `None` to stay silent (also for anything that is not a query).
fn answer(query: &[u8], name: &str, state: &Mutex<State>) -> Option<Vec<u8>> {
    let question = Question::parse(query)?;
    let state = state.lock().unwrap();
    let ours = question.name == name;
    let is_a = question.qtype == TYPE_A && question.qclass == CLASS_IN;
    if ours && is_a {
        state.a_queries.send_modify(|count| *count += 1);
    }
    let (rcode, records): (u16, &[Ipv4Addr]) = match (&state.behaviour, ours) {
        (_, false) => (RCODE_NXDOMAIN, &[]),
        (Behaviour::Silent, true) => return None,
        (Behaviour::ServFail, true) => (RCODE_SERVFAIL, &[]),
        (Behaviour::Empty, true) => (RCODE_NOERROR, &[]),
        (Behaviour::Answer(addresses), true) if is_a => (RCODE_NOERROR, addresses),
        // AAAA and other types for our name: the name exists, with no records of that type.
        (Behaviour::Answer(_), true) => (RCODE_NOERROR, &[]),
    };

    let mut reply = Vec::with_capacity(question.end + records.len() * 16);
    reply.extend_from_slice(&query[0..2]); // ID
    let recursion_desired = u16::from_be_bytes([query[2], query[3]]) & 0x0100;
    let flags = 0x8000 | 0x0400 | recursion_desired | rcode; // response, authoritative
    reply.extend_from_slice(&flags.to_be_bytes());
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]); // no authority or additional records
    reply.extend_from_slice(&query[12..question.end]);
    for address in records {
        reply.extend_from_slice(&[0xC0, 12]); // the name, by pointer to the question
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: never cache
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}

/// The first question of a query (uncompressed, as clients send it).
struct Question {
    name: String,
    qtype: u16,
    qclass: u16,
    /// Offset just past the question.
    end: usize,
}

impl Question {
    fn parse(query: &[u8]) -> Option<Question> {
        if query.len() < 12 || query[2] & 0x80 != 0 {
            return None; // too short, or a response
        }
        if u16::from_be_bytes([query[4], query[5]]) == 0 {
            return None;
        }
        let mut labels = Vec::new();
        let mut pos = 12;
        loop {
            let len = *query.get(pos)? as usize;
            pos += 1;
            if len == 0 {
                break;
            }
            if len > 63 {
                return None;
            }
            labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
            pos += len;
        }
        let field = |at: usize| Some(u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]));
        Some(Question {
            name: labels.join("."),
            qtype: field(pos)?,
            qclass: field(pos + 2)?,
            end: pos + 4,
        })
    }
}
