//! [`AclAuthorizer`]: the broker's `Authorizer` over the directory store's ACL rules, held in
//! memory and swapped atomically when the store's directory version changes. A failed reload
//! keeps the last good rules; until the first load succeeds every check is refused.
//!
//! SUBSCRIBE is decided by filter inclusion (an allow rule must cover the filter, a deny rule
//! refuses it only when it covers it too); deny rules that merely intersect a granted filter
//! are enforced per delivered message by [`Authorizer::may_receive`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tern_broker::auth::{Action, Authorizer, Principal};
use tern_broker::store::DirectoryStore;
use tern_protocol::QoS;
use tern_protocol::topic::validate_topic_filter;

use crate::acl::{Ctx, Decision, Request, RuleSet, TopicKind, evaluate_inline};
use crate::config::{AclPolicy, AuthConfig};
use crate::error::AuthError;

/// Authorization by ACL rules (stored rules, after the principal's inline JWT rules).
pub struct AclAuthorizer {
    store: Arc<dyn DirectoryStore>,
    default: AclPolicy,
    reload_every: Duration,
    /// `None` until the first successful load: deny everything.
    rules: ArcSwapOption<RuleSet>,
    version: AtomicU64,
    /// Whether the loaded rule set is empty and the default allows (see `is_permissive`);
    /// an atomic so the broker's per-delivery check costs one load.
    permissive: AtomicBool,
    /// The directory version of the loaded rules; also serializes reloads.
    loaded: tokio::sync::Mutex<Option<i64>>,
}

impl std::fmt::Debug for AclAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclAuthorizer")
            .field("default", &self.default)
            .field("rules", &self.rules.load().as_ref().map(|r| r.len()))
            .field("version", &self.version.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl AclAuthorizer {
    /// An authorizer with no rules loaded yet (refusing everything until [`Self::reload_now`]
    /// succeeds). Prefer [`Self::start`].
    pub fn new(store: Arc<dyn DirectoryStore>, config: &AuthConfig) -> AclAuthorizer {
        AclAuthorizer {
            store,
            default: config.acl_default,
            reload_every: Duration::from_secs(config.acl_reload_secs.max(1)),
            rules: ArcSwapOption::empty(),
            version: AtomicU64::new(0),
            permissive: AtomicBool::new(false),
            loaded: tokio::sync::Mutex::new(None),
        }
    }

    /// Creates the authorizer, loads the rules once (a failure is logged and everything is
    /// refused until a later poll succeeds) and spawns the polling task, which ends when the
    /// authorizer is dropped.
    pub async fn start(store: Arc<dyn DirectoryStore>, config: &AuthConfig) -> Arc<AclAuthorizer> {
        let this = Arc::new(AclAuthorizer::new(store, config));
        if let Err(e) = this.reload_now().await {
            tracing::error!(error = %e, "initial ACL load failed: refusing every publish and subscribe until a reload succeeds");
        }
        this.spawn_reloader();
        this
    }

    /// Whether a rule set has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.rules.load().is_some()
    }

    /// Number of stored rules in force (0 before the first load).
    pub fn rule_count(&self) -> usize {
        self.rules.load().as_ref().map_or(0, |r| r.len())
    }

    /// Reloads the rules now (the admin API calls this after changing rules). On failure the
    /// previous rules stay in force and the error is returned (and logged).
    pub async fn reload_now(&self) -> Result<(), AuthError> {
        let mut loaded = self.loaded.lock().await;
        let res = self.load_rules().await;
        match res {
            Ok((dir_version, set)) => {
                let n = set.len();
                // Off before rules appear, on only after they are gone: never permissive while
                // a rule is in force.
                let permissive = n == 0 && self.default == AclPolicy::Allow;
                if !permissive {
                    self.permissive.store(false, Ordering::Release);
                }
                self.rules.store(Some(Arc::new(set)));
                if permissive {
                    self.permissive.store(true, Ordering::Release);
                }
                *loaded = Some(dir_version);
                let v = self.version.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::info!(
                    rules = n,
                    directory_version = dir_version,
                    acl_version = v,
                    "ACL rules loaded"
                );
                Ok(())
            }
            Err(e) => {
                if self.is_loaded() {
                    tracing::error!(error = %e, "ACL reload failed: keeping the previous rules");
                } else {
                    tracing::error!(error = %e, "ACL load failed: no rules loaded yet, refusing everything");
                }
                Err(e)
            }
        }
    }

    async fn load_rules(&self) -> Result<(i64, RuleSet), AuthError> {
        // Read the version first: a change racing with the listing is picked up next poll.
        let dir_version = self.store.directory_version().await?;
        let rules = self.store.list_acl_rules().await?;
        Ok((dir_version, RuleSet::compile(&rules)?))
    }

    /// Reloads if the store's directory version differs from the loaded one (or nothing is
    /// loaded); returns whether a reload happened.
    pub async fn poll(&self) -> Result<bool, AuthError> {
        let current = self.store.directory_version().await.inspect_err(|e| {
            tracing::error!(error = %e, "ACL poll: cannot read the directory version; keeping the current rules");
        })?;
        let loaded = *self.loaded.lock().await;
        if self.is_loaded() && loaded == Some(current) {
            return Ok(false);
        }
        self.reload_now().await.map(|()| true)
    }

    /// Spawns the task polling every `acl_reload_secs`; it stops when the authorizer is dropped.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = self.reload_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let _ = this.poll().await;
            }
        })
    }

    /// The decision for one request, by inline rules, stored rules, then the default policy.
    /// Allocation-free.
    fn decide(&self, principal: &Principal, req: &Request<'_>) -> bool {
        let guard = self.rules.load();
        let Some(rules) = guard.as_deref() else {
            return false;
        };
        let ctx = Ctx::new(&principal.client_id, principal.username.as_deref());
        if let Some(inline) = principal.inline_acl.as_deref() {
            match evaluate_inline(inline, req, &ctx) {
                Decision::Allow => return true,
                Decision::Deny => return false,
                Decision::NoMatch => {}
            }
        }
        match rules.evaluate(req, &ctx) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::NoMatch => self.default == AclPolicy::Allow,
        }
    }

    /// A PUBLISH or SUBSCRIBE request. A subscribe filter is taken verbatim: the broker has
    /// already removed any `$share/{group}/` prefix, and parsing one again would check
    /// `$share/g/$share/h/x` as `x` while it is routed as `$share/h/x`.
    fn request(action: Action, topic: &str, qos: QoS, retain: bool) -> Option<Request<'_>> {
        let kind = match action {
            Action::Publish => TopicKind::Name,
            Action::Subscribe => {
                validate_topic_filter(topic).ok()?;
                TopicKind::Filter
            }
            Action::All => return None,
        };
        Some(Request { action, topic, kind, qos: qos.as_u8(), retain: retain && action == Action::Publish })
    }
}

