//! The last good node list of one Manager URL and group, kept on disk.
//!
//! [`NodeListCache`] owns one small JSON file. After every successful lookup the start-up path
//! stores the list; when the Manager is unreachable at start-up, a list younger than `max_age`
//! (20 minutes by default, as the Java SDK) lets the producer start anyway. The Java and C++ SDKs
//! keep such a file; the Go SDK does not (`PROTOCOL.md` §5.5).
//!
//! Writes are atomic (temporary file in the same directory, fsync, rename) and the file is
//! private to the user (mode 0600). Reading never panics and never trusts the content: a file that
//! is missing, corrupt, stale, from the future, for another URL or group, or empty is simply no
//! cache. The caller passes the current time, so tests need no clock. Only the control thread and
//! start-up use it: it does blocking file I/O.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::manager_client::{normalize_manager_url, Endpoint, NodeList};

/// Default [`NodeListCache`] maximum age, as the Java SDK's 20 minutes.
pub const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(20 * 60);
/// The version written into every file; files of another version are ignored.
const FORMAT_VERSION: u32 = 1;
/// A cache file written this far "in the future" still counts (clocks get stepped by NTP).
const MAX_FUTURE_SKEW: Duration = Duration::from_secs(60);
/// A node list file is a few KiB; a larger one is not ours.
const MAX_FILE_LEN: u64 = 1 << 20;
/// The directory under the user's cache directory.
const CACHE_SUBDIR: &str = "inlong-dataproxy";

/// The on-disk node list of one Manager URL and group id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeListCache {
    path: PathBuf,
    max_age: Duration,
    manager_url: String,
    group_id: String,
}

/// A node list read back from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedNodeList {
    /// The list as it was stored.
    pub node_list: NodeList,
    /// How long ago it was stored (zero when stored slightly in the future).
    pub age: Duration,
}

/// The file's JSON.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheFile {
    version: u32,
    saved_at_unix_ms: u64,
    manager_url: String,
    group_id: String,
    endpoints: Vec<CachedEndpoint>,
    max_packet_length: Option<usize>,
    cluster_id: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct CachedEndpoint {
    host: String,
    port: u16,
}

impl NodeListCache {
    /// The cache of `manager_url` and `group_id` at [`default_path`](Self::default_path), with
    /// the default maximum age.
    #[must_use]
    pub fn new(manager_url: &str, group_id: &str) -> NodeListCache {
        NodeListCache::at_path(
            NodeListCache::default_path(manager_url, group_id),
            manager_url,
            group_id,
        )
    }

    /// The cache of `manager_url` and `group_id` in the file `path`, with the default maximum age.
    #[must_use]
    pub fn at_path(path: impl Into<PathBuf>, manager_url: &str, group_id: &str) -> NodeListCache {
        NodeListCache {
            path: path.into(),
            max_age: DEFAULT_CACHE_MAX_AGE,
            manager_url: normalize_manager_url(manager_url).to_owned(),
            group_id: group_id.to_owned(),
        }
    }

    /// The same cache with another maximum age.
    #[must_use]
    pub fn with_max_age(mut self, max_age: Duration) -> NodeListCache {
        self.max_age = max_age;
        self
    }

