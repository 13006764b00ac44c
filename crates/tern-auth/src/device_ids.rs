//! Whether a client id belongs to a provisioned device, remembered between CONNECTs.
//!
//! An anonymous CONNECT must not take a provisioned device's client id, so each one used to
//! cost a directory query: on SQLite a round trip to the database thread, which capped the
//! connect rate. The answers are now remembered and all forgotten whenever the directory's
//! version changes (checked at most once per `RECHECK`, by the connect that finds the
//! check due), so a device provisioned or removed is seen within about that time, like
//! ACL changes.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tern_broker::store::{DirectoryStore, StoreError};

/// How often the directory's version is compared.
const RECHECK: Duration = Duration::from_secs(1);
/// Answers kept at most; past this the memory is started afresh (anonymous clients choose
/// their ids, so the set must be bounded).
const MAX_ENTRIES: usize = 100_000;

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
}

/// Remembered answers to "is this client id a provisioned device's?".
#[derive(Debug, Default)]
pub(crate) struct DeviceIds {
    state: Mutex<State>,
}

impl DeviceIds {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `client_id` names a provisioned device (enabled or not).
    pub(crate) async fn is_provisioned(
        &self,
        store: &dyn DirectoryStore,
        client_id: &str,
    ) -> Result<bool, StoreError> {
        let due = {
            let mut st = self.lock();
            let due = st.checked_at.is_none_or(|t| t.elapsed() >= RECHECK);
            if due {
                // Claimed: concurrent CONNECTs do not all ask.
                st.checked_at = Some(Instant::now());
            }
            due
        };
        if due {
            match store.directory_version().await {
                Ok(v) => {
                    let mut st = self.lock();
                    if st.version != Some(v) {
                        st.version = Some(v);
                        st.known.clear();
                        st.epoch += 1;
                    }
                }
                // With answers from a known version, keep using them while the store is
                // away (a device change made meanwhile is seen once it is back).
                Err(e) if self.lock().version.is_some() => {
                    tracing::warn!(error = %e, "directory version check failed; using remembered device ids");
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
            st.epoch
        };
        let provisioned = store.device_by_client_id(client_id).await?.is_some();
        let mut st = self.lock();
        if st.epoch == epoch && st.version.is_some() {
            if st.known.len() >= MAX_ENTRIES {
                st.known.clear();
            }
            st.known.insert(client_id.into(), provisioned);
        }
        Ok(provisioned)
    }
}
