//! The ship loop: follow each disk's spool and publish its points into the
//! repository, in order, once each.
//!
//! Within a point window the last `Data` of a chunk wins. A chunk whose id
//! the repository already holds is referenced, not uploaded. Memory holds
//! the packs being built and uploaded (at most a few `pack_size`) plus the
//! window's chunk map.
//!
//! Owns: promise 2 (publish last) and promise 6 for the shipper (a crash or
//! an endpoint failure loses nothing and publishes nothing broken). It
//! reads the spool and never touches a tracked device.

mod cursor;
mod disk;
pub mod journal;
mod known;
mod lease;
pub mod options;
mod publish;
pub mod run;
pub mod spool_lock;
pub mod status;

pub use cursor::{forget_disk, published_through};
pub use known::SharedIndex;
pub use options::{ShipOptions, Throttle};
pub use run::ship;
pub use status::ShipReport;

/// `f` over `items` on every core (scoped threads; order kept).
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if n <= 1 || items.len() < 4 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(n);
    std::thread::scope(|s| {
        let hs: Vec<_> = items
            .chunks(per)
            .map(|part| s.spawn(|| part.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
