//! What the benchmarks, the CLI's `bench` and the soak share: synthetic records — realistic log
//! lines whose digits change from record to record, so Snappy sees the redundancy of real logs
//! rather than one buffer compressed in a loop (which overstates it ~2.5x) — and the process
//! measurements they report (CPU time and resident memory from `/proc`, Linux only; 0 elsewhere).

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

/// `utime + stime` of a `/proc/.../stat` line, in seconds (clock ticks of 1/100 s, Linux's
/// `USER_HZ` on every mainstream architecture); 0 for a line that does not parse.
pub fn stat_cpu_seconds(stat: &str) -> f64 {
    // The command name may contain spaces; the fields after it are space-separated.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0
}

/// CPU seconds used so far by process `pid` (`"self"` for this one), and by those of its live
/// threads whose name starts with `thread_prefix` (`""`: every live thread). 0 when unreadable.
pub fn process_cpu_seconds(pid: &str, thread_prefix: &str) -> (f64, f64) {
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(path).map_or(0.0, |stat| stat_cpu_seconds(&stat))
    };
    let total = read(format!("/proc/{pid}/stat").into());
    let mut threads = 0.0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.starts_with(thread_prefix) {
                threads += read(task.path().join("stat"));
            }
        }
    }
    (total, threads)
}

/// A `kB` line of `/proc/<pid>/status` (`"VmRSS"`, `"VmHWM"`, ...) in MB; `pid` may be
/// `"self"`. 0 when unreadable.
pub fn status_mb(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let stat = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0";
        assert!((stat_cpu_seconds(stat) - 4.0).abs() < 1e-9);
        assert!(stat_cpu_seconds("garbage").abs() < f64::EPSILON);
    }

    #[test]
    fn this_process_has_memory_readings() {
        assert!(status_mb("self", "VmRSS") > 0.0);
        assert!(status_mb("self", "VmHWM") >= status_mb("self", "VmRSS") * 0.5);
        assert!(status_mb("self", "NoSuchField").abs() < f64::EPSILON);
    }

    /// The run time the scheduler gives the thread named `name` (`/proc/self/task/*/schedstat`,
    /// nanoseconds): a second clock, independent of the `stat` fields `process_cpu_seconds` reads.
    fn scheduler_seconds(name: &str) -> f64 {
        let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
        let task = tasks
            .flatten()
            .find(|task| {
                std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim() == name
            })
            .expect("the named thread is alive");
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).expect("schedstat");
        let nanos: f64 = schedstat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap();
        nanos / 1e9
    }

    #[test]
    fn cpu_seconds_grow_while_a_thread_burns_cpu_and_agree_with_the_scheduler() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        const NAME: &str = "workload-burn";
        const BURN: f64 = 0.3;
        let (total_before, _) = process_cpu_seconds("self", "");
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let burner = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(NAME.to_owned())
                .spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005) + 1);
                    }
                })
                .unwrap()
        };
        // Burn until the reader sees BURN seconds on the thread, within a deadline.
        let mut burnt = 0.0;
        while burnt < BURN {
            assert!(started.elapsed() < Duration::from_secs(20), "{burnt} s CPU read after 20 s");
            std::thread::sleep(Duration::from_millis(10));
            burnt = process_cpu_seconds("self", NAME).1;
        }
        let scheduler = scheduler_seconds(NAME);
        let wall = started.elapsed().as_secs_f64();
        let (total_after, every_thread) = process_cpu_seconds("self", "");
        let (_, nobody) = process_cpu_seconds("self", "no-such-thread");
        stop.store(true, Ordering::Relaxed);
        burner.join().unwrap();

        // Ticks of 1/100 s: off by a few ticks at most, never by a factor.
        assert!(
            (burnt - scheduler).abs() <= 0.05,
            "stat says {burnt} s, the scheduler {scheduler} s"
        );
        assert!(burnt <= wall + 0.02, "one thread used {burnt} s CPU in {wall} s");
        assert!(total_after - total_before >= BURN - 0.02, "{total_before} s then {total_after} s");
        assert!(
            every_thread >= burnt && total_after >= burnt,
            "{total_after} {every_thread} {burnt}"
        );
        assert!(nobody.abs() < f64::EPSILON, "no thread has that prefix: {nobody}");
    }

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
