//! Whether a client id belongs to a provisioned device, answered without a query per CONNECT.
//!
//! An anonymous CONNECT must not take a provisioned device's client id. Asking the directory
//! for each new id cost a database round trip per connect, which doubled the median handshake
//! of a reconnect storm of new anonymous clients. So the broker keeps an *index*: a sorted
//! array of 64-bit keyed fingerprints of every provisioned client id (8 bytes per device),
//! loaded when the directory's version changes (compared at most once per `RECHECK`, by the
//! connect that finds the check due, which also does the reload). A new anonymous id then
//! costs a binary search. Where the store cannot list its devices, or the fleet does not fit
//! the memory budget (`auth.device_id_cache_bytes`), each id is asked once and the answer
//! remembered instead, bounded in bytes and forgotten on every version change.
//!
//! A fingerprint collision (an anonymous id whose keyed hash equals a device's: about
//! n / 2^64 per connect for n devices, and the key is random per process so it cannot be
//! aimed) refuses that anonymous client as if it used the device's id; it never admits one.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tern_broker::store::{DirectoryStore, StoreError};

/// How often the directory's version is compared.
const RECHECK: Duration = Duration::from_secs(1);
/// How long a version check may hold a CONNECT while the directory is known to be down
/// (a database that is back answers well within it).
const DOWN_RECHECK_LIMIT: Duration = Duration::from_millis(250);
/// The error of a lookup refused without asking the store (it is known to be down).
pub(crate) const DOWN: &str = "directory store unavailable; client id not remembered";
/// Bytes an answer is accounted for besides its client id: the boxed key, the flag and the
/// hash table's slot and control byte, rounded up.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<(Box<str>, bool)>() + 16;
/// Client ids read per query while loading the index.
const INDEX_PAGE: u32 = 10_000;

/// Bytes one remembered answer is accounted for.
fn entry_bytes(client_id: &str) -> usize {
    ENTRY_OVERHEAD + client_id.len()
}

#[derive(Debug, Default)]
struct State {
    /// Directory version the answers belong to.
    version: Option<i64>,
    /// When the version was last compared (or a comparison began).
    checked_at: Option<Instant>,
    /// Bumped whenever the answers are dropped, so an answer (or index) looked up before
    /// is not stored after it.
    epoch: u64,
    /// Sorted fingerprints of every provisioned client id at `version`; while it is set it
    /// answers every id and `known` is empty.
    index: Option<Box<[u64]>>,
    /// The index should be (re)loaded: the version changed, or the last load failed.
    index_wanted: bool,
    /// A connect is loading the index.
    loading: bool,
    /// Answers of single lookups, when there is no index.
    known: HashMap<Box<str>, bool>,
    /// Bytes `known` is accounted for (see [`entry_bytes`]).
    bytes: usize,
    /// The last version check failed: ids not answered by the index or remembered are
    /// refused at once rather than each waiting for the pool's acquire timeout (a CONNECT
    /// would otherwise spend its whole handshake deadline on two such waits).
    down: bool,
}

/// Answers to "is this client id a provisioned device's?", from an index of the directory's
/// client ids or from remembered single lookups, bounded in bytes (`auth.device_id_cache_bytes`).
#[derive(Debug)]
pub(crate) struct DeviceIds {
    max_bytes: usize,
    /// Keys the fingerprints; random per process.
    hasher: RandomState,
    state: Mutex<State>,
}

