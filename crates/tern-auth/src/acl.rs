//! The ACL engine: compiled rule sets indexed by selector, `%c`/`%u` placeholders expanded
//! without allocating, topic-name matching for PUBLISH, filter inclusion (allow) and filter
//! intersection (deny) for SUBSCRIBE, and the deny-wins evaluation.

use std::collections::HashMap;

use tern_broker::auth::{Action, InlineAclRule};
use tern_broker::store::{AclAction, AclRule, Permission};
use tern_protocol::topic::validate_topic_filter;

use crate::error::AuthError;

/// One level of a rule's topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lvl<'a> {
    /// `+`
    Plus,
    /// `#`
    Hash,
    /// A literal level.
    Lit(&'a str),
    /// A level containing `%c` and/or `%u`.
    Pat(&'a str),
}

fn level_of(s: &str) -> Lvl<'_> {
    match s {
        "+" => Lvl::Plus,
        "#" => Lvl::Hash,
        _ if s.contains("%c") || s.contains("%u") => Lvl::Pat(s),
        _ => Lvl::Lit(s),
    }
}

/// An owned, pre-classified level (compiled rules).
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnedLvl {
    Plus,
    Hash,
    Lit(Box<str>),
    Pat(Box<str>),
}

impl OwnedLvl {
    fn as_lvl(&self) -> Lvl<'_> {
        match self {
            OwnedLvl::Plus => Lvl::Plus,
            OwnedLvl::Hash => Lvl::Hash,
            OwnedLvl::Lit(s) => Lvl::Lit(s),
            OwnedLvl::Pat(s) => Lvl::Pat(s),
        }
    }
}

/// The principal's placeholder values, classified once per check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    client_id: &'a str,
    username: Option<&'a str>,
    /// The client id contains no `+`, `#` or `/`.
    cid_safe: bool,
    /// The user name (if any) contains no `+`, `#` or `/`.
    user_safe: bool,
}

fn safe_value(s: &str) -> bool {
    !s.bytes().any(|b| matches!(b, b'+' | b'#' | b'/'))
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(client_id: &'a str, username: Option<&'a str>) -> Ctx<'a> {
        Ctx {
            client_id,
            username,
            cid_safe: safe_value(client_id),
            user_safe: username.is_none_or(safe_value),
        }
    }
}

/// Whether a placeholder pattern level equals the concrete level `t` once expanded.
fn pat_eq(pat: &str, t: &str, ctx: &Ctx<'_>) -> bool {
    let mut p = pat;
    let mut rest = t;
    while !p.is_empty() {
        let (value, tail) = if let Some(tail) = p.strip_prefix("%c") {
            (ctx.client_id, tail)
        } else if let Some(tail) = p.strip_prefix("%u") {
            (ctx.username.unwrap_or(""), tail)
        } else {
            // A literal run up to the next '%' (a lone '%' is literal).
            let end = p[1..].find('%').map_or(p.len(), |i| i + 1);
            (&p[..end], &p[end..])
        };
        match rest.strip_prefix(value) {
            Some(r) => rest = r,
            None => return false,
        }
        p = tail;
    }
    rest.is_empty()
}

fn starts_with_wildcard<'a>(mut levels: impl Iterator<Item = Lvl<'a>>) -> bool {
    matches!(levels.next(), Some(Lvl::Plus | Lvl::Hash))
}

/// Whether rule filter `rule` matches topic name `name` (MQTT 4.7; names starting with `$` are
/// not matched by a filter starting with a wildcard).
fn matches_name<'a>(rule: impl Iterator<Item = Lvl<'a>> + Clone, name: &str, ctx: &Ctx<'_>) -> bool {
    if name.starts_with('$') && starts_with_wildcard(rule.clone()) {
        return false;
    }
    let mut r = rule;
    let mut n = name.split('/');
    loop {
        match (r.next(), n.next()) {
            (Some(Lvl::Hash), _) | (None, None) => return true,
            (Some(Lvl::Plus), Some(_)) => {}
            (Some(Lvl::Lit(l)), Some(x)) if l == x => {}
            (Some(Lvl::Pat(p)), Some(x)) if pat_eq(p, x, ctx) => {}
            _ => return false,
        }
    }
}

