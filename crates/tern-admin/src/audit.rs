//! The audit log: one entry per change made through the API (actor, action, target, detail
//! with `before` / `after`, time, source address), and its listing with filters.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tern_auth::provision::Actor;
use tern_broker::store::{AuditEntry, AuditQuery};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Authenticated, Role};
use crate::dto::{MAX_LIMIT, cut_page, limit, millis_rfc3339};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiQuery, SourceAddr};

/// The provisioning actor for `who` calling from `source` (for `tern_auth::provision`).
pub(crate) fn actor<'a>(who: &'a Authenticated, source: Option<&'a str>) -> Actor<'a> {
    Actor { name: &who.username, source }
}

/// Appends an audit entry for a change that took effect. A failure is logged, not returned:
/// the change has already happened and the caller must learn that it did.
pub(crate) async fn record(
    state: &AppState,
    who: &Authenticated,
    source: SourceAddr,
    action: &str,
    target: Option<String>,
    detail: serde_json::Value,
) {
    let entry = AuditEntry {
        id: 0,
        at: crate::auth::now_millis(),
        actor: who.username.clone(),
        action: action.to_string(),
        target,
        source: source.ip_text(),
        detail: detail.to_string(),
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        tracing::error!(
            request_id = ?crate::error::current_request_id(),
            action, actor = %who.username, "audit entry not written: {e}"
        );
    }
}

/// Filters and paging of the audit log.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this actor's entries (admin user name, `key:<id>`, or `cli`).
    pub actor: Option<String>,
    /// Only actions starting with this (`device.` for every device change).
    pub action: Option<String>,
    /// Only entries about this target (`device:<client id>`, `acl:<id>`, `admin:<name>`, ...).
    pub target: Option<String>,
    /// Only entries at or after this time (Unix milliseconds).
    pub since: Option<i64>,
    /// Only entries before this time (Unix milliseconds).
    pub until: Option<i64>,
    /// Cursor: the `next` of the previous page.
    pub before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One audit entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditItem {
    /// Entry id (increasing).
    pub id: i64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who: admin user name, `key:<id>` for an API key, `cli` for the command line.
    pub actor: String,
    /// What: `device.add`, `acl.update`, `client.kick`, ...
    pub action: String,
    /// What it was done to, if anything in particular.
    pub target: Option<String>,
    /// Source IP address of the request (`null` for the command line).
    pub source: Option<String>,
    /// Details, usually `before` and `after`.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<AuditEntry> for AuditItem {
    fn from(e: AuditEntry) -> AuditItem {
        AuditItem {
            id: e.id,
            at: millis_rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            target: e.target,
            source: e.source,
            detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::String(e.detail)),
        }
    }
}

/// One page of the audit log, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The entries, newest first.
    pub items: Vec<AuditItem>,
    /// Pass as `before` for the next (older) page (`null`: this was the last).
    pub next: Option<i64>,
}

/// The audit log, newest first, with filters and cursor paging. Operators and admins only.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])),
    params(AuditParams),
    responses(
        (status = 200, description = "One page of entries", body = AuditPage),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_audit(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    who.require(Role::Operator)?;
    let n = limit(q.limit)?;
    debug_assert!(n <= MAX_LIMIT as usize);
    let query = AuditQuery {
        actor: q.actor,
        action_prefix: q.action,
        target: q.target,
        since: q.since,
        until: q.until,
        before_id: q.before,
        limit: n as u32 + 1,
    };
    let mut items = state.store.query_audit(&query).await?;
    let next = cut_page(&mut items, n, |e| e.id);
    Ok(Json(AuditPage { items: items.into_iter().map(AuditItem::from).collect(), next }))
}