    /// `<cache dir>/inlong-dataproxy/<16 hex digits>.json`, where the cache dir is
    /// `$XDG_CACHE_HOME` (when absolute), else `$HOME/.cache`, else the system temp dir, and the
    /// digits are the FNV-1a 64 hash of `manager_url + "\n" + group_id` (the URL without
    /// surrounding whitespace and one trailing `/`).
    #[must_use]
    pub fn default_path(manager_url: &str, group_id: &str) -> PathBuf {
        let root = cache_root(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"));
        root.join(CACHE_SUBDIR).join(file_name(manager_url, group_id))
    }

    /// The file this cache reads and writes.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The oldest list [`load`](Self::load) returns.
    #[must_use]
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The Manager URL (normalized) this cache is for.
    #[must_use]
    pub fn manager_url(&self) -> &str {
        &self.manager_url
    }

    /// The group id this cache is for.
    #[must_use]
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// Replaces the file with `list`, stamped `now`. Creates the directories (mode 0700) as
    /// needed; the file is written to a temporary name, synced and renamed, so readers see the old
    /// or the new list, never a mix.
    ///
    /// # Errors
    ///
    /// `list` has no endpoints (an empty list is never cached), `now` is before 1970, or a
    /// directory or file could not be created, written, synced or renamed.
    pub fn store(&self, list: &NodeList, now: SystemTime) -> io::Result<()> {
        if list.endpoints.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to cache an empty node list",
            ));
        }
        let since_epoch = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the clock is before 1970"))?;
        let file = CacheFile {
            version: FORMAT_VERSION,
            saved_at_unix_ms: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX),
            manager_url: self.manager_url.clone(),
            group_id: self.group_id.clone(),
            endpoints: list
                .endpoints
                .iter()
                .map(|endpoint| CachedEndpoint {
                    host: endpoint.host().to_owned(),
                    port: endpoint.port(),
                })
                .collect(),
            max_packet_length: list.max_packet_length,
            cluster_id: list.cluster_id,
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        create_private_dir(dir)?;
        let temp = dir.join(temp_name(&self.path));
        let written = write_new_file(&temp, &bytes).and_then(|()| fs::rename(&temp, &self.path));
        if let Err(error) = written {
            // Best effort: the temporary file may not even exist.
            let _ = fs::remove_file(&temp);
            return Err(error);
        }
        // Makes the rename durable; some file systems cannot sync a directory, which is harmless.
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// The stored list if there is a usable one at `now`.
    ///
    /// `Ok(None)` when the file is missing, older than `max_age`, stamped more than a minute after
    /// `now`, for another Manager URL or group, of another format version, corrupt or too large
    /// (logged as a warning), or without a valid endpoint. Invalid endpoints in the file are
    /// skipped.
    ///
    /// # Errors
    ///
    /// The file exists but could not be read (for example, permission denied).
    pub fn load(&self, now: SystemTime) -> io::Result<Option<CachedNodeList>> {
        let file = match fs::File::open(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_LEN + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_FILE_LEN {
            tracing::warn!(path = %self.path.display(), "ignoring a node list cache file that is too large");
            return Ok(None);
        }
        Ok(self.decode(&bytes, now))
    }

    /// Checks and decodes the file's bytes. Pure apart from logging.
    fn decode(&self, bytes: &[u8], now: SystemTime) -> Option<CachedNodeList> {
        let path = self.path.display();
        let file: CacheFile = match serde_json::from_slice(bytes) {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(%path, %error, "ignoring a corrupt node list cache file");
                return None;
            }
        };
        if file.version != FORMAT_VERSION {
            tracing::debug!(%path, version = file.version, "ignoring a cache file of another version");
            return None;
        }
        if file.manager_url != self.manager_url || file.group_id != self.group_id {
            tracing::warn!(%path, "ignoring a node list cache file of another manager URL or group");
            return None;
        }
        let saved_at = UNIX_EPOCH.checked_add(Duration::from_millis(file.saved_at_unix_ms))?;
        let age = match now.duration_since(saved_at) {
            Ok(age) => age,
            Err(ahead) if ahead.duration() <= MAX_FUTURE_SKEW => Duration::ZERO,
            Err(ahead) => {
                tracing::warn!(%path, ahead = ?ahead.duration(), "ignoring a node list cache file from the future");
                return None;
            }
        };
        if age > self.max_age {
            tracing::debug!(%path, ?age, max_age = ?self.max_age, "the cached node list is stale");
            return None;
        }
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(file.endpoints.len());
        for cached in &file.endpoints {
            match Endpoint::new(&cached.host, cached.port) {
                Some(endpoint) if !endpoints.contains(&endpoint) => endpoints.push(endpoint),
                _ => tracing::debug!(%path, "skipping an invalid or repeated cached endpoint"),
            }
        }
        if endpoints.is_empty() {
            return None;
        }
        let max_packet_length = file.max_packet_length.filter(|&len| len > 0);
        let node_list = NodeList { endpoints, max_packet_length, cluster_id: file.cluster_id };
        Some(CachedNodeList { node_list, age })
    }
}

/// The user's cache directory: `$XDG_CACHE_HOME` if absolute, else `$HOME/.cache`, else temp.
fn cache_root(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    if let Some(xdg) = xdg_cache_home.map(PathBuf::from).filter(|path| path.is_absolute()) {
        return xdg;
    }
    match home.filter(|home| !home.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache"),
        None => std::env::temp_dir(),
    }
}

