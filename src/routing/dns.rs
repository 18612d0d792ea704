//! Asking one DNS server directly (the `dns` resolver's `nameserver` option), through
//! `hickory-resolver`: A and AAAA queries over UDP with TCP on truncation, no cache (every
//! resolution asks the server, so a changed answer is seen at the next interval), no search
//! domains (the hostname is taken as written).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioResolver;

/// Why a lookup found no addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("`{0}` does not exist (NXDOMAIN)")]
    NoSuchHost(String),
    #[error("the nameserver answered {rcode} for `{name}`")]
    Rcode { name: String, rcode: String },
    #[error("no answer from the nameserver for `{name}`: {message}")]
    Failed { name: String, message: String },
}

/// A client for one nameserver.
#[derive(Clone)]
pub struct DnsClient {
    resolver: TokioResolver,
}

impl DnsClient {
    pub fn new(server: SocketAddr, timeout: Duration) -> Self {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
        name_server.connections = vec![udp, tcp];
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        options.cache_size = 0;
        options.ndots = 0;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .expect("a resolver with one nameserver and no TLS always builds");
        Self { resolver }
    }

    /// Every A and AAAA address of `name`, in the order the server gave them.
    pub async fn lookup_ip(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        // A trailing dot: the name is fully qualified, never completed with search domains.
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(found) => Ok(found.iter().collect()),
            Err(error) => Err(classify(name, &error)),
        }
    }
}

fn classify(name: &str, error: &NetError) -> DnsError {
    let rcode = match error {
        NetError::Dns(HickoryDnsError::NoRecordsFound(none)) => none.response_code,
        NetError::Dns(HickoryDnsError::ResponseCode(code)) => *code,
        other => {
            return DnsError::Failed {
                name: name.to_string(),
                message: other.to_string(),
            }
        }
    };
    match rcode {
        ResponseCode::NXDomain => DnsError::NoSuchHost(name.to_string()),
        // NOERROR without records: the name exists and has no addresses.
        ResponseCode::NoError => DnsError::Rcode {
            name: name.to_string(),
            rcode: "NOERROR with no addresses".into(),
        },
        code => DnsError::Rcode {
            name: name.to_string(),
            rcode: rcode_name(code),
        },
    }
}

/// The conventional upper-case mnemonic of a response code (`SERVFAIL`, `REFUSED`).
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

/// One lookup of `name` at `server` (for tests and tools).
pub async fn lookup_ip(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, DnsError> {
    DnsClient::new(server, timeout).lookup_ip(name).await
}
