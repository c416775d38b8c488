//! msgType 7 and sink acknowledgement end to end, on both I/O drivers, against the local
//! DataProxy: the records arrive byte for byte (compressed and not), idle connections heartbeat
//! with type 8 and stay up, and with `ack = sink` a record is acked only once the simulated MQ
//! stored it, its failures (116–119) are retried, and a sink that never answers fails the record
//! with the send timeout as its cause. (The whole fault suite runs on msgType 7 too, in
//! `faults.rs`.)

mod common;
use common::{builder, cluster, transports, wait_until};

use std::time::{Duration, Instant};

use inlong_dataproxy::{Ack, Error, MsgType, Record, Transport};
use inlong_dataproxy_testkit::{ErrorInjection, LocalCluster};

fn binary(
    cluster: &LocalCluster,
    transport: Transport,
    ack: Ack,
) -> inlong_dataproxy::ProducerBuilder {
    builder(cluster, transport).msg_type(MsgType::BinMultiBody).ack(ack)
}

#[test]
fn type_7_records_arrive_exactly_as_sent() {
    for transport in transports() {
        let cluster = cluster(1);
        let producer = binary(&cluster, transport, Ack::Proxy).build().unwrap();
        // Small records (bodies under the compression threshold) and large ones (Snappy, the
        // 0x20 flag), some with the trailing newline the SDK drops.
        let payloads: Vec<Vec<u8>> = (0..600)
            .map(|i| match i % 3 {
                0 => format!("small {i}").into_bytes(),
                1 => format!("large {i} {}\n", "x".repeat(900)).into_bytes(),
                _ => format!("{i}|a|b|c\n").into_bytes(),
            })
            .collect();
        let futures: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, payload)| producer.send(Record::new(format!("s{}", i % 2), payload.clone())))
            .collect();
        for future in futures {
            future.wait().expect("acked");
        }
        producer.close_blocking(Duration::from_secs(10)).unwrap();
        let ledger = cluster.ledger();
        for stream in 0..2 {
            let expected: Vec<Vec<u8>> = payloads
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == stream)
                .map(|(_, p)| p.strip_suffix(b"\n").unwrap_or(p).to_vec())
                .collect();
            let got: Vec<Vec<u8>> =
                ledger[&format!("s{stream}")].iter().map(|r| r.to_vec()).collect();
            assert_eq!(got, expected, "{transport:?} stream s{stream}");
        }
        assert_eq!(cluster.stats().errors, 0);
    }
}

#[test]
fn idle_type_7_connections_heartbeat_with_type_8_and_stay_up() {
    for transport in transports() {
        let cluster = cluster(1);
        let producer = binary(&cluster, transport, Ack::Proxy)
            .shards(1)
            .conn_rotation(false)
            .heartbeat_interval(Duration::from_millis(100))
            .heartbeat_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        producer.send(Record::new("s", "first")).wait().unwrap();
        let node = cluster.node(0);
        wait_until("three heartbeats answered", Duration::from_secs(10), || {
            node.stats().heartbeats >= 3
        });
        producer.send(Record::new("s", "after the heartbeats")).wait().unwrap();
        let stats = node.stats();
        assert_eq!(stats.connections, 1, "{transport:?}: the heartbeats kept the connection");
        assert_eq!(stats.protocol_closes, 0, "{transport:?}: every heartbeat well-formed");
        producer.close_blocking(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn sink_acks_wait_for_the_mq_and_its_failures_are_retried() {
    const LATENCY: Duration = Duration::from_millis(60);
    for transport in transports() {
        let cluster = cluster(1);
        let node = cluster.node(0);
        node.update_faults(|f| f.sink_latency = Some(LATENCY));
        let producer = binary(&cluster, transport, Ack::Sink)
            .retry_initial_interval(Duration::from_millis(10))
            .build()
            .unwrap();
        let sent = Instant::now();
        let futures: Vec<_> =
            (0..200).map(|i| producer.send(Record::new("s", format!("r{i}")))).collect();
        for future in futures {
            let report = future.wait().expect("acked once stored");
            assert!(report.latency >= LATENCY, "{transport:?}: acked after {:?}", report.latency);
        }
        assert!(sent.elapsed() >= LATENCY);
        assert_eq!(node.stats().records, 200, "{transport:?}: stored once each");

        // Every third batch fails in the MQ: retried until stored.
        node.update_faults(|f| {
            f.sink_latency = Some(Duration::from_millis(5));
            f.sink_errors = Some(ErrorInjection::EveryNth { code: 118, n: 3, seen: 0 });
        });
        let futures: Vec<_> =
            (0..300).map(|i| producer.send(Record::new("s", format!("again {i}")))).collect();
        let mut retried = 0;
        for future in futures {
            let report = future.wait().expect("acked after the sink's retries");
            retried += u32::from(report.retries > 0);
        }
        assert!(retried > 0, "{transport:?}: some batches met a 118");
        assert!(node.stats().errors > 0);
        assert_eq!(node.stats().records, 500, "{transport:?}: a failed store counts nothing");
        producer.close_blocking(Duration::from_secs(10)).unwrap();
    }
}

#[test]
fn a_sink_that_never_answers_fails_the_record_within_its_bound() {
    for transport in transports() {
        let cluster = cluster(1);
        cluster.node(0).update_faults(|f| f.sink_latency = Some(Duration::from_secs(600)));
        let send_timeout = Duration::from_millis(300);
        let producer = binary(&cluster, transport, Ack::Sink)
            .send_timeout(send_timeout)
            .max_retries(1)
            .build()
            .unwrap();
        let started = Instant::now();
        let error = producer.send(Record::new("s", "never stored")).wait().unwrap_err();
        let took = started.elapsed();
        match &error {
            Error::SendTimeout { attempts: 2, last_error: Some(cause), .. } => {
                assert!(matches!(**cause, Error::AckTimeout { .. }), "{transport:?}: {cause}");
            }
            other => panic!("{transport:?}: {other:?}"),
        }
        // linger + send_timeout × (2 + max_retries) + the backoff, with room for a busy machine.
        assert!(took < send_timeout * 3 + Duration::from_secs(2), "{transport:?}: {took:?}");
        producer.close_blocking(Duration::from_secs(5)).unwrap();
    }
}