/// Whether every topic matched by the requested `filter` is matched by `rule` (filter
/// inclusion): `a/#` covers `a/+/b`, `a/+` does not cover `a/#`.
fn covers<'a>(rule: impl Iterator<Item = Lvl<'a>> + Clone, filter: &str, ctx: &Ctx<'_>) -> bool {
    if filter.starts_with('$') && starts_with_wildcard(rule.clone()) {
        return false;
    }
    let mut r = rule;
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some(Lvl::Hash), _) | (None, None) => return true,
            (Some(_), Some("#")) => return false,
            (Some(Lvl::Plus), Some(_)) => {}
            (Some(Lvl::Lit(l)), Some(x)) if x != "+" && l == x => {}
            (Some(Lvl::Pat(p)), Some(x)) if x != "+" && pat_eq(p, x, ctx) => {}
            _ => return false,
        }
    }
}

/// Whether some topic name is matched by both `rule` and the requested `filter` (a deny rule
/// refuses every subscription that could receive a topic it forbids).
fn intersects<'a>(rule: impl Iterator<Item = Lvl<'a>> + Clone, filter: &str, ctx: &Ctx<'_>) -> bool {
    let rule_wild = starts_with_wildcard(rule.clone());
    let filter_wild = filter.starts_with('+') || filter.starts_with('#');
    if (filter.starts_with('$') && rule_wild) || (filter_wild && rule_starts_with_dollar(rule.clone(), ctx)) {
        return false;
    }
    let mut r = rule;
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some(Lvl::Hash), _) | (_, Some("#")) | (None, None) => return true,
            (Some(_), Some("+")) | (Some(Lvl::Plus), Some(_)) => {}
            (Some(Lvl::Lit(l)), Some(x)) if l == x => {}
            (Some(Lvl::Pat(p)), Some(x)) if pat_eq(p, x, ctx) => {}
            _ => return false,
        }
    }
}

fn rule_starts_with_dollar<'a>(mut rule: impl Iterator<Item = Lvl<'a>>, ctx: &Ctx<'_>) -> bool {
    match rule.next() {
        Some(Lvl::Lit(l)) => l.starts_with('$'),
        Some(Lvl::Pat(p)) => {
            p.starts_with('$')
                || (p.starts_with("%c") && ctx.client_id.starts_with('$'))
                || (p.starts_with("%u") && ctx.username.is_some_and(|u| u.starts_with('$')))
        }
        _ => false,
    }
}

/// One access request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) action: Action,
    /// A topic name (publish) or a filter without any `$share/{group}/` prefix (subscribe).
    pub(crate) topic: &'a str,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
}

/// The parts of a rule the evaluation needs, whatever its origin.
#[derive(Debug, Clone, Copy)]
struct RuleCore {
    allow: bool,
    action: Action,
    max_qos: Option<u8>,
    allow_retain: Option<bool>,
    uses_c: bool,
    uses_u: bool,
}

/// What one rule says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    /// Does not concern the request.
    None,
    /// Forbids it.
    Deny,
    /// Grants it.
    Grant,
    /// An allow rule that matches the topic but not the QoS / retain limits.
    Restricted,
}

fn action_covers(rule: Action, req: Action) -> bool {
    rule == Action::All || rule == req
}

fn rule_hit<'a>(
    core: RuleCore,
    levels: impl Iterator<Item = Lvl<'a>> + Clone,
    req: &Request<'_>,
    ctx: &Ctx<'_>,
) -> Hit {
    if !action_covers(core.action, req.action) {
        return Hit::None;
    }
    // Placeholders: a missing user name makes a %u rule inapplicable; a value containing
    // '+', '#' or '/' could widen the rule, so an allow rule does not apply and a deny rule
    // applies to every topic (fail closed).
    if core.uses_u && ctx.username.is_none() {
        return Hit::None;
    }
    let unsafe_value = (core.uses_c && !ctx.cid_safe) || (core.uses_u && !ctx.user_safe);
    if unsafe_value {
        return if core.allow { Hit::None } else { Hit::Deny };
    }
    if !core.allow {
        let hit = match req.action {
            Action::Subscribe => intersects(levels, req.topic, ctx),
            _ => matches_name(levels, req.topic, ctx),
        };
        return if hit { Hit::Deny } else { Hit::None };
    }
    let hit = match req.action {
        Action::Subscribe => covers(levels, req.topic, ctx),
        _ => matches_name(levels, req.topic, ctx),
    };
    if !hit {
        return Hit::None;
    }
    let qos_ok = core.max_qos.is_none_or(|m| req.qos <= m);
    let retain_ok = !(req.retain && core.allow_retain == Some(false));
    if qos_ok && retain_ok { Hit::Grant } else { Hit::Restricted }
}

