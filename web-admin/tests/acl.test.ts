import { test } from "node:test";
import assert from "node:assert/strict";
import {
  bodyOf,
  checkWords,
  describeRule,
  emptyForm,
  formOf,
  groupRules,
  ruleMatches,
  subjectKind,
  subjectText,
  validFilter,
  type AclRule,
} from "../src/lib/acl.js";

const rules: AclRule[] = [
  { id: 3, permission: "allow", action: "all", topic: "devices/%c/#", client_id: null, username: null },
  { id: 1, permission: "allow", action: "publish", topic: "telemetry/dev-2", client_id: "dev-2", username: null, max_qos: 1 },
  { id: 2, permission: "deny", action: "subscribe", topic: "secret/#", client_id: null, username: "alice" },
  { id: 4, permission: "allow", action: "subscribe", topic: "cmd/+", client_id: "dev-1", username: "alice", allow_retain: false },
  { id: 5, permission: "deny", action: "publish", topic: "$SYS/#", client_id: "dev-1", username: null },
];

test("subject kinds follow client_id and username", () => {
  assert.equal(subjectKind(rules[0]!), "global");
  assert.equal(subjectKind(rules[1]!), "device");
  assert.equal(subjectKind(rules[2]!), "user");
  assert.equal(subjectKind(rules[3]!), "both");
  assert.equal(subjectText(rules[3]!), "client id dev-1 and user name alice");
  assert.equal(subjectText({}), "everyone");
});

test("rules group per device, per user name and global, sorted", () => {
  const g = groupRules(rules);
  assert.deepEqual(
    g.devices.map(([k, rs]) => [k, rs.map((r) => r.id)]),
    [
      ["dev-1", [4, 5]],
      ["dev-2", [1]],
    ],
  );
  assert.deepEqual(
    g.users.map(([k, rs]) => [k, rs.map((r) => r.id)]),
    [["alice", [2]]],
  );
  assert.deepEqual(
    g.global.map((r) => r.id),
    [3],
  );
  assert.equal(g.shown, 5);
});

test("the filter matches client id, user name, topic and #id", () => {
  assert.equal(groupRules(rules, "dev-1").shown, 2);
  assert.equal(groupRules(rules, "ALICE").shown, 2);
  assert.equal(groupRules(rules, "secret").shown, 1);
  assert.equal(groupRules(rules, "#3").global.length, 1);
  assert.equal(groupRules(rules, "#3").shown, 1);
  assert.equal(groupRules(rules, "nothing-like-this").shown, 0);
  assert.ok(ruleMatches(rules[0]!, "global"));
  assert.ok(ruleMatches(rules[0]!, "  "));
});

test("topic filter validation", () => {
  for (const ok of ["a/b", "#", "+", "a/+/c", "a/#", "+/+/#", "devices/%c/#", "a//b", "/"]) assert.ok(validFilter(ok), ok);
  for (const bad of ["", "a/#/b", "a#", "a/b+", "+a/b", "a/\0"]) assert.ok(!validFilter(bad), JSON.stringify(bad));
});

test("form to body: subject fields by kind, limits only for allow rules", () => {
  const f = { ...emptyForm({ clientId: "dev-1" }), topic: " a/# ", maxQos: "1", noRetain: true };
  assert.equal(f.kind, "device");
  assert.deepEqual(bodyOf(f).body, {
    permission: "allow",
    action: "all",
    topic: "a/#",
    client_id: "dev-1",
    username: null,
    max_qos: 1,
    no_retain: true,
  });
  const deny = bodyOf({ ...f, permission: "deny", kind: "global" }).body!;
  assert.equal(deny.client_id, null);
  assert.equal(deny.max_qos, null);
  assert.equal(deny.no_retain, false);
  const errs = bodyOf({ ...emptyForm(), kind: "both", topic: "a/#/b" }).errors!;
  assert.ok(errs.clientId && errs.username && errs.topic);
});

test("editing a rule round-trips through the form", () => {
  for (const r of rules) {
    const b = bodyOf(formOf(r)).body!;
    assert.equal(b.topic, r.topic);
    assert.equal(b.client_id, r.client_id ?? null);
    assert.equal(b.username, r.username ?? null);
    assert.equal(b.max_qos, r.permission === "allow" ? (r.max_qos ?? null) : null);
    assert.equal(b.no_retain, r.allow_retain === false);
  }
});

test("check answers in words", () => {
  const req = { client_id: "dev-1", username: "alice", action: "publish" as const, topic: "$SYS/x", qos: 0, retain: false };
  const denied = checkWords({ allowed: false, decided_by: "rule", rule: rules[4] }, req);
  assert.equal(denied.headline, "Denied by rule #5");
  assert.match(denied.explanation, /deny rule overrides every allow/);
  assert.match(denied.explanation, /Rule #5: deny publish on \$SYS\/# for client id dev-1/);
  const allowed = checkWords({ allowed: true, decided_by: "rule", rule: rules[0] }, { ...req, topic: "devices/dev-1/t" });
  assert.equal(allowed.headline, "Allowed by rule #3");
  const restricted = checkWords({ allowed: false, decided_by: "rule", rule: rules[1] }, { ...req, client_id: "dev-2", qos: 2 });
  assert.equal(restricted.headline, "Denied by rule #1");
  assert.match(restricted.explanation, /limits \(QoS ≤ 1\)/);
  assert.equal(checkWords({ allowed: true, decided_by: "default", rule: null }, req).headline, "Allowed by the default policy");
  assert.equal(checkWords({ allowed: false, decided_by: "default" }, req).headline, "Denied by the default policy");
  assert.equal(checkWords({ allowed: false, decided_by: "not_loaded" }, req).headline, "Denied: the rules are not loaded yet");
  assert.equal(checkWords({ allowed: true, decided_by: "rule", rule: null }, req).headline, "Allowed by a rule");
  assert.equal(describeRule(rules[3]!), "allow subscribe on cmd/+ for client id dev-1 and user name alice (no retain)");
});
