import { test } from "node:test";
import assert from "node:assert/strict";
import { changes, localToMillis, millisToLocal, short, targetRoute } from "../src/lib/audit.js";

test("datetime-local values convert to Unix ms in local time and back", () => {
  const ms = localToMillis("2025-01-31T14:05");
  assert.equal(ms, new Date(2025, 0, 31, 14, 5).getTime());
  assert.equal(millisToLocal(ms!), "2025-01-31T14:05");
  assert.equal(localToMillis("2025-01-31T14:05:30"), new Date(2025, 0, 31, 14, 5, 30).getTime());
  assert.equal(localToMillis(""), undefined);
  assert.equal(localToMillis("yesterday"), undefined);
});

test("changes between before and after, by dotted path", () => {
  const d = {
    before: { client_id: "d1", enabled: true, labels: { site: "a", floor: "1" }, tags: [1] },
    after: { client_id: "d1", enabled: false, labels: { site: "b", floor: "1", new: "x" }, tags: [1] },
  };
  assert.deepEqual(changes(d), [
    { field: "enabled", before: true, after: false },
    { field: "labels.new", before: undefined, after: "x" },
    { field: "labels.site", before: "a", after: "b" },
  ]);
  assert.deepEqual(changes({ after: { a: 1 } }), []);
  assert.deepEqual(changes(null), []);
  assert.deepEqual(changes({ before: 1, after: 2 }), [{ field: "(value)", before: 1, after: 2 }]);
  assert.equal(short(undefined), "(none)");
  assert.equal(short("x".repeat(100)).length, 78);
});

test("targets link to their page", () => {
  assert.deepEqual(targetRoute("device:dev/1"), { parts: ["devices", "dev/1"] });
  assert.deepEqual(targetRoute("acl:12"), { parts: ["acl"], query: { rule: "12" } });
  assert.equal(targetRoute("acl:x"), null);
  assert.deepEqual(targetRoute("session:a:b"), { parts: ["sessions"], query: { client_id: "a:b" } });
  assert.deepEqual(targetRoute("apikey:abc"), { parts: ["admin"] });
  assert.equal(targetRoute(null), null);
  assert.equal(targetRoute("weird"), null);
  assert.equal(targetRoute("device:"), null);
});
