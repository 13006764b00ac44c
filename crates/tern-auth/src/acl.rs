//! The ACL engine: compiled rule sets indexed by selector, `%c`/`%u` placeholders expanded
//! without allocating, topic-name matching for PUBLISH and for each delivered message, filter
//! inclusion (allow and deny alike) for SUBSCRIBE, and the deny-wins evaluation.
//!
//! Subscribe-time and delivery-time rules: a SUBSCRIBE is granted when an allow rule *covers*
//! the requested filter and refused when a deny rule covers it; a deny rule that only
//! *intersects* the filter (`deny a/secret` against `a/#`) does not refuse it, it refuses
//! each delivery of a message whose topic name it matches (`Request::kind` = `Name`).
//! For a filter without wildcards, inclusion and name matching are the same test, so a
//! subscribe check of a plain name and the delivery check of that name always agree.

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
            // A literal run up to the next '%' after the first character (a lone '%' is
            // literal). Searched by byte: '%' is ASCII, so its index is always a character
            // boundary, whatever multi-byte characters surround it.
            let end = p.bytes().skip(1).position(|b| b == b'%').map_or(p.len(), |i| i + 1);
            p.split_at(end)
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

/// What the topic of a request is, and so how a rule's filter is compared with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopicKind {
    /// A topic name (PUBLISH, or a message about to be delivered): the rule matches it.
    Name,
    /// A topic filter (SUBSCRIBE): the rule must cover it (filter inclusion).
    Filter,
}

