//! Callbacks: `send_with_callback` runs a closure with each record's result, on the shard thread
//! that resolved it (keep it short: count, log, hand off).
//!
//! ```text
//! cargo run --example callback
//! ```
//!
//! Uses `INLONG_MANAGER_URL` and `INLONG_GROUP_ID` (default `test_group`) when set; otherwise it
//! starts a local DataProxy + Manager in this process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inlong_dataproxy::{Producer, Record, StreamId};
use inlong_dataproxy_testkit::LocalCluster;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_local, manager_url) = match std::env::var("INLONG_MANAGER_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let cluster = LocalCluster::start(1)?;
            let url = cluster.manager_url();
            (Some(cluster), url)
        }
    };
    let group_id = std::env::var("INLONG_GROUP_ID").unwrap_or_else(|_| "test_group".to_owned());
    let producer = Producer::builder().group_id(group_id).manager_url(manager_url).build()?;

    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Build the stream ID once; cloning it per record is a reference-count increment.
    let stream = StreamId::from("test_stream");
    for i in 0..1000u64 {
        let record = Record::new(stream.clone(), format!("event {i}")).with_metadata(i);
        let (acked, failed) = (acked.clone(), failed.clone());
        producer.send_with_callback(record, move |result| match result {
            Ok(_report) => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("record {i} failed with code {}: {error}", error.code());
            }
        });
    }

    // Close waits for every pending record; by then every callback has run.
    producer.close_blocking(Duration::from_secs(10))?;
    let (acked, failed) = (acked.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("acked {acked}, failed {failed}");
    if failed > 0 {
        return Err(format!("{failed} record(s) failed").into());
    }
    Ok(())
}