/// The outcome of evaluating a list of rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A rule grants it and none forbids it.
    Allow,
    /// A rule forbids it, or only QoS/retain-restricted allow rules match.
    Deny,
    /// No rule concerns it.
    NoMatch,
}

#[derive(Debug, Default)]
struct Tally {
    granted: bool,
    restricted: bool,
}

impl Tally {
    /// Folds one hit in; `Some(Deny)` ends the evaluation.
    fn add(&mut self, hit: Hit) -> Option<Decision> {
        match hit {
            Hit::Deny => return Some(Decision::Deny),
            Hit::Grant => self.granted = true,
            Hit::Restricted => self.restricted = true,
            Hit::None => {}
        }
        None
    }

    fn finish(&self) -> Decision {
        if self.granted {
            Decision::Allow
        } else if self.restricted {
            Decision::Deny
        } else {
            Decision::NoMatch
        }
    }
}

/// Evaluates inline (JWT) rules.
pub(crate) fn evaluate_inline(rules: &[InlineAclRule], req: &Request<'_>, ctx: &Ctx<'_>) -> Decision {
    let mut tally = Tally::default();
    for r in rules {
        let core = RuleCore {
            allow: r.allow,
            action: r.action,
            max_qos: r.max_qos.map(tern_protocol::QoS::as_u8),
            allow_retain: r.retain,
            uses_c: r.topic.contains("%c"),
            uses_u: r.topic.contains("%u"),
        };
        if let Some(d) = tally.add(rule_hit(core, r.topic.split('/').map(level_of), req, ctx)) {
            return d;
        }
    }
    tally.finish()
}

/// Checks a rule's topic filter (placeholders allowed) and QoS limit.
pub(crate) fn validate_rule_topic(topic: &str) -> Result<(), String> {
    validate_topic_filter(topic).map_err(|e| format!("invalid topic filter {topic:?}: {e}"))
}

/// A stored rule, compiled.
#[derive(Debug, Clone)]
struct CompiledRule {
    id: i64,
    client_id: Option<Box<str>>,
    username: Option<Box<str>>,
    core: RuleCore,
    levels: Box<[OwnedLvl]>,
}

impl CompiledRule {
    fn compile(rule: &AclRule) -> Result<CompiledRule, AuthError> {
        let invalid = |reason: String| AuthError::InvalidRule { id: rule.id, reason };
        validate_rule_topic(&rule.topic).map_err(invalid)?;
        if let Some(q) = rule.max_qos
            && q > 2
        {
            return Err(invalid(format!("max_qos {q} is not 0, 1 or 2")));
        }
        let levels = rule
            .topic
            .split('/')
            .map(|l| match level_of(l) {
                Lvl::Plus => OwnedLvl::Plus,
                Lvl::Hash => OwnedLvl::Hash,
                Lvl::Lit(s) => OwnedLvl::Lit(s.into()),
                Lvl::Pat(s) => OwnedLvl::Pat(s.into()),
            })
            .collect();
        Ok(CompiledRule {
            id: rule.id,
            client_id: rule.client_id.as_deref().map(Into::into),
            username: rule.username.as_deref().map(Into::into),
            core: RuleCore {
                allow: rule.permission == Permission::Allow,
                action: match rule.action {
                    AclAction::Publish => Action::Publish,
                    AclAction::Subscribe => Action::Subscribe,
                    AclAction::All => Action::All,
                },
                max_qos: rule.max_qos,
                allow_retain: rule.allow_retain,
                uses_c: rule.topic.contains("%c"),
                uses_u: rule.topic.contains("%u"),
            },
            levels,
        })
    }