impl DeviceIds {
    /// Uses at most about `max_bytes` (0: remember nothing, ask every time).
    pub(crate) fn new(max_bytes: usize) -> DeviceIds {
        DeviceIds { max_bytes, hasher: RandomState::new(), state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fingerprint(&self, client_id: &str) -> u64 {
        self.hasher.hash_one(client_id)
    }

    /// Whether `client_id` names a provisioned device (enabled or not).
    pub(crate) async fn is_provisioned(
        &self,
        store: &dyn DirectoryStore,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        let (due, down) = {
            let mut st = self.lock();
            let due = st.checked_at.is_none_or(|t| t.elapsed() >= RECHECK);
            if due {
                // Claimed: concurrent CONNECTs do not all ask.
                st.checked_at = Some(Instant::now());
            }
            (due, st.down)
        };
        if due {
            self.check_version(store, down).await?;
        }
        let epoch = {
            let st = self.lock();
            if let Some(index) = &st.index {
                return Ok(index.binary_search(&self.fingerprint(client_id)).is_ok());
            }
            if let Some(&known) = st.known.get(client_id) {
                return Ok(known);
            }
            if st.down {
                return Err(StoreError::Unavailable(DOWN.into()));
            }
            st.epoch
        };
        let provisioned = match store.device_by_client_id(client_id).await {
            Ok(d) => d.is_some(),
            Err(e) => {
                if matches!(e, StoreError::Unavailable(_)) {
                    // Until a version check succeeds, new ids are refused without waiting.
                    self.lock().down = true;
                }
                return Err(e);
            }
        };
        let mut st = self.lock();
        let bytes = entry_bytes(client_id);
        if st.epoch == epoch && st.version.is_some() && st.index.is_none() && bytes <= self.max_bytes {
            if st.bytes + bytes > self.max_bytes {
                st.known.clear();
                st.bytes = 0;
            }
            if st.known.insert(client_id.into(), provisioned).is_none() {
                st.bytes += bytes;
            }
        }
        Ok(provisioned)
    }

    /// Compares the directory's version (the caller claimed the check); on a change drops
    /// the answers and reloads the index.
    async fn check_version(&self, store: &dyn DirectoryStore, down: bool) -> Result<(), StoreError> {
        let version = if down {
            tokio::time::timeout(DOWN_RECHECK_LIMIT, store.directory_version())
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("directory version check timed out".into())))
        } else {
            store.directory_version().await
        };
        let epoch = match version {
            Ok(v) => {
                let mut st = self.lock();
                st.down = false;
                if st.version != Some(v) {
                    st.version = Some(v);
                    st.index = None;
                    st.index_wanted = self.max_bytes > 0;
                    st.known.clear();
                    st.bytes = 0;
                    st.epoch += 1;
                }
                if !st.index_wanted || st.loading {
                    return Ok(());
                }
                st.loading = true;
                st.epoch
            }
            // With answers from a known version, keep using them while the store is away
            // (a device change made meanwhile is seen once it is back).
            Err(e) if self.lock().version.is_some() => {
                if !down {
                    tracing::warn!(error = %e, "directory version check failed; using remembered device ids");
                }
                self.lock().down = true;
                return Ok(());
            }
            Err(e) => {
                self.lock().checked_at = None;
                return Err(e);
            }
        };
        let loaded = self.load_index(store).await;
        let mut st = self.lock();
        st.loading = false;
        match loaded {
            Ok(index) if st.epoch == epoch => {
                if let Some(index) = &index {
                    tracing::debug!(devices = index.len(), "device id index loaded");
                }
                st.index = index;
                st.index_wanted = false;
                st.known.clear();
                st.bytes = 0;
            }
            // The version changed meanwhile: the next check loads it again.
            Ok(_) => {}
            // Single lookups meanwhile; the next due check tries again.
            Err(e) => tracing::warn!(error = %e, "cannot load the device id index; asking per client id"),
        }
        Ok(())
    }

    /// Fingerprints of every provisioned client id, sorted; `None` if the store cannot list
    /// them or they do not fit the budget.
    async fn load_index(&self, store: &dyn DirectoryStore) -> Result<Option<Box<[u64]>>, StoreError> {
        let max = self.max_bytes / std::mem::size_of::<u64>();
        let mut index = Vec::new();
        let mut after = String::new();
        loop {
            let Some(page) = store.device_client_ids(&after, INDEX_PAGE).await? else {
                return Ok(None);
            };
            index.extend(page.iter().map(|id| self.fingerprint(id)));
            if index.len() > max {
                tracing::info!(
                    budget_bytes = self.max_bytes,
                    "more devices than auth.device_id_cache_bytes indexes; asking per client id"
                );
                return Ok(None);
            }
            let full = page.len() == INDEX_PAGE as usize;
            match page.into_iter().next_back() {
                Some(last) if full => after = last,
                _ => break,
            }
        }
        index.sort_unstable();
        index.dedup();
        Ok(Some(index.into_boxed_slice()))
    }

