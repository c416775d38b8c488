//! Synthetic records for benchmarks, the CLI's `bench` and soak runs: realistic log lines whose
//! digits change from record to record, so Snappy sees the redundancy of real logs rather than
//! one buffer compressed in a loop (which overstates it ~2.5x).

use bytes::Bytes;

/// Record number `index`: a log-like line of exactly `size` bytes, the same for the same inputs.
pub fn log_line(index: u64, size: usize) -> Bytes {
    const STATUS: [u16; 5] = [200, 200, 201, 404, 500];
    let i = index;
    let status = STATUS[usize::try_from(i % 5).unwrap_or(0)];
    let mut line = format!(
        "2026-11-25T10:{:02}:{:02}.{:03}Z INFO gateway-{} req={:016x} path=/api/v{}/items/{} status={status} ms={} ",
        (i / 60_000) % 60,
        (i / 1000) % 60,
        i % 1000,
        i % 17,
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        i % 3,
        i % 10_007,
        (i * 7) % 250
    )
    .into_bytes();
    while line.len() < size {
        let key = line.len() as u64;
        line.extend_from_slice(format!("k{key}={:x} ", i.wrapping_mul(key + 1)).as_bytes());
    }
    line.truncate(size);
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_exact_size_differ_and_repeat() {
        for size in [1, 60, 100, 1024, 4000] {
            assert_eq!(log_line(7, size).len(), size);
        }
        assert_ne!(log_line(1, 100), log_line(2, 100));
        assert_eq!(log_line(3, 100), log_line(3, 100));
        assert!(log_line(0, 100).starts_with(b"2026-11-25T10:00:00.000Z INFO gateway-0 "));
    }
}
