//! A sampler's view of its peers, for the sampler cluster: the ring over the resolved sampler set
//! (less this sampler once it is leaving, less the peers that said they are leaving), and one
//! OTLP/gRPC client per peer whose sends are acknowledged, not queued: the caller learns whether
//! the peer took the spans, and keeps them if it did not.
//!
//! Ownership is looked up on a snapshot ([`PeerView`]) taken once per request: no lock and no
//! allocation per span.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataKey};

use super::resolver::endpoint_with_port;
use super::ring::Ring;
use crate::exporter::{GrpcClientSettings, GrpcTransport, SendError};
use crate::otlp::{EncodedBatch, TraceId, FORWARDED_HEADER};

/// How long a peer that refused traffic because it is leaving stays out of this sampler's ring,
/// unless the resolver drops it first. Long enough for the resolver to catch up; short enough
/// that a peer restarted at the same address is used again.
const LEAVING_MARK: Duration = Duration::from_secs(60);

/// Who owns a trace, seen from one sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This sampler (or nobody is known yet: then it keeps everything rather than refuse).
    Me,
    /// The peer at this index of the view's ring.
    Peer(usize),
}

/// One snapshot of the peer set.
pub struct PeerView {
    ring: Ring,
    /// This sampler's index on the ring, if it is on it.
    me: Option<usize>,
    /// A client per ring index; `None` for this sampler and for a peer whose client could not be
    /// built (its spans then stay here).
    clients: Vec<Option<Arc<GrpcTransport>>>,
}

impl PeerView {
    /// The owner of ring position `position` (`crc32(trace ID) % 36000`).
    pub fn owner_at(&self, position: u32) -> Owner {
        match self.ring.owner_index_at(position) {
            Some(index) if Some(index) != self.me => Owner::Peer(index),
            _ => Owner::Me,
        }
    }

    /// The owner of a trace.
    pub fn owner(&self, trace: &TraceId) -> Owner {
        self.owner_at(super::ring::position_of(trace))
    }

    /// The endpoint of a peer.
    pub fn endpoint(&self, peer: usize) -> &str {
        &self.ring.endpoints()[peer]
    }

    /// Whether any peer but this sampler is on the ring.
    pub fn has_peers(&self) -> bool {
        self.ring.endpoints().len() > usize::from(self.me.is_some())
    }

    /// Sends `batch` to `peer`, marked as having passed `hops` samplers, and waits for its answer.
    pub async fn send(
        &self,
        peer: usize,
        batch: &EncodedBatch,
        hops: u32,
    ) -> Result<(), SendError> {
        let Some(client) = self.clients.get(peer).and_then(Option::as_ref) else {
            return Err(SendError::permanent(format!(
                "no client for peer {}",
                self.endpoint(peer)
            )));
        };
        let hops = AsciiMetadataValue::from(hops);
        client
            .send_with(
                batch,
                Some((MetadataKey::from_static(FORWARDED_HEADER), hops)),
            )
            .await
    }
}

/// The peer set as resolved and as this sampler uses it.
pub struct Peers {
    me: String,
    template: GrpcClientSettings,
    leaving: AtomicBool,
    state: Mutex<PeerState>,
    view: RwLock<Arc<PeerView>>,
}

#[derive(Default)]
struct PeerState {
    /// The resolver's latest set.
    resolved: Vec<String>,
    /// Peers that refused traffic because they are leaving, until when to keep them out.
    leaving_peers: HashMap<String, Instant>,
    /// Clients by endpoint, kept while the endpoint stays resolved.
    clients: HashMap<String, Arc<GrpcTransport>>,
}

impl Peers {
    /// `me`: this sampler exactly as the resolver lists it. `template`: how to reach a peer.
    pub fn new(me: &str, template: GrpcClientSettings) -> Self {
        Self {
            me: me.to_string(),
            template,
            leaving: AtomicBool::new(false),
            state: Mutex::new(PeerState::default()),
            view: RwLock::new(Arc::new(PeerView {
                ring: Ring::new(&[]),
                me: None,
                clients: Vec::new(),
            })),
        }
    }

    /// This sampler exactly as the resolver lists it.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The current snapshot.
    pub fn view(&self) -> Arc<PeerView> {
        Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes the resolver's new set. Returns whether the ring changed.
    pub fn set_resolved(&self, endpoints: &[String]) -> bool {
        let mut state = self.lock();
        state.resolved = endpoints.to_vec();
        // A peer the resolver no longer lists needs no mark, and a mark must not outlive a
        // restart at the same address.
        state
            .leaving_peers
            .retain(|peer, _| endpoints.contains(peer));
        self.rebuild(&mut state)
    }

    /// This sampler is leaving: it owns nothing from now on.
    pub fn set_leaving(&self) -> bool {
        self.leaving.store(true, Ordering::SeqCst);
        let mut state = self.lock();
        self.rebuild(&mut state)
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst)
    }

