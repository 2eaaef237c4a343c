//! Baseline for `scripts/bench.sh shipper`: uploads the non-zero 16 MiB
//! parts of a file as plain blobs, 4 at a time (the shipper's pack size and
//! upload concurrency), with no hashing, compression or encryption. The
//! ratio of hrl's ship speed to this is what the shipper's own work costs.
//!
//! Usage: raw_upload az://container/prefix FILE
//! Prints: bytes seconds

use futures::StreamExt;
use object_store::{path::Path as ObjPath, ObjectStoreExt, PutPayload};
use std::os::unix::fs::FileExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, file] = args.as_slice() else {
        return Err("usage: raw_upload URL FILE".into());
    };
    let (store, _) = hrl_shipper::repo::store_for(url)?;
    if let Some((container, _)) = hrl_shipper::repo::parse_az(url) {
        hrl_shipper::azure::create_container(&container).await?;
    }
    let f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    const PART: u64 = 16 << 20;
    let t0 = std::time::Instant::now();
    let parts = (0..len.div_ceil(PART)).map(|i| {
        let mut buf = vec![0u8; (len - i * PART).min(PART) as usize];
        let r = f.read_exact_at(&mut buf, i * PART).map(|_| buf);
        (i, r)
    });
    let mut ups = futures::stream::iter(parts.map(|(i, buf)| {
        let store = store.clone();
        async move {
            let buf = buf?;
            if buf.iter().all(|&b| b == 0) {
                return Ok::<u64, Box<dyn std::error::Error>>(0);
            }
            let n = buf.len() as u64;
            store
                .put(&ObjPath::from(format!("raw/{i:08}")), PutPayload::from(buf))
                .await?;
            Ok(n)
        }
    }))
    .buffer_unordered(4);
    let mut bytes = 0;
    while let Some(r) = ups.next().await {
        bytes += r?;
    }
    println!("{bytes} {:.3}", t0.elapsed().as_secs_f64());
    Ok(())
}