fn file_name(manager_url: &str, group_id: &str) -> String {
    let key = format!("{}\n{group_id}", normalize_manager_url(manager_url));
    format!("{:016x}.json", fnv1a_64(key.as_bytes()))
}

/// FNV-1a, 64 bits: part of the cache file name format ([`NodeListCache::default_path`]), so
/// it must never change; stable across Rust versions and platforms, unlike `DefaultHasher`. The
/// crate's only FNV: in-memory hashing uses `rustc-hash`.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

/// A name no other writer (thread or process) uses at the same time.
fn temp_name(path: &Path) -> OsString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    name
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_new_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const URL: &str = "http://m:8083/inlong/manager/openapi/dataproxy/getIpList";

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let name = format!(
                "inlong-dataproxy-cache-test-{}-{}-{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn list() -> NodeList {
        NodeList {
            endpoints: vec![
                Endpoint::new("10.0.0.1", 46801).expect("valid"),
                Endpoint::new("::1", 46802).expect("valid"),
                Endpoint::new("dp.example", 46803).expect("valid"),
            ],
            max_packet_length: Some(1 << 20),
            cluster_id: Some(3),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn cache_in(dir: &TempDir) -> NodeListCache {
        NodeListCache::at_path(dir.0.join("nested/dir/nodes.json"), URL, "g")
    }

    #[test]
    fn round_trips_and_reports_the_age() {
        let dir = TempDir::new();
        let cache = cache_in(&dir);
        assert_eq!(cache.load(at(0)).expect("load"), None, "missing file");
        cache.store(&list(), at(0)).expect("store");
        let loaded = cache.load(at(90)).expect("load").expect("fresh");
        assert_eq!(loaded, CachedNodeList { node_list: list(), age: Duration::from_secs(90) });
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(cache.path().parent().expect("dir"))
            .expect("list dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["nodes.json"]);
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = TempDir::new();
        let cache = cache_in(&dir);
        cache.store(&list(), at(0)).expect("store");
        let mode = fs::metadata(cache.path()).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Overwriting keeps it private.
        cache.store(&list(), at(1)).expect("store again");
        let mode = fs::metadata(cache.path()).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn stale_future_and_foreign_files_are_no_cache() {
        let dir = TempDir::new();
        let cache = cache_in(&dir).with_max_age(Duration::from_secs(60));
        cache.store(&list(), at(1000)).expect("store");
        assert!(cache.load(at(1060)).expect("load").is_some(), "exactly max_age is fresh");
        assert_eq!(cache.load(at(1061)).expect("load"), None, "stale");
        let skewed = cache.load(at(950)).expect("load").expect("within the skew");
        assert_eq!(skewed.age, Duration::ZERO);
        assert_eq!(cache.load(at(900)).expect("load"), None, "from the future");

        let other_group = NodeListCache::at_path(cache.path(), URL, "other");
        assert_eq!(other_group.load(at(1000)).expect("load"), None);
        let other_url = NodeListCache::at_path(cache.path(), "http://elsewhere/x", "g");
        assert_eq!(other_url.load(at(1000)).expect("load"), None);
        let same_url_with_slash = NodeListCache::at_path(cache.path(), &format!("{URL}/"), "g");
        assert!(same_url_with_slash.load(at(1000)).expect("load").is_some());
    }

    #[test]
    fn corrupt_files_are_no_cache() {
        let dir = TempDir::new();
        let cache = cache_in(&dir);
        let valid = |endpoints: &str, version: u32| {
            format!(
                r#"{{"version":{version},"savedAtUnixMs":1700000000000,"managerUrl":"{URL}","groupId":"g","endpoints":{endpoints},"maxPacketLength":null,"clusterId":null}}"#
            )
        };
        fs::create_dir_all(cache.path().parent().expect("dir")).expect("mkdir");
        for content in [
            String::new(),
            "not json".to_owned(),
            "{}".to_owned(),
            valid("[]", FORMAT_VERSION),
            valid(r#"[{"host":"10.0.0.1","port":1}]"#, 99),
            valid(r#"[{"host":"","port":1},{"host":"10.0.0.1","port":0}]"#, FORMAT_VERSION),
            valid(r#"[{"host":"10.0.0.1","port":70000}]"#, FORMAT_VERSION),
            r#"{"version":1,"savedAtUnixMs":18446744073709551615,"managerUrl":"x","groupId":"g","endpoints":[]}"#.to_owned(),
        ] {
            fs::write(cache.path(), &content).expect("write");
            assert_eq!(cache.load(at(0)).expect("load"), None, "{content}");
        }
        fs::write(cache.path(), valid(r#"[{"host":"","port":1},{"host":"10.0.0.9","port":9}]"#, 1))
            .expect("write");
        let loaded = cache.load(at(0)).expect("load").expect("one valid endpoint");
        assert_eq!(loaded.node_list.endpoints, [Endpoint::new("10.0.0.9", 9).expect("valid")]);

        fs::write(cache.path(), vec![b' '; usize::try_from(MAX_FILE_LEN).expect("fits") + 1])
            .expect("write");
        assert_eq!(cache.load(at(0)).expect("load"), None, "too large");
    }

    #[test]
    fn empty_lists_and_pre_epoch_clocks_are_not_stored() {
        let dir = TempDir::new();
        let cache = cache_in(&dir);
        assert!(cache.store(&NodeList::default(), at(0)).is_err());
        let before_epoch = UNIX_EPOCH - Duration::from_secs(1);
        assert!(cache.store(&list(), before_epoch).is_err());
        assert!(!cache.path().exists());
    }

    #[test]
    fn a_directory_in_the_way_is_an_error_not_a_panic() {
        let dir = TempDir::new();
        let cache = NodeListCache::at_path(&dir.0, URL, "g");
        assert!(cache.load(at(0)).is_err());
        assert!(cache.store(&list(), at(0)).is_err());
    }

    #[test]
    fn default_paths_are_stable_and_distinct() {
        let path = NodeListCache::default_path(URL, "g");
        let name = path.file_name().and_then(|name| name.to_str()).expect("utf-8 name");
        assert_eq!(name.len(), "0123456789abcdef.json".len());
        assert!(name.trim_end_matches(".json").bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(path.parent().and_then(Path::file_name), Some(CACHE_SUBDIR.as_ref()));
        assert_eq!(NodeListCache::default_path(&format!("{URL}/"), "g"), path);
        assert_ne!(NodeListCache::default_path(URL, "h"), path);
        assert_ne!(NodeListCache::default_path("http://other/x", "g"), path);
        assert_eq!(NodeListCache::new(URL, "g").path(), path);
        assert_eq!(NodeListCache::new(URL, "g").max_age(), DEFAULT_CACHE_MAX_AGE);
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cache_root_prefers_xdg_then_home_then_temp() {
        let root = |xdg: Option<&str>, home: Option<&str>| {
            cache_root(xdg.map(OsString::from), home.map(OsString::from))
        };
        assert_eq!(root(Some("/xdg"), Some("/home/u")), PathBuf::from("/xdg"));
        assert_eq!(root(Some("relative"), Some("/home/u")), PathBuf::from("/home/u/.cache"));
        assert_eq!(root(Some(""), Some("/home/u")), PathBuf::from("/home/u/.cache"));
        assert_eq!(root(None, Some("/home/u")), PathBuf::from("/home/u/.cache"));
        assert_eq!(root(None, Some("")), std::env::temp_dir());
        assert_eq!(root(None, None), std::env::temp_dir());
    }

    proptest! {
        #[test]
        fn any_file_content_decodes_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            ms in any::<u64>(),
            port in any::<u16>(),
            host in "[a-z0-9.:\\[\\] -]{0,20}",
        ) {
            let cache = NodeListCache::at_path("/nonexistent/nodes.json", URL, "g")
                .with_max_age(Duration::MAX);
            let _ = cache.decode(&bytes, at(0));
            let shaped = serde_json::json!({
                "version": 1, "savedAtUnixMs": ms, "managerUrl": URL, "groupId": "g",
                "endpoints": [{"host": host, "port": port}], "maxPacketLength": ms,
                "clusterId": null,
            });
            if let Some(cached) = cache.decode(shaped.to_string().as_bytes(), at(0)) {
                prop_assert!(!cached.node_list.endpoints.is_empty());
            }
        }
    }
}
