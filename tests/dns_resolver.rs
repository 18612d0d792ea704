//! The `dns` resolver against a real DNS server: [`support::dns::DnsServer`] on loopback, the
//! resolver's `nameserver` pointed at it, answers changed while the resolver runs.
//!
//! Every wait is on a signal, bounded by [`WAIT`]: the resolver's `watch` channel for new endpoint
//! sets, the server's query count for "the resolver has tried again". No test sleeps.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use support::dns::DnsServer;
use tailgate::routing::dns::{lookup_ip, DnsError};
use tailgate::routing::{Resolver, ResolverConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const NAME: &str = "samplers.tailgate.test";
const WAIT: Duration = Duration::from_secs(10);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A running resolver asking `server` every 100ms.
struct Running {
    rx: watch::Receiver<Vec<String>>,
    shutdown: CancellationToken,
    resolver: Option<Resolver>,
}

impl Running {
    fn start(server: &DnsServer, timeout: &str) -> Running {
        let yaml = format!(
            "dns:\n  hostname: {NAME}\n  port: \"4317\"\n  interval: 100ms\n  timeout: {timeout}\n  nameserver: {}\n",
            server.addr()
        );
        let config: ResolverConfig = serde_yaml::from_str(&yaml).unwrap();
        let mut errors = Vec::new();
        let settings = config.settings("resolver", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let shutdown = CancellationToken::new();
        let (resolver, rx) = Resolver::start(&settings.unwrap(), shutdown.clone());
        Running {
            rx,
            shutdown,
            resolver: Some(resolver),
        }
    }

    /// The next endpoint set the resolver publishes.
    async fn next_set(&mut self) -> Vec<String> {
        tokio::time::timeout(WAIT, self.rx.changed())
            .await
            .expect("a new endpoint set within the wait")
            .expect("the resolver is running");
        self.rx.borrow_and_update().clone()
    }

    fn current(&self) -> Vec<String> {
        self.rx.borrow().clone()
    }

    fn has_new_set(&self) -> bool {
        self.rx.has_changed().expect("the resolver is running")
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(resolver) = self.resolver.take() {
            tokio::time::timeout(WAIT, resolver.stopped())
                .await
                .expect("the resolver stops on shutdown");
        }
    }
}

/// Waits until the resolver has finished the attempts the server is answering now: the attempt
/// after next starting means the next one was handled in full (attempts run one at a time).
async fn wait_for_two_more_attempts(server: &DnsServer) {
    let seen = server.a_queries();
    server.wait_for_a_queries(seen + 2, WAIT).await;
}

fn endpoints(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_resolver_publishes_the_answered_addresses_sorted_with_the_port() {
    let server = DnsServer::start(NAME, vec![ip(12), ip(11)]);
    let mut running = Running::start(&server, "1s");
    assert_eq!(
        running.next_set().await,
        endpoints(&["127.0.0.11:4317", "127.0.0.12:4317"])
    );
    running.stop().await;
}

#[tokio::test]
async fn a_changed_answer_is_seen_after_an_interval() {
    let server = DnsServer::start(NAME, vec![ip(11)]);
    let mut running = Running::start(&server, "1s");
    assert_eq!(running.next_set().await, endpoints(&["127.0.0.11:4317"]));

    server.set_answer(vec![ip(11), ip(13), ip(12)]);
    assert_eq!(
        running.next_set().await,
        endpoints(&["127.0.0.11:4317", "127.0.0.12:4317", "127.0.0.13:4317"])
    );

    server.set_answer(vec![ip(13)]);
    assert_eq!(running.next_set().await, endpoints(&["127.0.0.13:4317"]));
    running.stop().await;
}

#[tokio::test]
async fn a_servfail_keeps_the_last_good_set_until_the_server_recovers() {
    let server = DnsServer::start(NAME, vec![ip(11), ip(12)]);
    let mut running = Running::start(&server, "1s");
    let good = running.next_set().await;

    server.fail();
    wait_for_two_more_attempts(&server).await;
    assert!(!running.has_new_set());
    assert_eq!(running.current(), good);

    server.set_answer(vec![ip(12)]);
    assert_eq!(running.next_set().await, endpoints(&["127.0.0.12:4317"]));
    running.stop().await;
}

#[tokio::test]
async fn an_empty_answer_keeps_the_last_good_set() {
    let server = DnsServer::start(NAME, vec![ip(11), ip(12)]);
    let mut running = Running::start(&server, "1s");
    let good = running.next_set().await;

    server.answer_empty();
    wait_for_two_more_attempts(&server).await;
    assert!(!running.has_new_set());
    assert_eq!(running.current(), good);

    // An answer with zero addresses is the same as an empty one.
    server.set_answer(vec![]);
    wait_for_two_more_attempts(&server).await;
    assert!(!running.has_new_set());

    server.set_answer(vec![ip(14)]);
    assert_eq!(running.next_set().await, endpoints(&["127.0.0.14:4317"]));
    running.stop().await;
}

#[tokio::test]
async fn a_silent_nameserver_keeps_the_last_good_set() {
    let server = DnsServer::start(NAME, vec![ip(11)]);
    let mut running = Running::start(&server, "150ms");
    let good = running.next_set().await;

    server.go_silent();
    wait_for_two_more_attempts(&server).await;
    assert!(!running.has_new_set());
    assert_eq!(running.current(), good);

    server.set_answer(vec![ip(15)]);
    assert_eq!(running.next_set().await, endpoints(&["127.0.0.15:4317"]));
    running.stop().await;
}

#[tokio::test]
async fn a_nameserver_failing_at_start_leaves_the_set_empty_until_it_answers() {
    let server = DnsServer::start(NAME, vec![]);
    server.fail();
    let mut running = Running::start(&server, "1s");
    wait_for_two_more_attempts(&server).await;
    assert!(!running.has_new_set());
    assert!(running.current().is_empty());

    server.set_answer(vec![ip(11)]);
    assert_eq!(running.next_set().await, endpoints(&["127.0.0.11:4317"]));
    running.stop().await;
}

#[tokio::test]
async fn the_test_server_answers_only_its_own_name() {
    let server = DnsServer::start(NAME, vec![ip(11)]);
    let found = lookup_ip(server.addr(), &NAME.to_uppercase(), WAIT)
        .await
        .unwrap();
    assert_eq!(found, vec![IpAddr::V4(ip(11))]);
    let err = lookup_ip(server.addr(), "other.tailgate.test", WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::NoSuchHost(_)), "{err}");
    server.fail();
    let err = lookup_ip(server.addr(), NAME, WAIT).await.unwrap_err();
    assert!(err.to_string().contains("SERVFAIL"), "{err}");
}
