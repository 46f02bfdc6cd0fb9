//! [`Links`]: objects a storage reads from another root. A forked job reuses tasks of its
//! parent; their outputs stay where the parent wrote them (referenced, not copied), and the
//! forked job's storage reads them there.

use crate::Storage;
use std::collections::HashMap;
use std::fmt;

/// Which relative paths live under another root: `owner_of` names the task a path
/// belongs to (`surgery_core::layout::producer`), and `roots` holds, for each reused task,
/// the storage (the parent job's root) that holds its outputs.
#[derive(Clone)]
pub struct Links {
    owner_of: fn(&str) -> Option<String>,
    roots: HashMap<String, Storage>,
}

impl Links {
    pub fn new(owner_of: fn(&str) -> Option<String>, roots: HashMap<String, Storage>) -> Links {
        Links { owner_of, roots }
    }

    /// The storage that holds `path`, when it is a linked one.
    pub(crate) fn target(&self, path: &str) -> Option<&Storage> {
        self.roots.get(&(self.owner_of)(path)?)
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

impl fmt::Debug for Links {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut owners: Vec<&String> = self.roots.keys().collect();
        owners.sort();
        f.debug_struct("Links").field("tasks", &owners).finish()
    }
}
