//! The consistent-hash ring that picks the sampler owning a trace: the Collector's, bit for bit.
//!
//! A fleet that mixes Collector `loadbalancing` exporters with tailgate balancers must route every
//! trace to the same sampler, so this follows the Collector's `consistent_hashing.go` exactly
//! (our own code, checked against `tests/fixtures/ring_vectors.json`, which an independent Python
//! implementation produces, and against the literal vectors in the Collector's own tests):
//!
//! - the ring has [`MAX_POSITIONS`] (36000) positions;
//! - each endpoint gets [`POINTS_PER_ENDPOINT`] (100) points, point `i` at
//!   `crc32_ieee(endpoint bytes ‖ byte(i)) % 36000`;
//! - endpoints are processed in sorted order and the first to claim a position keeps it;
//! - an identifier goes to the first point at or after `crc32_ieee(identifier) % 36000`, wrapping
//!   to the first point past the end.
//!
//! The endpoint strings hashed are the resolver's output as is (see `resolver`): a static
//! hostname exactly as configured, a DNS answer as `ip` or `ip:port`. Two balancers agree only if
//! they hash the same strings, so nothing here normalises them beyond sorting and dropping
//! duplicates (which the Collector's first-claim rule makes a no-op anyway).
//!
//! The ring is immutable: a new endpoint set builds a new ring.

use serde::Deserialize;

/// Positions on the ring ("360 degrees with two decimal places" in the Collector).
pub const MAX_POSITIONS: u32 = 36_000;

/// Points each endpoint places on the ring.
pub const POINTS_PER_ENDPOINT: usize = 100;

/// Where `identifier` falls on the ring: `crc32_ieee(identifier) % 36000`.
pub fn position_of(identifier: &[u8]) -> u32 {
    crc32fast::hash(identifier) % MAX_POSITIONS
}

/// The endpoints' points on the ring, and the lookup from an identifier to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ring {
    /// Sorted, without duplicates.
    endpoints: Vec<String>,
    /// Sorted by position; each position appears once. The endpoint is an index into `endpoints`.
    points: Vec<Point>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    position: u32,
    endpoint: u32,
}

impl Ring {
    /// Builds the ring for `endpoints` (in any order; duplicates are ignored).
    pub fn new(endpoints: &[String]) -> Ring {
        Self::with_points_per_endpoint(endpoints, POINTS_PER_ENDPOINT)
    }

    /// The Collector's tests build rings with fewer points; so do ours.
    fn with_points_per_endpoint(endpoints: &[String], points_per_endpoint: usize) -> Ring {
        let mut endpoints = endpoints.to_vec();
        endpoints.sort();
        endpoints.dedup();

        // One slot per position: "claimed" doubles as the first-claim-wins check.
        let mut owner_at: Vec<Option<u32>> = vec![None; MAX_POSITIONS as usize];
        for (index, endpoint) in endpoints.iter().enumerate() {
            for i in 0..points_per_endpoint {
                // The Collector writes `byte(i)`: the point number truncated to one byte.
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(endpoint.as_bytes());
                hasher.update(&[i as u8]);
                let position = hasher.finalize() % MAX_POSITIONS;
                let slot = &mut owner_at[position as usize];
                if slot.is_none() {
                    *slot = Some(index as u32);
                }
            }
        }
        let points = owner_at
            .iter()
            .enumerate()
            .filter_map(|(position, owner)| {
                owner.map(|endpoint| Point {
                    position: position as u32,
                    endpoint,
                })
            })
            .collect();
        Ring { endpoints, points }
    }

    /// The endpoint that owns `identifier` (the 16 trace ID bytes for `routing_key: traceID`, the
    /// `service.name` string's bytes for `routing_key: service`); `None` when the ring is empty.
    pub fn endpoint_for(&self, identifier: &[u8]) -> Option<&str> {
        let index = successor(&self.points, position_of(identifier))?;
        Some(&self.endpoints[self.points[index].endpoint as usize])
    }

    /// The index (into [`Ring::endpoints`]) of the endpoint that owns `identifier`.
    pub fn owner_index(&self, identifier: &[u8]) -> Option<usize> {
        self.owner_index_at(position_of(identifier))
    }

