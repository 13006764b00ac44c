// The ACL page's own logic: grouping rules by subject (per device, per user name, global),
// filtering them, the add/edit form <-> API body, and the wording of a check's answer.

import type { components } from "../api/schema.js";

type S = components["schemas"];
export type AclRule = S["AclRule"];
export type AclRuleBody = S["AclRuleBody"];
export type AclCheckRequest = S["AclCheckRequest"];
export type AclCheckResult = S["AclCheckResult"];
export type RuleAction = S["AclRuleAction"];
export type Permission = S["AclPermission"];

/**
 * Whom a rule is for. The API names the subject with two optional fields, `client_id` and
 * `username`: one of them, both (the connection must match both), or neither (everyone).
 */
export type SubjectKind = "device" | "user" | "both" | "global";

export function subjectKind(r: { client_id?: string | null; username?: string | null }): SubjectKind {
  const c = r.client_id != null;
  const u = r.username != null;
  return c && u ? "both" : c ? "device" : u ? "user" : "global";
}

/** "client id dev1", "user name alice", "client id dev1 and user name alice", "everyone". */
export function subjectText(r: { client_id?: string | null; username?: string | null }): string {
  switch (subjectKind(r)) {
    case "both":
      return `client id ${r.client_id} and user name ${r.username}`;
    case "device":
      return `client id ${r.client_id}`;
    case "user":
      return `user name ${r.username}`;
    default:
      return "everyone";
  }
}

export const ACTION_LABELS: Record<RuleAction, string> = {
  publish: "Publish",
  subscribe: "Subscribe",
  all: "Publish and subscribe",
};

/** The QoS and retain limits of an allow rule, as text ("" when none). */
export function limitsText(r: AclRule): string {
  const parts: string[] = [];
  if (r.max_qos != null) parts.push(`QoS ≤ ${r.max_qos}`);
  if (r.allow_retain === false) parts.push("no retain");
  return parts.join(", ");
}

/** One line about a rule: "allow publish on `a/#` for client id dev1 (QoS ≤ 1)". */
export function describeRule(r: AclRule): string {
  const what = r.action === "all" ? "publish and subscribe" : r.action;
  const limits = limitsText(r);
  return `${r.permission} ${what} on ${r.topic} for ${subjectText(r)}${limits ? ` (${limits})` : ""}`;
}

/** The rules split into the three groups the page shows, each sorted. */
export interface RuleGroups {
  /** Per client id (rules naming a client id, with or without a user name), by client id. */
  devices: [string, AclRule[]][];
  /** Per user name (rules naming only a user name), by user name. */
  users: [string, AclRule[]][];
  /** Rules for everyone. */
  global: AclRule[];
  /** How many rules passed the filter. */
  shown: number;
}

/** Whether `r` matches the filter text (client id, user name, topic, `#id`, permission, action). */
export function ruleMatches(r: AclRule, filter: string): boolean {
  const f = filter.trim().toLowerCase();
  if (!f) return true;
  if (/^#?\d+$/.test(f)) {
    if (String(r.id) === f.replace("#", "")) return true;
  }
  const hay = [r.client_id ?? "", r.username ?? "", r.topic, r.permission, r.action, subjectKind(r) === "global" ? "global everyone" : ""];
  return hay.some((h) => h.toLowerCase().includes(f));
}

function byKey(m: Map<string, AclRule[]>): [string, AclRule[]][] {
  return [...m.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, rs]) => [k, rs.sort((x, y) => x.id - y.id)]);
}

export function groupRules(rules: AclRule[], filter = ""): RuleGroups {
  const devices = new Map<string, AclRule[]>();
  const users = new Map<string, AclRule[]>();
  const global: AclRule[] = [];
  let shown = 0;
  for (const r of rules) {
    if (!ruleMatches(r, filter)) continue;
    shown++;
    if (r.client_id != null) {
      const l = devices.get(r.client_id) ?? [];
      l.push(r);
      devices.set(r.client_id, l);
    } else if (r.username != null) {
      const l = users.get(r.username) ?? [];
      l.push(r);
      users.set(r.username, l);
    } else {
      global.push(r);
    }
  }
  return { devices: byKey(devices), users: byKey(users), global: global.sort((x, y) => x.id - y.id), shown };
}

/** The add/edit form's state. */
export interface RuleForm {
  kind: SubjectKind;
  clientId: string;
  username: string;
  permission: Permission;
  action: RuleAction;
  topic: string;
  /** "" (no limit), "0", "1" or "2". */
  maxQos: string;
  noRetain: boolean;
}

export function emptyForm(prefill?: { clientId?: string; username?: string }): RuleForm {
  const kind: SubjectKind = prefill?.clientId ? "device" : prefill?.username ? "user" : "global";
  return {
    kind,
    clientId: prefill?.clientId ?? "",
    username: prefill?.username ?? "",
    permission: "allow",
    action: "all",
    topic: "",
    maxQos: "",
    noRetain: false,
  };
}