/// One access request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// `Publish` or `Subscribe` (a delivery is decided by the subscribe rules).
    pub(crate) action: Action,
    /// A topic name, or a filter taken verbatim (the broker has removed any
    /// `$share/{group}/` prefix; it is not parsed again here).
    pub(crate) topic: &'a str,
    pub(crate) kind: TopicKind,
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
    // Allow and deny rules alike: a name is matched, a filter must be covered (a deny rule
    // that only intersects a filter leaves it to the delivery-time check of each name).
    let hit = match req.kind {
        TopicKind::Name => matches_name(levels, req.topic, ctx),
        TopicKind::Filter => covers(levels, req.topic, ctx),
    };
    if !hit {
        return Hit::None;
    }
    if !core.allow {
        return Hit::Deny;
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

    /// Like [`Self::evaluate`], also naming the rule that decided: the deny rule that
    /// matched, else the first granting rule, else the first QoS/retain-restricted one.
    pub(crate) fn explain(&self, req: &Request<'_>, ctx: &Ctx<'_>) -> (Decision, Option<i64>) {
        let none: &[u32] = &[];
        let by_client = self.by_client.get(ctx.client_id).map_or(none, Vec::as_slice);
        let by_user = ctx.username.and_then(|u| self.by_user.get(u)).map_or(none, Vec::as_slice);
        let mut tally = Tally::default();
        let (mut granted_by, mut restricted_by) = (None, None);
        for &i in self.everyone.iter().chain(by_client).chain(by_user) {
            let rule = &self.rules[i as usize];
            if !rule.selects(ctx) {
                continue;
            }
            let hit = rule_hit(rule.core, rule.levels.iter().map(OwnedLvl::as_lvl), req, ctx);
            match hit {
                Hit::Grant => granted_by = granted_by.or(Some(rule.id)),
                Hit::Restricted => restricted_by = restricted_by.or(Some(rule.id)),
                Hit::Deny | Hit::None => {}
            }
            if let Some(d) = tally.add(hit) {
                return (d, Some(rule.id));
            }
        }
        let d = tally.finish();
        let by = match d {
            Decision::Allow => granted_by,
            Decision::Deny => restricted_by,
            Decision::NoMatch => None,
        };
        (d, by)
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

    /// A PUBLISH of a name or a SUBSCRIBE of a filter.
    fn req(action: Action, topic: &str) -> Request<'_> {
        let kind = if action == Action::Subscribe { TopicKind::Filter } else { TopicKind::Name };
        Request { action, topic, kind, qos: 0, retain: false }
    }

    /// The delivery of a message published on `name`.
    fn recv(name: &str) -> Request<'_> {
        Request { action: Action::Subscribe, topic: name, kind: TopicKind::Name, qos: 0, retain: false }
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
        // The deny rule only intersects `a/#` and `a/+`: granted, the denied topic is refused
        // at delivery.
        assert_eq!(set.evaluate(&req(Action::Subscribe, "a/#"), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&req(Action::Subscribe, "a/+"), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&recv("a/secret"), &ctx), Decision::Deny);
        assert_eq!(set.evaluate(&recv("a/public"), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&recv("a/secret/x"), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&req(Action::Subscribe, "a/public"), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&req(Action::Publish, "b"), &ctx), Decision::NoMatch);
        assert_eq!(set.evaluate(&recv("b"), &ctx), Decision::NoMatch);
        let p = |qos, retain| Request {
            action: Action::Publish,
            topic: "lim/x",
            kind: TopicKind::Name,
            qos,
            retain,
        };
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
    fn deny_rules_refuse_a_subscription_only_when_they_cover_it() {
        let set = RuleSet::compile(&[
            rule(Permission::Deny, AclAction::Subscribe, "test/nosubscribe"),
            rule(Permission::Deny, AclAction::All, "plant/+/secret/#"),
        ])
        .unwrap();
        let ctx = Ctx::new("c", None);
        let sub = |f| set.evaluate(&req(Action::Subscribe, f), &ctx);
        for f in ["#", "test/#", "test/+", "+/nosubscribe", "plant/#", "plant/+/+/x", "plant/a/#"] {
            assert_eq!(sub(f), Decision::NoMatch, "{f} is only intersected");
        }
        for f in ["test/nosubscribe", "plant/a/secret/#", "plant/+/secret/#", "plant/+/secret/x/+"] {
            assert_eq!(sub(f), Decision::Deny, "{f} is covered");
        }
        assert_eq!(set.evaluate(&recv("test/nosubscribe"), &ctx), Decision::Deny);
        assert_eq!(set.evaluate(&recv("plant/a/secret"), &ctx), Decision::Deny);
        assert_eq!(set.evaluate(&recv("plant/a/public"), &ctx), Decision::NoMatch);
    }

    #[test]
    fn a_plain_name_gets_the_same_answer_at_subscribe_and_delivery() {
        // The broker caches one bit per (topic, action, qos): check(Subscribe, name) and
        // may_receive(name) share it, so they must agree.
        let mut limited = rule(Permission::Allow, AclAction::Subscribe, "lim/+");
        limited.max_qos = Some(1);
        let set = RuleSet::compile(&[
            rule(Permission::Allow, AclAction::All, "a/#"),
            rule(Permission::Deny, AclAction::Subscribe, "a/secret/+"),
            rule(Permission::Allow, AclAction::Subscribe, "d/%c/#"),
            rule(Permission::Deny, AclAction::Subscribe, "u/%u"),
            rule(Permission::Allow, AclAction::Subscribe, "$SYS/#"),
            limited,
        ])
        .unwrap();
        for ctx in [Ctx::new("dev1", Some("alice")), Ctx::new("a+b", Some("x/y")), Ctx::new("c", None)] {
            for name in [
                "a",
                "a/b",
                "a/secret/x",
                "a/secret",
                "d/dev1/t",
                "d/dev2",
                "u/alice",
                "u/bob",
                "$SYS/x",
                "$share/g/a",
                "lim/1",
                "lim/1/2",
                "x",
            ] {
                for qos in 0..=2 {
                    let filter = Request { qos, ..req(Action::Subscribe, name) };
                    let delivery = Request { qos, ..recv(name) };
                    assert_eq!(set.evaluate(&filter, &ctx), set.evaluate(&delivery, &ctx), "{name} {qos}");
                }
            }
        }
    }

    #[test]
    fn multi_byte_characters_next_to_placeholders() {
        // Pattern levels that start or end with a multi-byte character around %c / %u used to
        // slice inside a character and panic.
        let ctx = Ctx::new("dev1", Some("ålice"));
        for (rule, name, m) in [
            ("d/é%c", "d/édev1", true),
            ("d/é%c", "d/dev1", false),
            ("d/%cé", "d/dev1é", true),
            ("d/%cé", "d/dev1", false),
            ("d/é%cü%u€", "d/édev1üålice€", true),
            ("d/%u", "d/ålice", true),
            ("d/€%", "d/€%", true),
            ("d/%€%c", "d/%€dev1", true),
            ("d/%%c", "d/%dev1", true),
        ] {
            assert_eq!(matches_name(lv(rule), name, &ctx), m, "{rule} vs {name}");
            assert_eq!(covers(lv(rule), name, &ctx), m, "{rule} covers {name}");
        }
        let set = RuleSet::compile(&[
            rule(Permission::Allow, AclAction::All, "é%c/#"),
            rule(Permission::Deny, AclAction::All, "%cé/%u"),
        ])
        .unwrap();
        let ctx = Ctx::new("ü", Some("😀"));
        assert_eq!(set.evaluate(&req(Action::Publish, "éü/x"), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&req(Action::Subscribe, "éü/+"), &ctx), Decision::Allow);
        assert_eq!(set.evaluate(&recv("üé/😀"), &ctx), Decision::Deny);
        assert_eq!(set.evaluate(&req(Action::Publish, "é/x"), &ctx), Decision::NoMatch);
    }

    mod random {
        //! Random rule levels, topics, client ids and user names (multi-byte characters,
        //! placeholders, wildcards, separators): evaluation never panics.

        use proptest::prelude::*;

        use super::super::*;

        /// Short strings over an alphabet rich in troublemakers.
        fn piece() -> impl Strategy<Value = String> {
            let atom = prop_oneof![
                Just("%c".to_string()),
                Just("%u".to_string()),
                Just("%".to_string()),
                Just("+".to_string()),
                Just("#".to_string()),
                Just("/".to_string()),
                Just("$".to_string()),
                Just("é".to_string()),
                Just("€".to_string()),
                Just("😀".to_string()),
                "[a-c]{1,2}",
                any::<char>().prop_map(|c| c.to_string()),
            ];
            prop::collection::vec(atom, 0..6).prop_map(|v| v.concat())
        }

        /// A rule filter made of random levels (compiled or refused, like a stored rule).
        fn rule_topic() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 1..5).prop_map(|v| v.join("/"))
        }

        fn acl_rule(topic: String, allow: bool, action: u8) -> AclRule {
            AclRule {
                id: 1,
                client_id: None,
                username: None,
                permission: if allow { Permission::Allow } else { Permission::Deny },
                action: match action % 3 {
                    0 => AclAction::Publish,
                    1 => AclAction::Subscribe,
                    _ => AclAction::All,
                },
                topic,
                max_qos: Some(action % 3),
                allow_retain: None,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn evaluation_never_panics(
                rules in prop::collection::vec((rule_topic(), any::<bool>(), any::<u8>()), 1..4),
                topic in piece().prop_flat_map(|a| piece().prop_map(move |b| format!("{a}/{b}"))),
                client_id in piece(),
                username in prop::option::of(piece()),
                qos in 0u8..3,
            ) {
                let ctx = Ctx::new(&client_id, username.as_deref());
                // The raw matchers, on any level text (even what compilation would refuse).
                for (t, _, _) in &rules {
                    let _ = matches_name(t.split('/').map(level_of), &topic, &ctx);
                    let _ = covers(t.split('/').map(level_of), &topic, &ctx);
                    let _ = pat_eq(t, &topic, &ctx);
                }
                let stored: Vec<AclRule> =
                    rules.iter().map(|(t, allow, a)| acl_rule(t.clone(), *allow, *a)).collect();
                let inline: Vec<InlineAclRule> = rules
                    .iter()
                    .map(|(t, allow, a)| InlineAclRule {
                        allow: *allow,
                        action: [Action::Publish, Action::Subscribe, Action::All][usize::from(*a % 3)],
                        topic: t.clone(),
                        max_qos: None,
                        retain: None,
                    })
                    .collect();
                let set = stored
                    .iter()
                    .filter(|r| validate_rule_topic(&r.topic).is_ok())
                    .cloned()
                    .collect::<Vec<_>>();
                let set = RuleSet::compile(&set).expect("valid rules compile");
                for (action, kind) in [
                    (Action::Publish, TopicKind::Name),
                    (Action::Subscribe, TopicKind::Filter),
                    (Action::Subscribe, TopicKind::Name),
                ] {
                    let req = Request { action, topic: &topic, kind, qos, retain: qos == 1 };
                    let _ = set.evaluate(&req, &ctx);
                    let _ = evaluate_inline(&inline, &req, &ctx);
                }
                // A name is a filter without wildcards: subscribe and delivery checks agree.
                if !topic.contains(['+', '#']) {
                    let filter = Request {
                        action: Action::Subscribe, topic: &topic, kind: TopicKind::Filter, qos, retain: false,
                    };
                    let name = Request { kind: TopicKind::Name, ..filter };
                    prop_assert_eq!(set.evaluate(&filter, &ctx), set.evaluate(&name, &ctx));
                    prop_assert_eq!(evaluate_inline(&inline, &filter, &ctx), evaluate_inline(&inline, &name, &ctx));
                }
            }
        }
    }

    #[test]
    fn invalid_rules_are_refused() {
        assert!(RuleSet::compile(&[rule(Permission::Deny, AclAction::All, "a/#/b")]).is_err());
        let mut r = rule(Permission::Allow, AclAction::All, "a");
        r.max_qos = Some(3);
        assert!(RuleSet::compile(&[r]).is_err());
    }
}
