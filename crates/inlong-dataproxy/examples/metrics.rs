//! Metrics: give the producer its own Prometheus registry and expose it over HTTP.
//!
//! ```text
//! cargo run --example metrics                  # sends 10 000 records, prints the scrape, exits
//! INLONG_METRICS_ADDR=127.0.0.1:9464 INLONG_METRICS_WAIT_SECS=60 cargo run --example metrics
//!                                              # keeps /metrics up for 60 s for a real scraper
//! ```
//!
//! Without `INLONG_MANAGER_URL` it starts a local DataProxy + Manager in this process. The
//! metric names and labels are the Go SDK's (`data_proxy_msg_count{name,code}` and friends), so
//! dashboards built for the Go SDK work unchanged.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use inlong_dataproxy::{MetricsRegistry, Producer, Record};
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

    // A registry of our own (the default is prometheus' process-wide registry).
    let registry = MetricsRegistry::new(prometheus::Registry::new());
    let producer = Producer::builder()
        .group_id(group_id)
        .manager_url(manager_url)
        .metrics_name("metrics-example")
        .metrics_registry(registry.clone())
        .build()?;

    // The HTTP exporter: a plain thread answering GET /metrics with the text format.
    let addr = std::env::var("INLONG_METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let exported = registry.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &exported);
        }
    });
    println!("metrics at http://{bound}/metrics");

    for i in 0..10_000 {
        drop(producer.send(Record::new("test_stream", format!("record {i}"))));
    }
    producer.flush_blocking(Duration::from_secs(30))?;

    // Scrape ourselves once to show what a Prometheus server would see.
    let scrape = scrape(&bound.to_string())?;
    for line in scrape.lines().filter(|line| line.starts_with("data_proxy_msg_count")) {
        println!("{line}");
    }
    let stats = producer.stats();
    println!("stats: {} acked, {} failed", stats.records_acked, stats.records_failed);

    let wait: u64 =
        std::env::var("INLONG_METRICS_WAIT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(wait);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    producer.close_blocking(Duration::from_secs(10))?;
    Ok(())
}

/// Answers one request: `/metrics` gets the registry, anything else a 404.
fn answer(mut stream: TcpStream, registry: &MetricsRegistry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut head = [0u8; 4096];
    let read = stream.read(&mut head)?;
    let request = String::from_utf8_lossy(&head[..read]);
    let (status, body) = if request.starts_with("GET /metrics") {
        ("200 OK", registry.encode_text())
    } else {
        ("404 Not Found", String::new())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn scrape(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
