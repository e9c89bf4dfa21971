//! Applies a stack of layers, in order, into one tree: OCI whiteouts (`.wh.NAME`) remove lower
//! entries, opaque markers (`.wh..wh..opq`) hide a lower directory's content, later entries
//! replace earlier ones, and hardlinks become members of a link group.
//!
//! Pure: no filesystem access. The checkout materialises the resulting [`Tree`].

use std::collections::BTreeMap;

use crate::layer::entry::{Entry, EntryKind, split_parent};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Why a stack of layers cannot be flattened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlattenError {
    #[error("layer {layer}: hardlink {path} points at {target}, which does not exist")]
    MissingLinkTarget {
        layer: usize,
        path: String,
        target: String,
    },
    #[error("layer {layer}: hardlink {path} points at directory {target}")]
    LinkToDirectory {
        layer: usize,
        path: String,
        target: String,
    },
    #[error("layer {layer}: the root directory cannot be a {kind}")]
    RootNotDirectory { layer: usize, kind: &'static str },
}

/// A node of the flattened tree.
#[derive(Clone, Debug)]
pub struct Node {
    /// The entry that defines this node (for hardlinks: the target's entry, renamed).
    pub entry: Entry,
    /// Index of the layer the entry comes from.
    pub layer: usize,
    /// Nodes with the same group are hardlinks of each other.
    pub link_group: Option<u32>,
    /// Children of a directory, by name.
    pub children: BTreeMap<Vec<u8>, Node>,
    /// Directory created only because a deeper entry needed it.
    pub implicit: bool,
}

/// The flattened image tree.
#[derive(Debug)]
pub struct Tree {
    pub root: Node,
    /// How many link groups exist.
    pub link_groups: u32,
}

fn implicit_dir(path: Vec<u8>, layer: usize) -> Node {
    Node {
        entry: Entry {
            path,
            kind: EntryKind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Default::default(),
            size: 0,
            link_target: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Default::default(),
            digest: None,
        },
        layer,
        link_group: None,
        children: BTreeMap::new(),
        implicit: true,
    }
}

impl Tree {
    fn new() -> Tree {
        Tree {
            root: implicit_dir(Vec::new(), 0),
            link_groups: 0,
        }
    }

    /// Walks to the node at `path` if it exists.
    pub fn get(&self, path: &[u8]) -> Option<&Node> {
        let mut node = &self.root;
        if path.is_empty() {
            return Some(node);
        }
        for comp in path.split(|&b| b == b'/') {
            node = node.children.get(comp)?;
        }
        Some(node)
    }

    fn get_mut(&mut self, path: &[u8]) -> Option<&mut Node> {
        let mut node = &mut self.root;
        if path.is_empty() {
            return Some(node);
        }
        for comp in path.split(|&b| b == b'/') {
            node = node.children.get_mut(comp)?;
        }
        Some(node)
    }

    /// The directory node at `path`, creating directories (and replacing non-directories, as
    /// an upper overlay layer does) on the way.
    fn dir_mut(&mut self, path: &[u8], layer: usize) -> &mut Node {
        let mut node = &mut self.root;
        let mut so_far: Vec<u8> = Vec::new();
        if path.is_empty() {
            return node;
        }
        for comp in path.split(|&b| b == b'/') {
            if !so_far.is_empty() {
                so_far.push(b'/');
            }
            so_far.extend_from_slice(comp);
            let child = node
                .children
                .entry(comp.to_vec())
                .or_insert_with(|| implicit_dir(so_far.clone(), layer));
            if child.entry.kind != EntryKind::Directory {
                *child = implicit_dir(so_far.clone(), layer);
            }
            node = child;
        }
        node
    }

    /// Total number of nodes, root included.
    pub fn len(&self) -> usize {
        fn count(n: &Node) -> usize {
            1 + n.children.values().map(count).sum::<usize>()
        }
        count(&self.root)
    }

    /// Never true: the root always exists.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Flattens layers (lowest first) into one tree.
pub fn flatten<'a>(layers: impl IntoIterator<Item = &'a [Entry]>) -> Result<Tree, FlattenError> {
    let mut tree = Tree::new();
    for (layer, entries) in layers.into_iter().enumerate() {
        // Whiteouts hide only lower layers, so apply them all before this layer's entries.
        for e in entries {
            let (parent, name) = split_parent(&e.path);
            if name == OPAQUE_MARKER {
                if let Some(dir) = tree.get_mut(parent)
                    && dir.entry.kind == EntryKind::Directory
                {
                    dir.children.clear();
                }
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                if hidden.starts_with(WHITEOUT_PREFIX) {
                    continue; // other AUFS metadata (.wh..wh.plnk etc.)
                }
                if let Some(dir) = tree.get_mut(parent) {
                    dir.children.remove(hidden);
                }
            }
        }
        for e in entries {
            let (parent, name) = split_parent(&e.path);
            if name.starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            if e.path.is_empty() {
                if e.kind != EntryKind::Directory {
                    return Err(FlattenError::RootNotDirectory {
                        layer,
                        kind: e.kind.name(),
                    });
                }
                tree.root.entry = e.clone();
                tree.root.implicit = false;
                continue;
            }
            let mut node = Node {
                entry: e.clone(),
                layer,
                link_group: None,
                children: BTreeMap::new(),
                implicit: false,
            };
            if e.kind == EntryKind::Hardlink {
                let shown = || String::from_utf8_lossy(&e.link_target).into_owned();
                let groups = tree.link_groups;
                let target = tree.get_mut(&e.link_target).ok_or_else(|| {
                    FlattenError::MissingLinkTarget {
                        layer,
                        path: e.display_path(),
                        target: shown(),
                    }
                })?;
                if target.entry.kind == EntryKind::Directory {
                    return Err(FlattenError::LinkToDirectory {
                        layer,
                        path: e.display_path(),
                        target: shown(),
                    });
                }
                let group = *target.link_group.get_or_insert(groups);
                let mut linked = target.entry.clone();
                linked.path = e.path.clone();
                node.entry = linked;
                node.link_group = Some(group);
                if group == groups {
                    tree.link_groups += 1;
                }
            }
            let dir = tree.dir_mut(parent, layer);
            match dir.children.get_mut(name) {
                // A directory entry over an existing directory updates its metadata and keeps
                // its content (tar semantics).
                Some(existing)
                    if existing.entry.kind == EntryKind::Directory
                        && node.entry.kind == EntryKind::Directory =>
                {
                    existing.entry = node.entry;
                    existing.layer = layer;
                    existing.implicit = false;
                }
                _ => {
                    dir.children.insert(name.to_vec(), node);
                }
            }
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        let mut e = implicit_dir(path.as_bytes().to_vec(), 0).entry;
        e.kind = kind;
        e
    }
    fn link(path: &str, target: &str) -> Entry {
        let mut e = entry(path, EntryKind::Hardlink);
        e.link_target = target.as_bytes().to_vec();
        e
    }
    fn paths(t: &Tree) -> Vec<String> {
        fn walk(n: &Node, out: &mut Vec<String>) {
            for c in n.children.values() {
                out.push(String::from_utf8_lossy(&c.entry.path).into_owned());
                walk(c, out);
            }
        }
        let mut v = Vec::new();
        walk(&t.root, &mut v);
        v
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let l0 = [
            entry("a", EntryKind::Directory),
            entry("a/x", EntryKind::Regular),
            entry("a/y", EntryKind::Regular),
            entry("b", EntryKind::Directory),
            entry("b/old", EntryKind::Regular),
            entry("c", EntryKind::Regular),
        ];
        let l1 = [
            entry("a/.wh.x", EntryKind::Regular),
            entry("b", EntryKind::Directory),
            entry("b/new", EntryKind::Regular),
            entry("b/.wh..wh..opq", EntryKind::Regular),
            entry(".wh.c", EntryKind::Regular),
        ];
        let t = flatten([&l0[..], &l1[..]]).unwrap();
        assert_eq!(paths(&t), vec!["a", "a/y", "b", "b/new"]);
    }

    #[test]
    fn replacing_and_implicit_parents() {
        let l0 = [
            entry("d", EntryKind::Symlink),
            entry("f", EntryKind::Directory),
            entry("f/in", EntryKind::Regular),
        ];
        let l1 = [
            entry("d/deep/file", EntryKind::Regular),
            entry("f", EntryKind::Regular),
        ];
        let t = flatten([&l0[..], &l1[..]]).unwrap();
        assert_eq!(paths(&t), vec!["d", "d/deep", "d/deep/file", "f"]);
        assert!(t.get(b"d").unwrap().implicit);
        assert_eq!(t.get(b"f").unwrap().entry.kind, EntryKind::Regular);
    }

    #[test]
    fn hardlinks_form_groups() {
        let l0 = [
            entry("a", EntryKind::Regular),
            link("b", "a"),
            link("c", "a"),
        ];
        let t = flatten([&l0[..]]).unwrap();
        let groups: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|p| t.get(p.as_bytes()).unwrap().link_group)
            .collect();
        assert_eq!(groups, vec![Some(0), Some(0), Some(0)]);
        assert_eq!(t.get(b"b").unwrap().entry.kind, EntryKind::Regular);
        assert_eq!(t.link_groups, 1);
    }

    #[test]
    fn bad_hardlinks() {
        let l0 = [link("b", "missing")];
        assert!(matches!(
            flatten([&l0[..]]),
            Err(FlattenError::MissingLinkTarget { .. })
        ));
        let l1 = [entry("d", EntryKind::Directory), link("b", "d")];
        assert!(matches!(
            flatten([&l1[..]]),
            Err(FlattenError::LinkToDirectory { .. })
        ));
    }
}
