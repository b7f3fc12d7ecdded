//! A small ordered set kept in one exactly-sized `Vec`.
//!
//! Frame states hold a few results, failures and lost marks each. A `BTreeSet` spends a
//! whole node (room for 11 elements, ~1.4 KB for a `Done`) on the first one; this set
//! spends the element alone. On the wire it is a sequence, like a `BTreeSet`: decoding
//! sorts and drops repeats, so any sequence a peer sends becomes a valid set.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SortedSet<T>(Vec<T>);

impl<T> Default for SortedSet<T> {
    fn default() -> Self {
        SortedSet(Vec::new())
    }
}

impl<T: Ord> SortedSet<T> {
    pub fn new() -> Self {
        SortedSet(Vec::new())
    }

    /// Adds `x`; returns whether it was new.
    pub fn insert(&mut self, x: T) -> bool {
        match self.0.binary_search(&x) {
            Ok(_) => false,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, x);
                true
            }
        }
    }

    pub fn contains(&self, x: &T) -> bool {
        self.0.binary_search(x).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Least first.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    pub fn first(&self) -> Option<&T> {
        self.0.first()
    }

    pub fn last(&self) -> Option<&T> {
        self.0.last()
    }

    pub fn pop_last(&mut self) -> Option<T> {
        self.0.pop()
    }
}

impl<T: Ord> From<[T; 1]> for SortedSet<T> {
    fn from([x]: [T; 1]) -> Self {
        SortedSet(vec![x])
    }
}

impl<T: Ord> FromIterator<T> for SortedSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
        let mut v: Vec<T> = it.into_iter().collect();
        v.sort();
        v.dedup();
        v.shrink_to_fit();
        SortedSet(v)
    }
}

impl<'a, T> IntoIterator for &'a SortedSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: Serialize> Serialize for SortedSet<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de> + Ord> Deserialize<'de> for SortedSet<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<T>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(ops in prop::collection::vec((any::<bool>(), 0u8..20), 0..60)) {
            let mut ours = SortedSet::new();
            let mut std = BTreeSet::new();
            for (insert, x) in ops {
                if insert {
                    prop_assert_eq!(ours.insert(x), std.insert(x));
                } else {
                    prop_assert_eq!(ours.pop_last(), std.pop_last());
                }
                prop_assert_eq!(ours.len(), std.len());
                prop_assert_eq!(ours.last(), std.last());
                prop_assert!(ours.iter().eq(std.iter()));
                prop_assert_eq!(ours.contains(&7), std.contains(&7));
            }
            // Same bytes on the wire as a BTreeSet; any sequence decodes to a set.
            let bytes = postcard::to_stdvec(&ours).unwrap();
            prop_assert_eq!(&bytes, &postcard::to_stdvec(&std).unwrap());
            let messy = postcard::to_stdvec(&vec![5u8, 1, 5, 3]).unwrap();
            let set: SortedSet<u8> = postcard::from_bytes(&messy).unwrap();
            prop_assert!(set.iter().eq([1u8, 3, 5].iter()));
        }
    }
}
