//! ACL rules: list, create, read, replace, delete (per device by client id, per user name,
//! or global), and `POST /acl/check`: "may this client publish or subscribe to this topic?",
//! answered by the rules in force with the rule that decided.
//!
//! After every change the authorizer reloads at once, so the rule applies to live
//! connections from their next PUBLISH, SUBSCRIBE or delivery, without reconnecting.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tern_auth::provision::{self, AclRuleSummary, NewAclRule};
use tern_auth::{DecidedBy, Explanation};
use tern_broker::auth::Action;
use tern_broker::store::{AclAction, Permission};
use tern_protocol::QoS;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::audit::actor;
use crate::auth::{Authenticated, Role};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, SourceAddr};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclPermission {
    /// Grants the action.
    Allow,
    /// Forbids it; a matching deny overrides every allow.
    Deny,
}

/// What a rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AclRuleAction {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE (and the delivery of each message to a subscription).
    Subscribe,
    /// Both.
    All,
}

/// An ACL rule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AclRule {
    /// Rule id.
    pub id: i64,
    /// Allow or deny.
    pub permission: AclPermission,
    /// What it governs.
    pub action: AclRuleAction,
    /// Topic filter; `%c` and `%u` stand for the client id and user name.
    pub topic: String,
    /// Only for this client id (`null`: any).
    pub client_id: Option<String>,
    /// Only for this user name (`null`: any).
    pub username: Option<String>,
    /// Highest QoS allowed (allow rules).
    pub max_qos: Option<u8>,
    /// `false`: retained publishes refused (allow rules); `null`: no restriction.
    pub allow_retain: Option<bool>,
}

impl From<AclRuleSummary> for AclRule {
    fn from(r: AclRuleSummary) -> AclRule {
        AclRule {
            id: r.id,
            permission: if r.permission == "deny" { AclPermission::Deny } else { AclPermission::Allow },
            action: match r.action {
                "publish" => AclRuleAction::Publish,
                "subscribe" => AclRuleAction::Subscribe,
                _ => AclRuleAction::All,
            },
            topic: r.topic,
            client_id: r.client_id,
            username: r.username,
            max_qos: r.max_qos,
            allow_retain: r.allow_retain,
        }
    }
}

/// A rule to create, or to replace one with.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AclRuleBody {
    /// Allow or deny.
    pub permission: AclPermission,
    /// What it governs.
    pub action: AclRuleAction,
    /// Topic filter (wildcards `+` and `#` as whole levels, `#` last); `%c` and `%u` stand
    /// for the client id and user name.
    #[schema(min_length = 1, pattern = r"^(?:(?:\+|[^/+#]*)/)*(?:#|\+|[^/+#]*)$")]
    pub topic: String,
    /// Only for this client id (a per-device rule; 1 to 65535 bytes, no NUL).
    #[schema(min_length = 1, pattern = r"^[^\x00]*$")]
    pub client_id: Option<String>,
    /// Only for this user name (1 to 65535 bytes, no NUL).
    #[schema(min_length = 1, pattern = r"^[^\x00]*$")]
    pub username: Option<String>,
    /// Highest QoS allowed, 0 to 2 (allow rules only).
    #[schema(minimum = 0, maximum = 2)]
    pub max_qos: Option<u8>,
    /// Refuse retained publishes (allow rules only).
    #[serde(default)]
    pub no_retain: bool,
}

impl From<AclRuleBody> for NewAclRule {
    fn from(b: AclRuleBody) -> NewAclRule {
        NewAclRule {
            permission: match b.permission {
                AclPermission::Allow => Permission::Allow,
                AclPermission::Deny => Permission::Deny,
            },
            action: match b.action {
                AclRuleAction::Publish => AclAction::Publish,
                AclRuleAction::Subscribe => AclAction::Subscribe,
                AclRuleAction::All => AclAction::All,
            },
            topic: b.topic,
            client_id: b.client_id,
            username: b.username,
            max_qos: b.max_qos,
            no_retain: b.no_retain,
        }
    }
}

/// Filters of the rule listing.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RuleParams {
    /// Only rules for this client id.
    pub client_id: Option<String>,
    /// Only rules for this user name.
    pub username: Option<String>,
    /// Only rules without a client id and user name (`true`), or only with one (`false`).
    pub global: Option<bool>,
}

/// The rules, in id order (evaluation does not depend on order: a matching deny wins).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AclRuleList {
    /// The rules.
    pub items: Vec<AclRule>,
}

/// Reloads the authorizer after a change, so that it applies at once. The change is stored
/// either way; a failed reload is logged and retried by the authorizer's own polling.
async fn reload(state: &AppState) {
    if let Some(a) = &state.authorizer
        && let Err(e) = a.reload_now().await
    {
        tracing::warn!("ACL reload after an API change failed (the next poll retries): {e}");
    }
}

/// The ACL rules, with filters.
#[utoipa::path(get, path = "/api/v1/acl/rules", tag = "acl", security(("bearer" = [])),
    params(RuleParams),
    responses(
        (status = 200, description = "The rules", body = AclRuleList),
    ))]
pub async fn list_rules(
    State(state): State<AppState>,
    who: Authenticated,
    ApiQuery(q): ApiQuery<RuleParams>,
) -> Result<Json<AclRuleList>, ApiError> {
    who.require(Role::Viewer)?;
    let items = provision::list_acl_rules(state.store.as_ref())
        .await?
        .into_iter()
        .filter(|r| q.client_id.as_deref().is_none_or(|c| r.client_id.as_deref() == Some(c)))
        .filter(|r| q.username.as_deref().is_none_or(|u| r.username.as_deref() == Some(u)))
        .filter(|r| q.global.is_none_or(|g| g == (r.client_id.is_none() && r.username.is_none())))
        .map(AclRule::from)
        .collect();
    Ok(Json(AclRuleList { items }))
}

