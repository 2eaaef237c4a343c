//! `check`: every chunk a point references is indexed in an existing pack;
//! with `read_data`, every indexed chunk decrypts and hashes to its id.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::error::{Result, ShipError};
use crate::index::census::{Census, Group, Reference};
use crate::repo::crypto::ChunkId;
use crate::repo::manifest::{self, ChunkRef};
use crate::repo::pack::pack_id;
use crate::repo::{pack_key, Location, Repo};

/// A problem `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub object: String,
    pub what: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct CheckReport {
    pub points: u64,
    pub referenced_chunks: u64,
    pub packs: u64,
    pub chunks_read: u64,
    /// Chunks stored more than once (index entries beyond the first for
    /// one chunk id): two shippers stored the same new chunk before either
    /// saw the other's index object. Wasted space, never wrong.
    pub duplicate_chunks: u64,
    /// Stored bytes of those extra copies.
    pub duplicate_bytes: u64,
    pub problems: Vec<Problem>,
}

/// Checks that every chunk a point references is indexed in an existing
/// pack; with `read_data`, also that every indexed chunk decrypts and
/// hashes to its id. Memory does not follow the repository's size: the
/// points' references and the index entries are joined by an external
/// sort in the temporary directory (`TMPDIR`; about 80 bytes per index
/// entry and per reference), and the packs are verified one index object
/// at a time.
pub async fn check(repo: &Repo, read_data: bool) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    // Ids, not names: 32 bytes a pack instead of about 100.
    let packs: HashSet<[u8; 32]> = repo
        .list("packs")
        .await?
        .into_iter()
        .filter_map(|(k, _)| pack_id(&k))
        .collect();
    r.packs = packs.len() as u64;
    let mut census = Census::new(&std::env::temp_dir())?;
    for disk in manifest::list_disks(repo).await? {
        for seq in manifest::list_points(repo, &disk).await? {
            r.points += 1;
            match manifest::load(repo, &disk, seq).await {
                Err(e) => r.problems.push(Problem {
                    object: manifest::point_key(&disk, seq),
                    what: e.to_string(),
                }),
                Ok((_, map)) => {
                    for (chunk, c) in map {
                        if let ChunkRef::Stored(id) = c {
                            r.referenced_chunks += 1;
                            census.reference(id, Reference { disk, seq, chunk })?;
                        }
                    }
                }
            }
        }
    }
    // Listed after the points: a point published meanwhile has its chunks
    // in index objects written before it.
    let index_keys: Vec<String> = repo.list("index").await?.into_iter().map(|(k, _)| k).collect();
    repo.each_index_object(&index_keys, |_, entries| census.entries(entries))
        .await?;
    census.join(|g| {
        judge(g, &packs, &mut r);
        Ok(())
    })?;
    if read_data {
        let mut verified: HashSet<[u8; 32]> = HashSet::new();
        for key in &index_keys {
            let mut by_pack: BTreeMap<[u8; 32], Vec<(ChunkId, Location)>> = BTreeMap::new();
            for (id, l) in repo.load_index_object(key).await? {
                by_pack.entry(l.pack).or_default().push((id, l));
            }
            for (pack, items) in by_pack {
                if packs.contains(&pack) && verified.insert(pack) {
                    verify_pack(repo, pack, items, &mut r).await;
                }
            }
        }
    }
    Ok(r)
}

/// Counts a chunk's extra copies; a reference to a chunk in no index, or
/// whose every copy's pack is gone, is a problem.
fn judge(g: Group, packs: &HashSet<[u8; 32]>, r: &mut CheckReport) {
    if let Some(extra) = g.copies.get(1..) {
        r.duplicate_chunks += extra.len() as u64;
        r.duplicate_bytes += extra.iter().map(|l| l.len as u64).sum::<u64>();
    }
    if g.copies.iter().any(|l| packs.contains(&l.pack)) {
        return;
    }
    for x in g.references {
        r.problems.push(match g.copies.first() {
            None => Problem {
                object: manifest::point_key(&x.disk, x.seq),
                what: format!("chunk {} (chunk {}) is in no index", hex::encode(g.id), x.chunk),
            },
            Some(l) => Problem {
                object: pack_key(&l.pack),
                what: format!("missing; chunk {} lives there", hex::encode(g.id)),
            },
        });
    }
}

/// Reads one pack and verifies its trailer and the chunks `items` say it
/// holds.
async fn verify_pack(repo: &Repo, pack: [u8; 32], items: Vec<(ChunkId, Location)>, r: &mut CheckReport) {
    let key = pack_key(&pack);
    let bytes = match repo.get(&key).await {
        Ok(b) => b,
        Err(e) => {
            r.problems.push(Problem {
                object: key.clone(),
                what: e.to_string(),
            });
            return;
        }
    };
    if let Err(e) = crate::repo::pack::read_trailer(&repo.keys, &key, &pack, &bytes) {
        r.problems.push(Problem {
            object: key.clone(),
            what: e.to_string(),
        });
    }
    for (id, l) in items {
        r.chunks_read += 1;
        let blob = bytes.get(l.offset as usize..(l.offset + l.len as u64) as usize);
        let res = match blob {
            None => Err(ShipError::corrupt(
                format!("chunk {}", hex::encode(id)),
                "outside its pack",
            )),
            Some(b) => repo.keys.open_chunk(&id, b).map(|_| ()),
        };
        if let Err(e) = res {
            r.problems.push(Problem {
                object: key.clone(),
                what: format!("{e} (pack offset {})", l.offset),
            });
        }
    }
}