/// What decided an [`AclAuthorizer::explain`] answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The stored rule with this id.
    Rule(i64),
    /// No rule concerned the request: the default policy (`auth.acl_default`).
    Default,
    /// No rule set is loaded yet (the store has not answered): everything is refused.
    NotLoaded,
}

/// The answer to "may this client publish / subscribe to this topic?", with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Explanation {
    /// Allowed or not.
    pub allowed: bool,
    /// What decided.
    pub decided_by: DecidedBy,
}

impl AclAuthorizer {
    /// Whether the stored rules and the default policy allow `client_id` / `username` to
    /// publish to a topic name or subscribe to a filter, and which rule decided (inline JWT
    /// rules are not considered: they belong to a connection's token). `None` when the
    /// topic is not a valid name (publish) or filter (subscribe), or `action` is `All`.
    pub fn explain(
        &self,
        client_id: &str,
        username: Option<&str>,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Option<Explanation> {
        if action == Action::Publish && tern_protocol::topic::validate_topic_name(topic).is_err() {
            return None;
        }
        let req = Self::request(action, topic, qos, retain)?;
        let guard = self.rules.load();
        let Some(rules) = guard.as_deref() else {
            return Some(Explanation { allowed: false, decided_by: DecidedBy::NotLoaded });
        };
        let ctx = Ctx::new(client_id, username);
        Some(match rules.explain(&req, &ctx) {
            (Decision::Allow, Some(id)) => Explanation { allowed: true, decided_by: DecidedBy::Rule(id) },
            (Decision::Deny, Some(id)) => Explanation { allowed: false, decided_by: DecidedBy::Rule(id) },
            _ => Explanation { allowed: self.default == AclPolicy::Allow, decided_by: DecidedBy::Default },
        })
    }
}

impl Authorizer for AclAuthorizer {
    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// With no stored rule and an `allow` default, every request of a principal without
    /// inline rules is allowed: the broker then skips the lookups (and the per-delivery
    /// check) until a rule is added.
    fn is_permissive(&self) -> bool {
        self.permissive.load(Ordering::Acquire)
    }

    fn check(&self, principal: &Principal, action: Action, topic: &str, qos: QoS, retain: bool) -> bool {
        let allowed =
            Self::request(action, topic, qos, retain).is_some_and(|req| self.decide(principal, &req));
        if !allowed {
            tracing::debug!(
                client_id = %principal.client_id,
                username = principal.username.as_deref().unwrap_or(""),
                ?action,
                topic,
                qos = qos.as_u8(),
                retain,
                "ACL denied"
            );
        }
        allowed
    }

    /// The subscribe rules applied to the topic name of a message about to be delivered at
    /// `qos` (name matching; for a name without wildcards this is exactly what
    /// `check(Subscribe, name)` answers, so both may share the broker's decision cache).
    /// Inline rules first, then stored rules, then the default policy; no allocation, and
    /// the name is never parsed as a filter (a name like `$share/x` stays what it is).
    fn may_receive(&self, principal: &Principal, topic: &str, qos: QoS) -> bool {
        let req = Request {
            action: Action::Subscribe,
            topic,
            kind: TopicKind::Name,
            qos: qos.as_u8(),
            retain: false,
        };
        let allowed = self.decide(principal, &req);
        if !allowed {
            tracing::debug!(
                client_id = %principal.client_id,
                username = principal.username.as_deref().unwrap_or(""),
                topic,
                qos = qos.as_u8(),
                "ACL denied delivery"
            );
        }
        allowed
    }
}
