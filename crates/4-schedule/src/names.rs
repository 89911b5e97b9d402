//! Interned names: the index stores a 4-byte id per recipient domain,
//! destination and route instead of a string, so a million queued recipients
//! cost a few dozen bytes each however long their domains are.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Maps names to small ids and back, with a reference count per name so that
/// a domain nobody refers to any more is forgotten (a week of per-domain
/// traffic must not grow the table for ever). Ids of forgotten names are
/// reused.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// Name → id.
    ids: HashMap<Arc<str>, u32>,
    /// Id → name and reference count; `None` for a free id.
    names: Vec<Option<(Arc<str>, u32)>>,
    /// Ids free for reuse.
    free: Vec<u32>,
}

impl Interner {
    /// The id of `name`, adding it if needed, and counts one more reference.
    pub(crate) fn acquire(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            if let Some(Some((_, refs))) = self.names.get_mut(id as usize) {
                *refs += 1;
            }
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = Some((name.clone(), 1));
                id
            }
            None => {
                self.names.push(Some((name.clone(), 1)));
                (self.names.len() - 1) as u32
            }
        };
        self.ids.insert(name, id);
        id
    }

    /// Drops one reference; the name is forgotten when none is left.
    pub(crate) fn release(&mut self, id: u32) {
        let Some(slot) = self.names.get_mut(id as usize) else {
            return;
        };
        let forget = match slot {
            Some((_, refs)) => {
                *refs = refs.saturating_sub(1);
                *refs == 0
            }
            None => false,
        };
        if forget && let Some((name, _)) = slot.take() {
            self.ids.remove(&name);
            self.free.push(id);
        }
    }

    /// The id of `name`, if it is known.
    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The name of `id` (empty for an unknown id).
    pub(crate) fn name(&self, id: u32) -> &str {
        match self.names.get(id as usize) {
            Some(Some((n, _))) => n,
            _ => "",
        }
    }

    /// Every known name with its id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|(n, _)| (i as u32, &**n)))
    }

    /// How many names are known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// A hasher for keys that are already well spread or come from us (message
/// ids, small tuples of ids): one multiply per word instead of SipHash's
/// rounds. The keys are never chosen by a remote party, so hash flooding is
/// not a concern.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Fold the high bits down: hashbrown takes its control byte from the
        // top 7 bits and its bucket from the low ones.
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// `HashMap` state using [`IdHasher`].
pub(crate) type IdBuild = BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounted_interning() {
        let mut i = Interner::default();
        let a = i.acquire("a.example");
        let b = i.acquire("b.example");
        assert_ne!(a, b);
        assert_eq!(i.acquire("a.example"), a);
        assert_eq!(i.name(a), "a.example");
        i.release(a);
        assert_eq!(i.get("a.example"), Some(a), "one reference left");
        i.release(a);
        assert_eq!(i.get("a.example"), None);
        assert_eq!(i.len(), 1);
        // The freed id is reused.
        assert_eq!(i.acquire("c.example"), a);
        assert_eq!(i.name(a), "c.example");
        i.release(999); // unknown ids are ignored
        assert_eq!(i.iter().count(), 2);
    }
}
