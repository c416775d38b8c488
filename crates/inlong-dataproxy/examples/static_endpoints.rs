//! A static DataProxy node list instead of the Manager: `.endpoints([...])`.
//!
//! ```text
//! cargo run --example static_endpoints
//! INLONG_ENDPOINTS=10.0.0.1:46801,10.0.0.2:46801 INLONG_GROUP_ID=my_group \
//!     cargo run --example static_endpoints
//! ```
//!
//! Without `INLONG_ENDPOINTS` it starts a local DataProxy in this process and uses its address.
//! No Manager is asked: the list is used as given for the producer's whole life.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use inlong_dataproxy::{Producer, Record};
use inlong_dataproxy_testkit::LocalCluster;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_local, endpoints) = match std::env::var("INLONG_ENDPOINTS") {
        Ok(list) => {
            let mut endpoints: Vec<SocketAddr> = Vec::new();
            for node in list.split(',') {
                endpoints.extend(node.trim().to_socket_addrs()?.next());
            }
            (None, endpoints)
        }
        Err(_) => {
            let cluster = LocalCluster::start(1)?;
            let endpoints = cluster.node_addrs();
            (Some(cluster), endpoints)
        }
    };
    let group_id = std::env::var("INLONG_GROUP_ID").unwrap_or_else(|_| "test_group".to_owned());

    let producer = Producer::builder().group_id(group_id).endpoints(endpoints).build()?;
    let report = producer
        .send_blocking(
            Record::new("test_stream", "sent without a Manager"),
            Duration::from_secs(5),
        )?
        .wait()?;
    println!("acked by {} after {:?}", report.endpoint, report.latency);
    producer.close_blocking(Duration::from_secs(10))?;
    Ok(())
}
