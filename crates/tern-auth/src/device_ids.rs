//! Whether a client id belongs to a provisioned device, remembered between CONNECTs.
//!
//! An anonymous CONNECT must not take a provisioned device's client id, so each one used to
//! cost a directory query: on SQLite a round trip to the database thread, which capped the
//! connect rate. The answers are now remembered and all forgotten whenever the directory's
//! version changes (checked at most once per `RECHECK`, by the connect that finds the
//! check due), so a device provisioned or removed is seen within about that time, like
//! ACL changes. The memory is bounded in bytes, client ids included.

use std::collections::HashMap;
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
    /// Bumped whenever `known` is cleared, so an answer looked up before a clear is not
    /// stored after it.
    epoch: u64,
    known: HashMap<Box<str>, bool>,
    /// Bytes `known` is accounted for (see [`entry_bytes`]).
    bytes: usize,
    /// The last version check failed: ids not remembered are refused at once rather than
    /// each waiting for the pool's acquire timeout (a CONNECT would otherwise spend its
    /// whole handshake deadline on two such waits).
    down: bool,
}

/// Remembered answers to "is this client id a provisioned device's?", bounded in bytes
/// (`auth.device_id_cache_bytes`): anonymous clients choose their ids, so past the budget
/// the memory is started afresh.
#[derive(Debug)]
pub(crate) struct DeviceIds {
    max_bytes: usize,
    state: Mutex<State>,
}

impl DeviceIds {
    /// Remembers at most about `max_bytes` of answers (0: remember nothing, ask every time).
    pub(crate) fn new(max_bytes: usize) -> DeviceIds {
        DeviceIds { max_bytes, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
            let version = if down {
                tokio::time::timeout(DOWN_RECHECK_LIMIT, store.directory_version()).await.unwrap_or_else(
                    |_| Err(StoreError::Unavailable("directory version check timed out".into())),
                )
            } else {
                store.directory_version().await
            };
            match version {
                Ok(v) => {
                    let mut st = self.lock();
                    st.down = false;
                    if st.version != Some(v) {
                        st.version = Some(v);
                        st.known.clear();
                        st.bytes = 0;
                        st.epoch += 1;
                    }
                }
                // With answers from a known version, keep using them while the store is
                // away (a device change made meanwhile is seen once it is back).
                Err(e) if self.lock().version.is_some() => {
                    if !down {
                        tracing::warn!(error = %e, "directory version check failed; using remembered device ids");
                    }
                    self.lock().down = true;
                }
                Err(e) => {
                    self.lock().checked_at = None;
                    return Err(e);
                }
            }
        }
        let epoch = {
            let st = self.lock();
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
        if st.epoch == epoch && st.version.is_some() && bytes <= self.max_bytes {
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

    /// A directory where only `dev-*` client ids are provisioned, counting lookups.
    #[derive(Debug, Default)]
    struct Dir {
        lookups: AtomicUsize,
        /// The database is away: every call fails.
        down: std::sync::atomic::AtomicBool,
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
            let d = client_id.starts_with("dev-").then(|| Device {
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
            Box::pin(std::future::ready(Ok(1)))
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
}