export function formOf(r: AclRule): RuleForm {
  return {
    kind: subjectKind(r),
    clientId: r.client_id ?? "",
    username: r.username ?? "",
    permission: r.permission,
    action: r.action,
    topic: r.topic,
    maxQos: r.max_qos == null ? "" : String(r.max_qos),
    noRetain: r.allow_retain === false,
  };
}

/**
 * Whether `t` is a valid topic filter: `+` and `#` only as whole levels, `#` only last, no NUL.
 * (The same rule as the API's pattern; the API has the last word.)
 */
export function validFilter(t: string): boolean {
  if (t.length === 0 || t.includes("\0")) return false;
  const levels = t.split("/");
  return levels.every((l, i) => {
    if (l === "#") return i === levels.length - 1;
    if (l === "+") return true;
    return !l.includes("+") && !l.includes("#");
  });
}

/** Whether `t` is a valid topic name (no wildcards, not empty, no NUL). */
export function validTopicName(t: string): boolean {
  return t.length > 0 && !/[+#\0]/.test(t);
}

export type FormErrors = Partial<Record<"clientId" | "username" | "topic", string>>;

/** The API body of a form, or the errors to show next to its fields. */
export function bodyOf(f: RuleForm): { body: AclRuleBody; errors?: undefined } | { body?: undefined; errors: FormErrors } {
  const errors: FormErrors = {};
  const needClient = f.kind === "device" || f.kind === "both";
  const needUser = f.kind === "user" || f.kind === "both";
  if (needClient && f.clientId.length === 0) errors.clientId = "Enter the client id.";
  if (needUser && f.username.length === 0) errors.username = "Enter the user name.";
  const topic = f.topic.trim();
  if (!topic) errors.topic = "Enter a topic filter.";
  else if (!validFilter(topic)) errors.topic = "Wildcards must be whole levels (+ anywhere, # only last).";
  if (Object.keys(errors).length) return { errors };
  const allow = f.permission === "allow";
  const body: AclRuleBody = {
    permission: f.permission,
    action: f.action,
    topic,
    client_id: needClient ? f.clientId : null,
    username: needUser ? f.username : null,
    max_qos: allow && f.maxQos !== "" ? Number(f.maxQos) : null,
    no_retain: allow && f.noRetain,
  };
  return { body };
}

/** The answer of a check in words: a headline and an explanation. */
export interface CheckWords {
  /** "Allowed by rule #3", "Denied by the default policy", ... */
  headline: string;
  explanation: string;
}

export function checkWords(res: AclCheckResult, req: AclCheckRequest): CheckWords {
  const verdict = res.allowed ? "Allowed" : "Denied";
  const asked = `${req.action === "publish" ? "Publishing to" : "Subscribing to"} ${req.topic}${
    req.action === "publish" ? ` at QoS ${req.qos ?? 0}${req.retain ? " with retain" : ""}` : ` at QoS ${req.qos ?? 0}`
  }`;
  const who = `client id ${req.client_id}${req.username != null && req.username !== "" ? `, user name ${req.username}` : ", no user name"}`;
  if (res.decided_by === "rule") {
    const r = res.rule;
    if (!r) {
      return {
        headline: `${verdict} by a rule`,
        explanation: `${asked} (${who}) is ${verdict.toLowerCase()} by a rule that no longer exists (it was changed while checking). Check again.`,
      };
    }
    let why: string;
    if (r.permission === "deny") {
      why = `This deny rule matches, and a matching deny rule overrides every allow rule.`;
    } else if (res.allowed) {
      why = `This allow rule matches and no deny rule does.`;
    } else {
      const limits = limitsText(r);
      why = `This allow rule matches the topic but its limits (${limits || "QoS or retain"}) refuse this request, and no other rule allows it.`;
    }
    return {
      headline: `${verdict} by rule #${r.id}`,
      explanation: `${asked} (${who}) is ${verdict.toLowerCase()}. Rule #${r.id}: ${describeRule(r)}. ${why}`,
    };
  }
  if (res.decided_by === "default") {
    return {
      headline: `${verdict} by the default policy`,
      explanation: `${asked} (${who}) is ${verdict.toLowerCase()}: no rule concerns it, so the broker's default policy (auth.acl_default = ${
        res.allowed ? "allow" : "deny"
      }) decides.`,
    };
  }
  if (res.decided_by === "not_loaded") {
    return {
      headline: `${verdict}: the rules are not loaded yet`,
      explanation: `The broker has not loaded its rule set yet, so everything is refused. Try again in a moment.`,
    };
  }
  return { headline: verdict, explanation: `${asked} (${who}) is ${verdict.toLowerCase()} (decided by ${res.decided_by}).` };
}
