//! Tuple-space-search classifier: one hash subtable per distinct mask,
//! subtables visited in order of their highest priority, stopping early
//! once no remaining subtable can beat the best match found.
//!
//! PLACEHOLDER: linear implementation with the final API; replaced by the
//! tuple-space version.

use crate::flow_match::Match;
use crate::key::FlowKey;

/// A set of `(match, priority) -> T` rules answering "highest-priority rule
/// matching this key".
#[derive(Clone, Debug)]
pub struct Classifier<T> {
    rules: Vec<(Match, u16, T)>,
}

impl<T> Default for Classifier<T> {
    fn default() -> Self {
        Classifier { rules: Vec::new() }
    }
}

impl<T> Classifier<T> {
    /// An empty classifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a rule; replaces and returns the value of a rule with the
    /// identical match and priority.
    pub fn insert(&mut self, m: Match, priority: u16, value: T) -> Option<T> {
        for r in &mut self.rules {
            if r.0 == m && r.1 == priority {
                return Some(std::mem::replace(&mut r.2, value));
            }
        }
        self.rules.push((m, priority, value));
        None
    }

    /// Removes the rule with exactly this match and priority.
    pub fn remove(&mut self, m: &Match, priority: u16) -> Option<T> {
        let i = self
            .rules
            .iter()
            .position(|r| r.0 == *m && r.1 == priority)?;
        Some(self.rules.swap_remove(i).2)
    }

    /// The rule with exactly this match and priority.
    pub fn get(&self, m: &Match, priority: u16) -> Option<&T> {
        self.rules
            .iter()
            .find(|r| r.0 == *m && r.1 == priority)
            .map(|r| &r.2)
    }

    /// The highest-priority rule matching `key`. Among rules of equal
    /// priority that overlap, which one wins is unspecified (as in OpenFlow).
    pub fn lookup(&self, key: &FlowKey) -> Option<&T> {
        self.rules
            .iter()
            .filter(|r| r.0.matches(key))
            .max_by_key(|r| r.1)
            .map(|r| &r.2)
    }

    /// All rules, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Match, u16, &T)> {
        self.rules.iter().map(|r| (&r.0, r.1, &r.2))
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True if there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Removes every rule for which `keep` returns false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Match, u16, &T) -> bool) {
        self.rules.retain(|r| keep(&r.0, r.1, &r.2));
    }
}
