//! The partitions this store replica owns, as the consumer group assigned them.

use std::collections::HashMap;

use parking_lot::RwLock;

/// Where an owned partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Assigned, still applying what the topic held before (its deployments answer
    /// `unavailable` until it is done).
    CatchingUp,
    /// Caught up: its deployments are served here.
    Serving,
}

/// Owned partitions by tenant and partition number.
#[derive(Default)]
pub struct Ownership {
    parts: RwLock<HashMap<(String, i32), PartitionState>>,
}

impl Ownership {
    pub fn state(&self, tenant: &str, partition: i32) -> Option<PartitionState> {
        self.parts
            .read()
            .get(&(tenant.to_owned(), partition))
            .copied()
    }

    pub fn set(&self, tenant: &str, partition: i32, state: PartitionState) {
        self.parts
            .write()
            .insert((tenant.to_owned(), partition), state);
    }

    pub fn remove(&self, tenant: &str, partition: i32) {
        self.parts.write().remove(&(tenant.to_owned(), partition));
    }

    /// Every owned partition of `tenant`, sorted, with its state.
    pub fn of(&self, tenant: &str) -> Vec<(i32, PartitionState)> {
        let mut v: Vec<_> = self
            .parts
            .read()
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, p), s)| (*p, *s))
            .collect();
        v.sort_by_key(|(p, _)| *p);
        v
    }

    /// Number of owned partitions.
    pub fn count(&self) -> usize {
        self.parts.read().len()
    }

    /// Owned partitions still catching up.
    pub fn catching_up(&self) -> Vec<(String, i32)> {
        self.parts
            .read()
            .iter()
            .filter(|(_, s)| **s == PartitionState::CatchingUp)
            .map(|(k, _)| k.clone())
            .collect()
    }
}