    fn selects(&self, ctx: &Ctx<'_>) -> bool {
        self.client_id.as_deref().is_none_or(|c| c == ctx.client_id)
            && self.username.as_deref().is_none_or(|u| Some(u) == ctx.username)
    }
}

/// The stored rules, compiled and indexed by selector.
#[derive(Debug, Default)]
pub(crate) struct RuleSet {
    rules: Vec<CompiledRule>,
    /// Rules without selectors.
    everyone: Vec<u32>,
    /// Rules selecting a client id (possibly a user name too).
    by_client: HashMap<Box<str>, Vec<u32>>,
    /// Rules selecting only a user name.
    by_user: HashMap<Box<str>, Vec<u32>>,
}

impl RuleSet {
    /// Compiles rules; any invalid rule refuses the whole set.
    pub(crate) fn compile(rules: &[AclRule]) -> Result<RuleSet, AuthError> {
        let mut set = RuleSet::default();
        for rule in rules {
            let c = CompiledRule::compile(rule)?;
            let idx = u32::try_from(set.rules.len()).expect("fewer than 2^32 rules");
            match (&c.client_id, &c.username) {
                (Some(cid), _) => set.by_client.entry(cid.clone()).or_default().push(idx),
                (None, Some(u)) => set.by_user.entry(u.clone()).or_default().push(idx),
                (None, None) => set.everyone.push(idx),
            }
            set.rules.push(c);
        }
        Ok(set)
    }

    /// Number of rules.
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// Evaluates the rules that select the principal.
    pub(crate) fn evaluate(&self, req: &Request<'_>, ctx: &Ctx<'_>) -> Decision {
        let none: &[u32] = &[];
        let by_client = self.by_client.get(ctx.client_id).map_or(none, Vec::as_slice);
        let by_user = ctx.username.and_then(|u| self.by_user.get(u)).map_or(none, Vec::as_slice);
        let mut tally = Tally::default();
        for &i in self.everyone.iter().chain(by_client).chain(by_user) {
            let rule = &self.rules[i as usize];
            if !rule.selects(ctx) {
                continue;
            }
            let hit = rule_hit(rule.core, rule.levels.iter().map(OwnedLvl::as_lvl), req, ctx);
            if let Some(d) = tally.add(hit) {
                tracing::trace!(rule = rule.id, "ACL deny rule matched");
                return d;
            }
        }
        tally.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(s: &str) -> impl Iterator<Item = Lvl<'_>> + Clone {
        s.split('/').map(level_of)
    }

    const CTX: Ctx<'static> =
        Ctx { client_id: "dev1", username: Some("alice"), cid_safe: true, user_safe: true };

    #[test]
    fn name_matching() {
        for (f, n, m) in [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("d/%c/t", "d/dev1/t", true),
            ("d/%c/t", "d/dev2/t", false),
            ("d/x-%c-%u/t", "d/x-dev1-alice/t", true),
            ("d/x-%c-%u/t", "d/x-dev1-alic/t", false),
            ("d/%c", "d/dev1x", false),
            ("100%/x", "100%/x", true),
        ] {
            assert_eq!(matches_name(lv(f), n, &CTX), m, "{f} vs {n}");
        }
    }

