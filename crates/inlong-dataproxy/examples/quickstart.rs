//! Quickstart: build a producer, send one record, await its delivery report.
//!
//! ```text
//! cargo run --example quickstart
//! INLONG_MANAGER_URL=http://manager:8083/inlong/manager/openapi/dataproxy/getIpList \
//!     INLONG_GROUP_ID=my_group cargo run --example quickstart
//! ```
//!
//! Without `INLONG_MANAGER_URL` it starts a local DataProxy + Manager in this process, so it runs
//! as-is.

use std::time::Duration;

use inlong_dataproxy::{Producer, Record};
use inlong_dataproxy_testkit::LocalCluster;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Where to send: your Manager, or a local one started here (kept alive until the end).
    let (_local, manager_url) = match std::env::var("INLONG_MANAGER_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let cluster = LocalCluster::start(1)?;
            let url = cluster.manager_url();
            (Some(cluster), url)
        }
    };
    let group_id = std::env::var("INLONG_GROUP_ID").unwrap_or_else(|_| "test_group".to_owned());

    // `build` asks the Manager for the DataProxy nodes (bounded by timeouts) and starts the shards.
    let producer = Producer::builder().group_id(group_id).manager_url(manager_url).build()?;

    // Any executor works; a current-thread tokio runtime is the smallest.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        // `send` never blocks; the future resolves once DataProxy acknowledged the record.
        let report = producer.send(Record::new("test_stream", "hello, inlong")).await?;
        println!(
            "delivered in batch {} to {} after {:?}",
            report.batch_id, report.endpoint, report.latency
        );
        // Send what is still pending and stop the shards.
        producer.close(Duration::from_secs(10)).await?;
        Ok(())
    })
}