    /// The index of the endpoint owning ring position `position` (`crc32 % 36000` of an
    /// identifier, as [`position_of`] computes it).
    pub fn owner_index_at(&self, position: u32) -> Option<usize> {
        let index = successor(&self.points, position)?;
        Some(self.points[index].endpoint as usize)
    }

    /// The index of `endpoint` in [`Ring::endpoints`], if it is on the ring.
    pub fn index_of(&self, endpoint: &str) -> Option<usize> {
        self.endpoints
            .binary_search_by(|e| e.as_str().cmp(endpoint))
            .ok()
    }

    /// The endpoints on the ring, sorted, without duplicates.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// True when there is no endpoint to route to.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Every point as `(position, endpoint)`, in position order.
    pub fn points(&self) -> impl Iterator<Item = (u32, &str)> + '_ {
        self.points.iter().map(|point| {
            (
                point.position,
                self.endpoints[point.endpoint as usize].as_str(),
            )
        })
    }
}

/// Index of the first point at or after `position`, wrapping to the first point; `None` if there
/// are no points.
fn successor(points: &[Point], position: u32) -> Option<usize> {
    if points.is_empty() {
        return None;
    }
    let index = points.partition_point(|point| point.position < position);
    Some(if index == points.len() { 0 } else { index })
}

