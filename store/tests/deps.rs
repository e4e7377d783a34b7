//! The store is a library a newcomer can read and test alone: nothing of HTTP, gRPC,
//! auth or an async runtime is in its dependency closure (read from Cargo.lock, so a new
//! dependency that pulls one in fails here, not in review).

use std::collections::{BTreeSet, HashMap};

#[test]
fn the_store_depends_on_no_transport_auth_or_runtime_crate() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("Cargo.lock at the workspace root");
    let lock: toml::Table = lock.parse().expect("Cargo.lock is TOML");
    let mut deps: HashMap<String, Vec<String>> = HashMap::new();
    for p in lock["package"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("name").to_owned();
        let list: Vec<String> = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|d| {
                d.iter()
                    // "name" or "name version" when several versions are locked.
                    .filter_map(|v| v.as_str()?.split(' ').next().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        deps.entry(name).or_default().extend(list);
    }
    let mut closure = BTreeSet::new();
    let mut todo = vec!["logstream-store".to_owned()];
    while let Some(n) = todo.pop() {
        if closure.insert(n.clone()) {
            todo.extend(deps.get(&n).cloned().unwrap_or_default());
        }
    }
    assert!(
        closure.contains("zstd"),
        "the closure was computed: {closure:?}"
    );
    for banned in ["axum", "tonic", "hyper", "jsonwebtoken", "tokio", "reqwest"] {
        assert!(
            !closure.contains(banned),
            "logstream-store depends on {banned} (through {closure:?})"
        );
    }
}