    /// Answers held and the bytes they are accounted for.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let st = self.lock();
        (st.known.len(), st.bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tern_broker::store::{AclRule, AdminUser, AuditEntry, Device, StoreFuture};

    use super::*;

    /// A directory where only `dev-*` client ids are provisioned (or, when `listed` is set,
    /// exactly those it lists, which it can then list), counting lookups.
    #[derive(Debug, Default)]
    struct Dir {
        lookups: AtomicUsize,
        /// Pages listed.
        pages: AtomicUsize,
        /// The database is away: every call fails.
        down: std::sync::atomic::AtomicBool,
        /// The provisioned ids, sorted, when the store can list them.
        listed: Mutex<Option<Vec<String>>>,
        version: std::sync::atomic::AtomicI64,
    }

    impl Dir {
        fn listing(ids: impl IntoIterator<Item = String>) -> Dir {
            let mut ids: Vec<String> = ids.into_iter().collect();
            ids.sort();
            Dir { listed: Mutex::new(Some(ids)), ..Dir::default() }
        }
    }

    fn unavailable<T: Send + 'static>() -> StoreFuture<'static, T> {
        Box::pin(std::future::ready(Err(StoreError::Unavailable("test: down".into()))))
    }

    impl DirectoryStore for Dir {
        fn device_by_client_id<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<Device>> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return unavailable();
            }
            let listed = self.listed.lock().unwrap().as_ref().map(|l| l.iter().any(|id| id == client_id));
            let d = listed.unwrap_or_else(|| client_id.starts_with("dev-")).then(|| Device {
                client_id: client_id.into(),
                username: None,
                password_hash: None,
                scram_verifier: None,
                cert_identity: None,
                enabled: true,
                created_at: 0,
                labels: std::collections::BTreeMap::new(),
                limits: tern_broker::store::DeviceLimits::default(),
            });
            Box::pin(std::future::ready(Ok(d)))
        }
        fn directory_version(&self) -> StoreFuture<'_, i64> {
            if self.down.load(Ordering::Relaxed) {
                return unavailable();
            }
            Box::pin(std::future::ready(Ok(self.version.load(Ordering::Relaxed))))
        }
        fn device_client_ids<'a>(
            &'a self,
            after: &'a str,
            limit: u32,
        ) -> StoreFuture<'a, Option<Vec<String>>> {
            if self.down.load(Ordering::Relaxed) {
                return unavailable();
            }
            self.pages.fetch_add(1, Ordering::Relaxed);
            let page =
                self.listed.lock().unwrap().as_ref().map(|l| {
                    l.iter().filter(|id| id.as_str() > after).take(limit as usize).cloned().collect()
                });
            Box::pin(std::future::ready(Ok(page)))
        }
        fn add_device<'a>(&'a self, _: &'a Device) -> StoreFuture<'a, ()> {
            unimplemented!()
        }
        fn update_device<'a>(&'a self, _: &'a Device) -> StoreFuture<'a, ()> {
            unimplemented!()
        }
        fn remove_device<'a>(&'a self, _: &'a str) -> StoreFuture<'a, bool> {
            unimplemented!()
        }
        fn device_by_username<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<Device>> {
            unimplemented!()
        }
        fn list_devices(&self) -> StoreFuture<'_, Vec<Device>> {
            unimplemented!()
        }
        fn add_acl_rule<'a>(&'a self, _: &'a AclRule) -> StoreFuture<'a, i64> {
            unimplemented!()
        }
        fn remove_acl_rule(&self, _: i64) -> StoreFuture<'_, bool> {
            unimplemented!()
        }
        fn list_acl_rules(&self) -> StoreFuture<'_, Vec<AclRule>> {
            unimplemented!()
        }
        fn put_admin_user<'a>(&'a self, _: &'a AdminUser) -> StoreFuture<'a, ()> {
            unimplemented!()
        }
        fn admin_user<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<AdminUser>> {
            unimplemented!()
        }
        fn append_audit<'a>(&'a self, _: &'a AuditEntry) -> StoreFuture<'a, i64> {
            unimplemented!()
        }
        fn recent_audit(&self, _: u32) -> StoreFuture<'_, Vec<AuditEntry>> {
            unimplemented!()
        }
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_started_afresh_when_full() {
        let budget = 10 * entry_bytes("anon-00");
        let ids = DeviceIds::new(budget);
        let dir = Dir::default();
        for i in 0..10 {
            assert!(!ids.is_provisioned(&dir, &format!("anon-{i:02}")).await.unwrap());
        }
        assert!(ids.is_provisioned(&dir, "dev-1").await.is_ok_and(|p| p));
        assert_eq!(ids.usage().0, 1, "the eleventh answer started the memory afresh");
        assert!(ids.usage().1 <= budget);
        for _ in 0..3 {
            assert!(ids.is_provisioned(&dir, "dev-1").await.unwrap());
        }
        assert_eq!(dir.lookups.load(Ordering::Relaxed), 11, "remembered answers");
        // Long client ids cost more: fewer fit.
        let long = "x".repeat(entry_bytes("anon-00") * 3);
        assert!(!ids.is_provisioned(&dir, &long).await.unwrap());
        assert!(ids.usage().1 <= budget);
        // An id larger than the whole budget is answered but not remembered.
        let huge = "y".repeat(budget);
        assert!(!ids.is_provisioned(&dir, &huge).await.unwrap());
        assert!(!ids.is_provisioned(&dir, &huge).await.unwrap());
        assert!(ids.usage().1 <= budget);
    }

    #[tokio::test]
    async fn while_the_store_is_down_only_remembered_ids_are_answered() {
        let ids = DeviceIds::new(1 << 20);
        let dir = Dir::default();
        assert!(!ids.is_provisioned(&dir, "anon-seen").await.unwrap());
        assert!(ids.is_provisioned(&dir, "dev-seen").await.unwrap());
        dir.down.store(true, Ordering::Relaxed);
        ids.lock().checked_at = None; // the next call checks the version
        assert!(!ids.is_provisioned(&dir, "anon-seen").await.unwrap(), "remembered");
        assert!(ids.is_provisioned(&dir, "dev-seen").await.unwrap(), "remembered");
        let before = dir.lookups.load(Ordering::Relaxed);
        let e = ids.is_provisioned(&dir, "anon-new").await;
        assert!(matches!(e, Err(StoreError::Unavailable(_))), "{e:?}");
        assert_eq!(dir.lookups.load(Ordering::Relaxed), before, "refused without asking the store");
        // Back: new ids are looked up again once the version check succeeds.
        dir.down.store(false, Ordering::Relaxed);
        ids.lock().checked_at = None;
        assert!(!ids.is_provisioned(&dir, "anon-new").await.unwrap());
    }

    #[tokio::test]
    async fn an_index_answers_new_ids_without_a_lookup_and_follows_the_version() {
        // More than one page of devices.
        let dir = Dir::listing((0..25_000).map(|i| format!("dev-{i:05}")));
        let ids = DeviceIds::new(1 << 20);
        for i in 0..1_000 {
            assert!(!ids.is_provisioned(&dir, &format!("anon-{i}")).await.unwrap());
        }
        assert!(ids.is_provisioned(&dir, "dev-00000").await.unwrap());
        assert!(ids.is_provisioned(&dir, "dev-24999").await.unwrap(), "the last page too");
        assert!(!ids.is_provisioned(&dir, "dev-25000").await.unwrap());
        assert_eq!(dir.lookups.load(Ordering::Relaxed), 0, "no single lookups");
        assert_eq!(dir.pages.load(Ordering::Relaxed), 3);
        assert_eq!(ids.usage(), (0, 0), "nothing remembered besides the index");

        // A device added: seen once the version check finds the change.
        dir.listed.lock().unwrap().as_mut().unwrap().push("new-device".into());
        dir.version.store(2, Ordering::Relaxed);
        assert!(!ids.is_provisioned(&dir, "new-device").await.unwrap(), "not checked yet");
        ids.lock().checked_at = None;
        assert!(ids.is_provisioned(&dir, "new-device").await.unwrap());
        assert_eq!(dir.pages.load(Ordering::Relaxed), 6, "reloaded once");

        // The store away: the index keeps answering every id, new ones too.
        dir.down.store(true, Ordering::Relaxed);
        ids.lock().checked_at = None;
        assert!(!ids.is_provisioned(&dir, "anon-during-outage").await.unwrap());
        assert!(ids.is_provisioned(&dir, "dev-00042").await.unwrap());
        assert_eq!(dir.lookups.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_fleet_larger_than_the_budget_falls_back_to_single_lookups() {
        let dir = Dir::listing((0..100).map(|i| format!("dev-{i}")));
        let ids = DeviceIds::new(50 * 8);
        assert!(ids.is_provisioned(&dir, "dev-7").await.unwrap());
        assert!(!ids.is_provisioned(&dir, "anon").await.unwrap());
        assert!(!ids.is_provisioned(&dir, "anon").await.unwrap());
        assert_eq!(dir.lookups.load(Ordering::Relaxed), 2, "asked once per id, then remembered");
        assert!(ids.lock().index.is_none());
    }
}
