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

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

    // The HTTP exporter: hyper on a small tokio runtime, answering GET /metrics.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let addr = std::env::var("INLONG_METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
    let bound = listener.local_addr()?;
    runtime.spawn(export(listener, registry.clone()));
    println!("metrics at http://{bound}/metrics");

    for i in 0..10_000 {
        drop(producer.send(Record::new("test_stream", format!("record {i}"))));
    }
    producer.flush_blocking(Duration::from_secs(30))?;

    // Scrape ourselves once, with reqwest, to show what a Prometheus server would see.
    let scrape = runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let response = client.get(format!("http://{bound}/metrics")).send().await?;
        response.error_for_status()?.text().await
    })?;
    let counts: Vec<&str> =
        scrape.lines().filter(|line| line.starts_with("data_proxy_msg_count")).collect();
    if counts.is_empty() {
        return Err(format!("the scrape has no data_proxy_msg_count:\n{scrape}").into());
    }
    for line in counts {
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

/// Serves every connection on its own task: `/metrics` gets the registry, anything else a 404.
async fn export(listener: tokio::net::TcpListener, registry: MetricsRegistry) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, for example: try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let reply = if request.method() == Method::GET && request.uri().path() == "/metrics"
                {
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(registry.encode_text())))
                } else {
                    Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::new()))
                };
                async move { reply }
            });
            // A scraper that misbehaves only loses its own connection.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