/// `routing_key`: what identifies the unit that must land on one sampler.
///
/// The Collector also has `attributes`, `randomness` (traces), `resource`, `metric` and
/// `streamID` (metrics); tailgate routes traces by trace ID or service only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum RoutingKey {
    /// `traceID` (the default): identifier = the 16 trace ID bytes.
    #[default]
    #[serde(rename = "traceID")]
    TraceId,
    /// `service`: identifier = the `service.name` resource attribute's string value.
    ///
    /// The Collector hashed the bare value until
    /// open-telemetry/opentelemetry-collector-contrib#46420 (merged 2026) made service routing
    /// an attribute key, hashing `service.name=<value>|`. tailgate hashes the bare value, as the
    /// Collector versions deployed today do.
    #[serde(rename = "service")]
    Service,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn hex_decode(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[derive(Deserialize)]
    struct Vectors {
        max_positions: u32,
        points_per_endpoint: usize,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        endpoints: Vec<String>,
        /// `[position, index into the sorted endpoints]`.
        ring: Vec<(u32, usize)>,
        placements: Vec<Placement>,
    }

    #[derive(Deserialize)]
    struct Placement {
        identifier_hex: String,
        position: u32,
        endpoint: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("../../tests/fixtures/ring_vectors.json"))
            .expect("ring_vectors.json parses")
    }

    #[test]
    fn the_ring_has_the_points_the_reference_implementation_computes() {
        let vectors = vectors();
        assert_eq!(vectors.max_positions, MAX_POSITIONS);
        assert_eq!(vectors.points_per_endpoint, POINTS_PER_ENDPOINT);
        for case in &vectors.cases {
            let ring = Ring::new(&case.endpoints);
            let mut sorted = case.endpoints.clone();
            sorted.sort();
            assert_eq!(ring.endpoints(), sorted.as_slice(), "{}", case.name);
            let want: Vec<(u32, &str)> = case
                .ring
                .iter()
                .map(|&(position, index)| (position, sorted[index].as_str()))
                .collect();
            let got: Vec<(u32, &str)> = ring.points().collect();
            assert_eq!(got, want, "{}", case.name);
        }
    }

    #[test]
    fn every_identifier_goes_where_the_reference_implementation_puts_it() {
        let mut checked = 0;
        for case in vectors().cases {
            let ring = Ring::new(&case.endpoints);
            for placement in &case.placements {
                let identifier = hex_decode(&placement.identifier_hex);
                assert_eq!(
                    position_of(&identifier),
                    placement.position,
                    "{}: {}",
                    case.name,
                    placement.identifier_hex
                );
                assert_eq!(
                    ring.endpoint_for(&identifier),
                    Some(placement.endpoint.as_str()),
                    "{}: {}",
                    case.name,
                    placement.identifier_hex
                );
                checked += 1;
            }
        }
        assert!(checked >= 200, "only {checked} placements checked");
    }

    #[test]
    fn a_colliding_point_stays_with_the_endpoint_that_sorts_first() {
        // The three-sampler fixture has 299 points, not 300: one position is claimed twice.
        let case = vectors()
            .cases
            .into_iter()
            .find(|c| c.name == "three samplers")
            .unwrap();
        let ring = Ring::new(&case.endpoints);
        assert_eq!(ring.points().count(), 299);

        let mut claims: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for endpoint in ring.endpoints() {
            for i in 0..POINTS_PER_ENDPOINT {
                let mut bytes = endpoint.as_bytes().to_vec();
                bytes.push(i as u8);
                claims
                    .entry(position_of(&bytes))
                    .or_default()
                    .push(endpoint);
            }
        }
        let contested: Vec<_> = claims.iter().filter(|(_, c)| c.len() > 1).collect();
        assert!(!contested.is_empty());
        for (position, claimants) in contested {
            let owner = ring
                .points()
                .find(|(p, _)| p == position)
                .map(|(_, e)| e)
                .unwrap();
            assert_eq!(owner, claimants[0], "position {position}");
        }
    }

    #[test]
    fn the_collectors_own_position_vectors_hold() {
        // consistent_hashing_test.go, TestPositionsForEndpoints (5 points per endpoint).
        let one = Ring::with_points_per_endpoint(&strings(&["endpoint-1"]), 5);
        assert_eq!(
            one.points().collect::<Vec<_>>(),
            [1401, 4175, 14133, 17836, 21667].map(|p| (p, "endpoint-1"))
        );
        let duplicated = Ring::with_points_per_endpoint(&strings(&["endpoint-1", "endpoint-1"]), 5);
        assert_eq!(duplicated, one);
        let two = Ring::with_points_per_endpoint(&strings(&["endpoint-1", "endpoint-2"]), 5);
        assert_eq!(
            two.points().collect::<Vec<_>>(),
            vec![
                (1401, "endpoint-1"),
                (4175, "endpoint-1"),
                (10240, "endpoint-2"),
                (14133, "endpoint-1"),
                (15002, "endpoint-2"),
                (17836, "endpoint-1"),
                (21263, "endpoint-2"),
                (21667, "endpoint-1"),
                (26806, "endpoint-2"),
                (27020, "endpoint-2"),
            ]
        );
    }

    #[test]
    fn the_collectors_own_placement_vectors_hold() {
        // consistent_hashing_test.go, TestNewHashRing and TestEndpointFor.
        let ring = Ring::new(&strings(&["endpoint-1", "endpoint-2"]));
        assert_eq!(ring.points().count(), 2 * POINTS_PER_ENDPOINT);
        for (identifier, want) in [
            (&[1u8, 2, 0, 0][..], "endpoint-1"),
            (&[128, 128, 0, 0][..], "endpoint-2"),
            (b"ad-service-7", "endpoint-1"),
            (b"get-recommendations-1", "endpoint-2"),
        ] {
            assert_eq!(ring.endpoint_for(identifier), Some(want), "{identifier:?}");
        }
    }

    #[test]
    fn lookup_finds_the_next_point_and_wraps_like_the_collectors_search() {
        // consistent_hashing_test.go, TestBinarySearch.
        let points: Vec<Point> = [14, 25, 33, 47, 56, 121, 134, 158, 240, 270, 350]
            .iter()
            .map(|&position| Point {
                position,
                endpoint: 0,
            })
            .collect();
        for (requested, want) in [(85, 121), (14, 14), (351, 14), (270, 270), (271, 350)] {
            let index = successor(&points, requested).unwrap();
            assert_eq!(points[index].position, want, "requested {requested}");
        }
        assert_eq!(successor(&[], 10), None);
    }

    #[test]
    fn owner_indexes_agree_with_owner_names() {
        let endpoints = strings(&["10.0.0.3:4317", "10.0.0.1:4317", "10.0.0.2:4317"]);
        let ring = Ring::new(&endpoints);
        for t in 0u32..2000 {
            let id = t.to_be_bytes();
            let name = ring.endpoint_for(&id).unwrap();
            let index = ring.owner_index(&id).unwrap();
            assert_eq!(ring.endpoints()[index], name);
            assert_eq!(ring.index_of(name), Some(index));
            assert_eq!(ring.owner_index_at(position_of(&id)), Some(index));
        }
        assert_eq!(ring.index_of("10.0.0.9:4317"), None);
    }

    #[test]
    fn an_empty_ring_routes_nowhere() {
        let ring = Ring::new(&[]);
        assert!(ring.is_empty());
        assert_eq!(ring.endpoint_for(b"anything"), None);
        // And one endpoint is not empty (a mutant answering `true` always was not caught).
        let one = Ring::new(&strings(&["endpoint-1"]));
        assert!(!one.is_empty());
        assert_eq!(one.endpoint_for(b"anything"), Some("endpoint-1"));
    }

    #[test]
    fn endpoint_order_and_duplicates_do_not_change_the_ring() {
        let a = Ring::new(&strings(&[
            "127.0.0.2:4317",
            "127.0.0.1:4317",
            "127.0.0.3:4317",
        ]));
        let b = Ring::new(&strings(&[
            "127.0.0.3:4317",
            "127.0.0.1:4317",
            "127.0.0.2:4317",
            "127.0.0.1:4317",
        ]));
        assert_eq!(a, b);
    }

    /// 10,000 well-spread 16-byte trace IDs (splitmix64; any fixed sequence will do).
    fn trace_ids() -> impl Iterator<Item = [u8; 16]> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..10_000).map(move |_| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&next().to_le_bytes());
            id[8..].copy_from_slice(&next().to_le_bytes());
            id
        })
    }

    #[test]
    fn adding_a_fourth_sampler_moves_about_a_quarter_of_traces_and_only_to_it() {
        let three = Ring::new(&strings(&[
            "127.0.0.1:4317",
            "127.0.0.2:4317",
            "127.0.0.3:4317",
        ]));
        let four = Ring::new(&strings(&[
            "127.0.0.1:4317",
            "127.0.0.2:4317",
            "127.0.0.3:4317",
            "127.0.0.4:4317",
        ]));
        let mut moved = 0;
        let mut total = 0;
        for id in trace_ids() {
            total += 1;
            let before = three.endpoint_for(&id).unwrap();
            let after = four.endpoint_for(&id).unwrap();
            if before != after {
                moved += 1;
                // The new endpoint sorts last, so it wins no contested position from the others:
                // the old points are all still there and a trace can only move to a new point.
                assert_eq!(after, "127.0.0.4:4317");
            }
        }
        let fraction = moved as f64 / total as f64;
        assert!(
            (0.15..0.35).contains(&fraction),
            "{moved} of {total} traces moved ({fraction:.3})"
        );
    }

    #[test]
    fn removing_the_last_sorted_sampler_moves_only_its_traces() {
        let four = Ring::new(&strings(&["a:4317", "b:4317", "c:4317", "d:4317"]));
        let three = Ring::new(&strings(&["a:4317", "b:4317", "c:4317"]));
        let mut moved = 0;
        for id in trace_ids() {
            let before = four.endpoint_for(&id).unwrap();
            if before == "d:4317" {
                moved += 1;
            } else {
                // "d" sorts last, so it won no contested position: every other point survives
                // its removal and no trace moves between the remaining samplers.
                assert_eq!(three.endpoint_for(&id), Some(before));
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn routing_keys_parse_as_the_collector_spells_them() {
        let key: RoutingKey = serde_yaml::from_str("traceID").unwrap();
        assert_eq!(key, RoutingKey::TraceId);
        let key: RoutingKey = serde_yaml::from_str("service").unwrap();
        assert_eq!(key, RoutingKey::Service);
        assert!(serde_yaml::from_str::<RoutingKey>("traceid").is_err());
        assert_eq!(RoutingKey::default(), RoutingKey::TraceId);
    }
}