    #[test]
    fn filter_inclusion() {
        for (rule, req, c) in [
            ("a/#", "a/+/b", true),
            ("a/#", "a/#", true),
            ("a/#", "a", true),
            ("a/+", "a/#", false),
            ("a/+", "a/+", true),
            ("a/+", "a/b", true),
            ("a/b", "a/+", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/+", false),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("+/#", "+/x", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("u/%u/#", "u/alice/+", true),
            ("u/%u/#", "u/+/x", false),
        ] {
            assert_eq!(covers(lv(rule), req, &CTX), c, "{rule} covers {req}");
        }
    }

    #[test]
    fn filter_intersection() {
        for (rule, req, i) in [
            ("a/secret", "a/+", true),
            ("a/secret", "#", true),
            ("a/secret", "a/public", false),
            ("a/+/x", "a/b/+", true),
            ("a/b", "a/b/c", false),
            ("a", "a/#", true),
            ("a/#", "a", true),
            ("$SYS/#", "#", false),
            ("#", "$SYS/x", false),
            ("+/x", "y/#", true),
        ] {
            assert_eq!(intersects(lv(rule), req, &CTX), i, "{rule} meets {req}");
        }
    }

    fn rule(perm: Permission, action: AclAction, topic: &str) -> AclRule {
        AclRule {
            id: 0,
            client_id: None,
            username: None,
            permission: perm,
            action,
            topic: topic.into(),
            max_qos: None,
            allow_retain: None,
        }
    }

    fn req(action: Action, topic: &str) -> Request<'_> {
        Request { action, topic, qos: 0, retain: false }
    }

    #[test]
    fn deny_wins_and_restrictions() {
        let mut limited = rule(Permission::Allow, AclAction::Publish, "lim/#");
        limited.max_qos = Some(1);
        limited.allow_retain = Some(false);
        let set = RuleSet::compile(&[
            rule(Permission::Allow, AclAction::All, "a/#"),
            rule(Permission::Deny, AclAction::Subscribe, "a/secret"),
            limited,
        ])
        .unwrap();
        let ctx = Ctx::new("c", None);
        assert_eq!(set.evaluate(&req(Action::Publish, "a/secret"), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&req(Action::Subscribe, "a/secret"), &ctx), Decision::Deny);
        assert_eq!(set.evaluate(&req(Action::Subscribe, "a/#"), &ctx), Decision::Deny);
        assert_eq!(set.evaluate(&req(Action::Subscribe, "a/public"), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&req(Action::Publish, "b"), &ctx), Decision::NoMatch);
        let p = |qos, retain| Request { action: Action::Publish, topic: "lim/x", qos, retain };
        assert_eq!(set.evaluate(&p(1, false), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&p(2, false), &ctx), Decision::Deny);
        assert_eq!(set.evaluate(&p(0, true), &ctx), Decision::Deny);
    }

    #[test]
    fn unsafe_placeholder_values_never_widen() {
        let set = RuleSet::compile(&[
            rule(Permission::Allow, AclAction::All, "d/%c/#"),
            rule(Permission::Deny, AclAction::Publish, "x/%u/y"),
            rule(Permission::Allow, AclAction::Publish, "x/#"),
        ])
        .unwrap();
        // A client id of "+" or "#" or "a/b" must not reach other devices' topics.
        for cid in ["+", "#", "a/b", "x+"] {
            let ctx = Ctx::new(cid, None);
            assert_eq!(set.evaluate(&req(Action::Subscribe, "d/+/#"), &ctx), Decision::NoMatch, "{cid}");
            assert_eq!(set.evaluate(&req(Action::Publish, "d/other/t"), &ctx), Decision::NoMatch, "{cid}");
        }
        assert_eq!(set.evaluate(&req(Action::Publish, "d/ok/t"), &Ctx::new("ok", None)), Decision::Allow);
        // A user name with a wildcard makes the deny rule refuse everything it could.
        assert_eq!(set.evaluate(&req(Action::Publish, "x/q"), &Ctx::new("c", Some("a#"))), Decision::Deny);
        assert_eq!(set.evaluate(&req(Action::Publish, "x/q"), &Ctx::new("c", Some("bob"))), Decision::Allow);
        assert_eq!(
            set.evaluate(&req(Action::Publish, "x/bob/y"), &Ctx::new("c", Some("bob"))),
            Decision::Deny
        );
        // No user name: %u rules do not apply.
        assert_eq!(set.evaluate(&req(Action::Publish, "x/q"), &Ctx::new("c", None)), Decision::Allow);
    }

    #[test]
    fn invalid_rules_are_refused() {
        assert!(RuleSet::compile(&[rule(Permission::Deny, AclAction::All, "a/#/b")]).is_err());
        let mut r = rule(Permission::Allow, AclAction::All, "a");
        r.max_qos = Some(3);
        assert!(RuleSet::compile(&[r]).is_err());
    }
}