    /// A peer said it is leaving: route around it. Returns whether the ring changed.
    pub fn mark_peer_leaving(&self, endpoint: &str) -> bool {
        let mut state = self.lock();
        state
            .leaving_peers
            .insert(endpoint.to_string(), Instant::now() + LEAVING_MARK);
        self.rebuild(&mut state)
    }

    /// Expires old leaving marks; returns whether the ring changed.
    pub fn expire_marks(&self) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let before = state.leaving_peers.len();
        state.leaving_peers.retain(|_, until| *until > now);
        before != state.leaving_peers.len() && self.rebuild(&mut state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds the view from the resolved set less the leaving; returns whether its ring changed.
    fn rebuild(&self, state: &mut PeerState) -> bool {
        let leaving = self.is_leaving();
        let members: Vec<String> = state
            .resolved
            .iter()
            .filter(|e| {
                let me_leaving = leaving && **e == self.me;
                !me_leaving && !state.leaving_peers.contains_key(*e)
            })
            .cloned()
            .collect();
        let ring = Ring::new(&members);
        if ring.endpoints() == self.view().ring.endpoints() {
            return false;
        }
        if !leaving && !members.is_empty() && !members.contains(&self.me) {
            tracing::warn!(
                endpoint = %self.me,
                peers = ?members,
                "this sampler's cluster.endpoint is not among the resolved peers: it will forward every span"
            );
        }
        let resolved = state.resolved.clone();
        state
            .clients
            .retain(|endpoint, _| resolved.contains(endpoint));
        let me = ring.index_of(&self.me);
        let clients = ring
            .endpoints()
            .iter()
            .enumerate()
            .map(|(index, endpoint)| {
                if Some(index) == me {
                    return None;
                }
                if let Some(client) = state.clients.get(endpoint) {
                    return Some(Arc::clone(client));
                }
                let client = self
                    .template
                    .for_endpoint(&endpoint_with_port(endpoint))
                    .and_then(|settings| GrpcTransport::new(&settings));
                match client {
                    Ok(client) => {
                        let client = Arc::new(client);
                        state.clients.insert(endpoint.clone(), Arc::clone(&client));
                        Some(client)
                    }
                    Err(message) => {
                        tracing::error!(peer = %endpoint, "cannot build a client for the peer: {message}");
                        None
                    }
                }
            })
            .collect();
        tracing::info!(peers = ?ring.endpoints(), leaving, "cluster peer set changed");
        *self.view.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(PeerView { ring, me, clients });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporter::settings::{Compression, TlsSettings};

    fn template() -> GrpcClientSettings {
        GrpcClientSettings {
            insecure: true,
            tls: TlsSettings::default(),
            headers: Vec::new(),
            compression: Compression::None,
            timeout: Duration::from_secs(1),
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn ownership_follows_the_ring_and_moves_when_this_sampler_leaves() {
        let peers = Peers::new("10.0.0.2:4317", template());
        let id = [7u8; 16];
        assert_eq!(peers.view().owner(&id), Owner::Me, "no peers known: keep");
        let all = strings(&["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"]);
        assert!(peers.set_resolved(&all));
        assert!(!peers.set_resolved(&all), "the same set is no change");
        let ring = Ring::new(&all);
        let view = peers.view();
        for t in 0u32..500 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&t.to_be_bytes());
            let owner = ring.endpoint_for(&id).unwrap();
            match view.owner(&id) {
                Owner::Me => assert_eq!(owner, "10.0.0.2:4317"),
                Owner::Peer(i) => assert_eq!(view.endpoint(i), owner),
            }
        }
        assert!(peers.set_leaving());
        let view = peers.view();
        assert!(view.has_peers());
        for t in 0u32..500 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&t.to_be_bytes());
            assert!(
                matches!(view.owner(&id), Owner::Peer(_)),
                "a leaving sampler owns nothing"
            );
        }
    }

    #[tokio::test]
    async fn a_peer_marked_leaving_is_routed_around_until_the_resolver_drops_it() {
        let peers = Peers::new("10.0.0.1:4317", template());
        peers.set_resolved(&strings(&["10.0.0.1:4317", "10.0.0.2:4317"]));
        assert!(peers.mark_peer_leaving("10.0.0.2:4317"));
        let view = peers.view();
        assert!(!view.has_peers());
        assert_eq!(view.owner(&[9; 16]), Owner::Me);
        // The resolver drops it: the mark goes with it; when it comes back it is a peer again.
        peers.set_resolved(&strings(&["10.0.0.1:4317"]));
        assert!(peers.set_resolved(&strings(&["10.0.0.1:4317", "10.0.0.2:4317"])));
        assert!(peers.view().has_peers());
    }
}
