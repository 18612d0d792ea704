//! The ring fixture (`tests/fixtures/ring_vectors.json`, loaded by `src/routing/ring.rs`'s unit
//! tests) is the output of `tests/fixtures/ring_vectors.py`, an implementation of the Collector's
//! ring in Python that first checks itself against the Collector's published test vectors. This
//! re-runs it, so the committed fixture cannot drift from, or stand in for, that oracle.

use std::process::Command;

#[test]
fn the_ring_fixture_is_what_the_independent_python_ring_prints() {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("python3")
        .arg(format!("{root}/tests/fixtures/ring_vectors.py"))
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 runs tests/fixtures/ring_vectors.py ({e}); install it: apt-get install -y python3")
        });
    assert!(
        output.status.success(),
        "ring_vectors.py failed (it checks itself against the Collector's vectors first):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let committed = std::fs::read_to_string(format!("{root}/tests/fixtures/ring_vectors.json"))
        .expect("read tests/fixtures/ring_vectors.json");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim_end(),
        committed.trim_end(),
        "regenerate: python3 tests/fixtures/ring_vectors.py > tests/fixtures/ring_vectors.json"
    );
}