/// Creates a rule; it applies to live connections at once.
#[utoipa::path(post, path = "/api/v1/acl/rules", tag = "acl", security(("bearer" = [])),
    request_body = AclRuleBody,
    responses(
        (status = 201, description = "Created", body = AclRule,
            headers(("Location" = String, description = "The rule's URL"))),
        (status = 400, description = "Invalid rule", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_rule(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiJson(body): ApiJson<AclRuleBody>,
) -> Result<Response, ApiError> {
    who.require(Role::Operator)?;
    let ip = source.ip_text();
    let rule = provision::add_acl_rule(state.store.as_ref(), body.into(), actor(&who, ip.as_deref())).await?;
    reload(&state).await;
    let id = rule.id;
    let mut res = (StatusCode::CREATED, Json(AclRule::from(rule))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/acl/rules/{id}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// One rule.
#[utoipa::path(get, path = "/api/v1/acl/rules/{id}", tag = "acl", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Rule id")),
    responses(
        (status = 200, description = "The rule", body = AclRule),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_rule(
    State(state): State<AppState>,
    who: Authenticated,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<AclRule>, ApiError> {
    who.require(Role::Viewer)?;
    Ok(Json(provision::get_acl_rule(state.store.as_ref(), id).await?.into()))
}

/// Replaces a rule; the change applies to live connections at once.
#[utoipa::path(put, path = "/api/v1/acl/rules/{id}", tag = "acl", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Rule id")),
    request_body = AclRuleBody,
    responses(
        (status = 200, description = "Replaced", body = AclRule),
        (status = 400, description = "Invalid rule", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replace_rule(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<AclRuleBody>,
) -> Result<Json<AclRule>, ApiError> {
    who.require(Role::Operator)?;
    let ip = source.ip_text();
    let rule =
        provision::update_acl_rule(state.store.as_ref(), id, body.into(), actor(&who, ip.as_deref())).await?;
    reload(&state).await;
    Ok(Json(rule.into()))
}

/// Deletes a rule; the change applies to live connections at once.
#[utoipa::path(delete, path = "/api/v1/acl/rules/{id}", tag = "acl", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Rule id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs the operator role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such rule", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_rule(
    State(state): State<AppState>,
    who: Authenticated,
    source: SourceAddr,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    who.require(Role::Operator)?;
    let ip = source.ip_text();
    provision::remove_acl_rule(state.store.as_ref(), id, actor(&who, ip.as_deref())).await?;
    reload(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Publish or subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckAction {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE to a topic filter.
    Subscribe,
}

/// The question for `/acl/check`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AclCheckRequest {
    /// The client id.
    pub client_id: String,
    /// The user name it authenticates as (devices: their user name, or their client id if
    /// they have none).
    pub username: Option<String>,
    /// Publish or subscribe.
    pub action: CheckAction,
    /// Topic name (publish) or filter (subscribe).
    #[schema(min_length = 1)]
    pub topic: String,
    /// QoS, 0 to 2 (default 0).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub qos: u8,
    /// RETAIN flag of the publish (default false).
    #[serde(default)]
    pub retain: bool,
}

/// The answer of `/acl/check`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AclCheckResult {
    /// Whether it is allowed.
    pub allowed: bool,
    /// What decided: `rule`, `default` (no rule concerned it: `auth.acl_default`) or
    /// `not_loaded` (no rule set loaded yet: everything is refused).
    pub decided_by: String,
    /// The rule that decided, when `decided_by` is `rule`.
    pub rule: Option<AclRule>,
}

/// Asks the rules in force whether a client may publish or subscribe to a topic, and which
/// rule decided. Inline rules of a client's JWT are not considered.
#[utoipa::path(post, path = "/api/v1/acl/check", tag = "acl", security(("bearer" = [])),
    request_body = AclCheckRequest,
    responses(
        (status = 200, description = "The decision", body = AclCheckResult),
        (status = 503, description = "Authorization by rules is not configured on this broker, the database is unavailable, or the request timed out", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn check(
    State(state): State<AppState>,
    who: Authenticated,
    ApiJson(req): ApiJson<AclCheckRequest>,
) -> Result<Json<AclCheckResult>, ApiError> {
    who.require(Role::Viewer)?;
    let authorizer = state
        .authorizer
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("ACL rules are not in use on this broker".into()))?;
    let qos = QoS::from_u8(req.qos).ok_or_else(|| ApiError::field("qos", "must be 0, 1 or 2"))?;
    let action = match req.action {
        CheckAction::Publish => Action::Publish,
        CheckAction::Subscribe => Action::Subscribe,
    };
    let Some(Explanation { allowed, decided_by }) =
        authorizer.explain(&req.client_id, req.username.as_deref(), action, &req.topic, qos, req.retain)
    else {
        let what = if action == Action::Publish { "topic name" } else { "topic filter" };
        return Err(ApiError::field("topic", format!("not a valid MQTT {what}")));
    };
    let (decided_by, rule) = match decided_by {
        DecidedBy::Rule(id) => {
            let rule = provision::get_acl_rule(state.store.as_ref(), id).await.ok().map(AclRule::from);
            ("rule", rule)
        }
        DecidedBy::Default => ("default", None),
        DecidedBy::NotLoaded => ("not_loaded", None),
    };
    Ok(Json(AclCheckResult { allowed, decided_by: decided_by.into(), rule }))
}
