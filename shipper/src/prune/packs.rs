//! Which packs stay, which go, and which index objects are rewritten, in
//! memory that follows the number of packs and index objects, not of
//! chunks: the kept points' references and the index entries are joined
//! by an external sort ([`Census`]), and index objects are read and
//! rewritten one at a time.
//!
//! Only index objects that list a doomed pack, or are small, are
//! rewritten (small ones are merged, so the index does not grow into
//! thousands of one-window objects); the others stay as they are.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::PruneOptions;
use crate::error::{Result, ShipError};
use crate::index::census::Census;
use crate::repo::manifest;
use crate::repo::pack::{pack_id, PackEntries, PackEntry};
use crate::repo::Repo;

/// Entries per index object prune writes (about 6 MB sealed).
const ENTRIES_PER_OBJECT: usize = 65_536;
/// Index objects smaller than this are merged into new ones.
const SMALL_OBJECT: u64 = 1 << 20;
/// Packs no index lists (a crashed shipper's) are kept at least this long.
const UNINDEXED_GRACE: Duration = Duration::from_secs(86_400);

/// Which packs stay and which go.
pub(super) struct PackPlan {
    /// Indexed packs that stay.
    pub kept: u64,
    /// Packs to delete: key and size.
    pub doomed: Vec<(String, u64)>,
    /// Index objects to replace by new ones without the doomed packs.
    pub replace: Vec<String>,
    doomed_ids: HashSet<[u8; 32]>,
}

/// Plans the packs: those holding a chunk a kept point references stay;
/// others go unless younger than `pack_grace` (or, unindexed, younger
/// than a day). `census` holds the kept points' references. Index
/// objects are listed here, after the points were read: a point
/// published meanwhile has its chunks in index objects written before it.
pub(super) async fn plan(repo: &Repo, opts: &PruneOptions, mut census: Census) -> Result<PackPlan> {
    let listed = repo.list("index").await?;
    let keys: Vec<String> = listed.iter().map(|(k, _)| k.clone()).collect();
    let mut packs_of: Vec<Vec<[u8; 32]>> = vec![Vec::new(); keys.len()];
    repo.each_index_object(&keys, |i, entries| {
        // Distinct packs only (an object lists a pack's entries together).
        let mut ps: Vec<[u8; 32]> = Vec::new();
        for (_, l) in &entries {
            if ps.last() != Some(&l.pack) {
                ps.push(l.pack);
            }
        }
        ps.sort_unstable();
        ps.dedup();
        ps.shrink_to_fit();
        packs_of[i] = ps;
        census.entries(entries)
    })
    .await?;
    let mut needed: HashSet<[u8; 32]> = HashSet::new();
    let mut unindexed = None;
    census.join(|g| {
        if g.references.is_empty() {
            return Ok(());
        }
        if g.copies.is_empty() && unindexed.is_none() {
            unindexed = Some((g.id, g.references[0]));
        }
        // Every copy stays: a shipper's index may name any of them.
        needed.extend(g.copies.iter().map(|l| l.pack));
        Ok(())
    })?;
    if let Some((id, r)) = unindexed {
        return Err(ShipError::corrupt(
            manifest::point_key(&r.disk, r.seq),
            format!(
                "chunk {} (chunk {}) is in no index object; prune stopped before deleting any pack or index object (run `hrl-shipper check`)",
                hex::encode(id),
                r.chunk
            ),
        ));
    }
    let indexed: HashSet<[u8; 32]> = packs_of.iter().flatten().copied().collect();
    let mut doomed: Vec<(String, u64)> = Vec::new();
    let mut doomed_ids: HashSet<[u8; 32]> = HashSet::new();
    for (key, size, age) in repo.list_with_age("packs").await? {
        // A name that is no pack's is left alone.
        let Some(id) = pack_id(&key) else { continue };
        let is_indexed = indexed.contains(&id);
        if needed.contains(&id) || age < opts.pack_grace || (!is_indexed && age < UNINDEXED_GRACE) {
            continue;
        }
        if is_indexed {
            doomed_ids.insert(id);
        }
        doomed.push((key, size));
    }
    let drops = |i: usize| packs_of[i].iter().any(|p| doomed_ids.contains(p));
    let mut replace: Vec<usize> = (0..keys.len())
        .filter(|&i| drops(i) || listed[i].1 < SMALL_OBJECT)
        .collect();
    // A lone object with nothing to drop is left as it is.
    if replace.len() == 1 && !drops(replace[0]) {
        replace.clear();
    }
    Ok(PackPlan {
        kept: (indexed.len() - doomed_ids.len()) as u64,
        doomed,
        replace: replace.into_iter().map(|i| keys[i].clone()).collect(),
        doomed_ids,
    })
}

impl PackPlan {
    /// Writes the entries of the objects to replace, without the doomed
    /// packs', as new index objects (durable before anything is deleted);
    /// returns their keys.
    pub(super) async fn rewrite_index(&self, repo: &Repo) -> Result<Vec<String>> {
        let mut written = Vec::new();
        let mut batch: BTreeMap<[u8; 32], Vec<PackEntry>> = BTreeMap::new();
        let mut in_batch = 0usize;
        for key in &self.replace {
            for (id, l) in repo.load_index_object(key).await? {
                if self.doomed_ids.contains(&l.pack) {
                    continue;
                }
                batch.entry(l.pack).or_default().push((id, l.offset, l.len));
                in_batch += 1;
            }
            if in_batch >= ENTRIES_PER_OBJECT {
                written.push(write(repo, std::mem::take(&mut batch)).await?);
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            written.push(write(repo, batch).await?);
        }
        Ok(written)
    }
}

/// One index object of `batch`, entries in pack and offset order.
async fn write(repo: &Repo, batch: BTreeMap<[u8; 32], Vec<PackEntry>>) -> Result<String> {
    let packs: Vec<PackEntries> = batch
        .into_iter()
        .map(|(p, mut es)| {
            es.sort_by_key(|e| e.1);
            es.dedup();
            (p, es)
        })
        .collect();
    repo.write_index(&packs).await
}
