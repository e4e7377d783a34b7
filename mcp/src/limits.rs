//! Per-token counts (open sessions, running calls) held by guards.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// How many of something each key holds now.
#[derive(Default)]
pub struct Counter {
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One unit of a key's count, given back on drop.
pub struct Held {
    held: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Counter {
    /// Takes one unit for `key` unless it already holds `max`.
    pub fn try_take(&self, key: &str, max: usize) -> Option<Held> {
        let mut held = self.held.lock();
        let n = held.entry(key.to_owned()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held {
            held: self.held.clone(),
            key: key.to_owned(),
        })
    }

    /// What `key` holds now.
    #[cfg(test)]
    pub fn count(&self, key: &str) -> usize {
        self.held.lock().get(key).copied().unwrap_or(0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_max_and_units_come_back_on_drop() {
        let c = Counter::default();
        let a = c.try_take("t", 2).unwrap();
        let _b = c.try_take("t", 2).unwrap();
        assert!(c.try_take("t", 2).is_none());
        assert!(c.try_take("other", 2).is_some());
        drop(a);
        assert_eq!(c.count("t"), 1);
        let _c = c.try_take("t", 2).unwrap();
        assert_eq!(c.count("t"), 2);
    }

    #[test]
    fn an_empty_key_is_forgotten() {
        let c = Counter::default();
        drop(c.try_take("t", 1).unwrap());
        assert!(c.held.lock().is_empty());
    }
}
