//! `check`: every chunk a point references is indexed in an existing pack;
//! with `read_data`, every indexed chunk decrypts and hashes to its id.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::error::{Result, ShipError};
use crate::repo::crypto::ChunkId;
use crate::repo::manifest::{self, ChunkRef};
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

/// The repository's index, counting the chunks indexed more than once.
async fn load_counting_duplicates(repo: &Repo, r: &mut CheckReport) -> Result<HashMap<ChunkId, Location>> {
    let mut map: HashMap<ChunkId, Location> = HashMap::new();
    for (key, _) in repo.list("index").await? {
        for (id, loc) in repo.load_index_object(&key).await? {
            if map.insert(id, loc).is_some_and(|old| old != loc) {
                r.duplicate_chunks += 1;
                r.duplicate_bytes += loc.len as u64;
            }
        }
    }
    Ok(map)
}

/// Checks that every chunk a point references is indexed in an existing
/// pack; with `read_data`, also that every indexed chunk decrypts and
/// hashes to its id.
pub async fn check(repo: &Repo, read_data: bool) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let index = load_counting_duplicates(repo, &mut r).await?;
    let packs: HashMap<String, u64> = repo.list("packs").await?.into_iter().collect();
    r.packs = packs.len() as u64;
    for disk in manifest::list_disks(repo).await? {
        for seq in manifest::list_points(repo, &disk).await? {
            r.points += 1;
            match manifest::load(repo, &disk, seq).await {
                Err(e) => r.problems.push(Problem {
                    object: manifest::point_key(&disk, seq),
                    what: e.to_string(),
                }),
                Ok((_, map)) => {
                    for (idx, c) in map {
                        if let ChunkRef::Stored(id) = c {
                            r.referenced_chunks += 1;
                            match index.get(&id) {
                                None => r.problems.push(Problem {
                                    object: manifest::point_key(&disk, seq),
                                    what: format!("chunk {} (chunk {idx}) is in no index", hex::encode(id)),
                                }),
                                Some(l) if !packs.contains_key(&pack_key(&l.pack)) => r.problems.push(Problem {
                                    object: pack_key(&l.pack),
                                    what: format!("missing; chunk {} lives there", hex::encode(id)),
                                }),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
    }
    if read_data {
        let mut by_pack: BTreeMap<[u8; 32], Vec<(ChunkId, Location)>> = BTreeMap::new();
        for (id, l) in &index {
            by_pack.entry(l.pack).or_default().push((*id, *l));
        }
        for (pack, items) in by_pack {
            let key = pack_key(&pack);
            if !packs.contains_key(&key) {
                continue;
            }
            let bytes = match repo.get(&key).await {
                Ok(b) => b,
                Err(e) => {
                    r.problems.push(Problem {
                        object: key.clone(),
                        what: e.to_string(),
                    });
                    continue;
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
    }
    Ok(r)
}
