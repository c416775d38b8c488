//! Plain threads, no async: `send_blocking` waits for room in the queue, and
//! `DeliveryFuture::wait` blocks until the record is acknowledged or has failed.
//!
//! ```text
//! cargo run --example blocking
//! ```
//!
//! Uses `INLONG_MANAGER_URL` and `INLONG_GROUP_ID` (default `test_group`) when set; otherwise it
//! starts a local DataProxy + Manager in this process.

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
    // One producer for the whole process, shared by every thread.
    let producer =
        Arc::new(Producer::builder().group_id(group_id).manager_url(manager_url).build()?);

    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let producer = producer.clone();
            std::thread::spawn(move || -> Result<u64, inlong_dataproxy::Error> {
                let stream = StreamId::from(format!("stream-{worker}"));
                // Send a window of records first, then wait for each: the sends overlap on the
                // wire instead of paying one round trip per record.
                let futures = (0..100)
                    .map(|i| {
                        let record =
                            Record::new(stream.clone(), format!("worker {worker} line {i}"));
                        producer.send_blocking(record, Duration::from_secs(5))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut acked = 0;
                for future in futures {
                    future.wait()?;
                    acked += 1;
                }
                Ok(acked)
            })
        })
        .collect();

    let mut total = 0;
    for worker in workers {
        total += worker.join().map_err(|_| "a worker panicked")??;
    }
    producer.close_blocking(Duration::from_secs(10))?;
    println!("acked {total} records from 4 threads");
    Ok(())
}
