import { test } from "node:test";
import assert from "node:assert/strict";
import { buildTopicTree, flatten, subtreeFilter, topicRates, type TopicNode } from "../src/lib/topicTree.js";

const names = (ns: TopicNode[]) => ns.map((n) => n.name);

test("levels split on / with totals summed up the tree", () => {
  const roots = buildTopicTree([
    { topic: "home/kitchen/temp", messages: 10, bytes: 100, lastMessageAt: "2024-05-01T10:00:00Z", rate: 1 },
    { topic: "home/kitchen/hum", messages: 5, bytes: 50, lastMessageAt: "2024-05-01T10:05:00Z", rate: 0.5 },
    { topic: "home/hall", messages: 1, bytes: 1, lastMessageAt: "2024-05-01T09:00:00Z" },
    { topic: "plant/line1", messages: 7, bytes: 70, lastMessageAt: null },
  ]);
  assert.deepEqual(names(roots), ["home", "plant"]);
  const home = roots[0]!;
  assert.equal(home.path, "home");
  assert.equal(home.leaf, false);
  assert.equal(home.messages, 16);
  assert.equal(home.bytes, 151);
  assert.equal(home.rate, 1.5);
  assert.equal(home.lastMessageAt, "2024-05-01T10:05:00Z");
  assert.deepEqual(names(home.children), ["hall", "kitchen"]);
  const kitchen = home.children[1]!;
  assert.equal(kitchen.path, "home/kitchen");
  assert.deepEqual(
    kitchen.children.map((c) => [c.path, c.leaf, c.messages]),
    [
      ["home/kitchen/hum", true, 5],
      ["home/kitchen/temp", true, 10],
    ],
  );
  assert.equal(roots[1]!.lastMessageAt, null);
});

test("a topic can be a leaf and have children", () => {
  const [a] = buildTopicTree([
    { topic: "a", messages: 2, bytes: 2 },
    { topic: "a/b", messages: 3, bytes: 3 },
  ]);
  assert.equal(a!.leaf, true);
  assert.equal(a!.messages, 5);
  assert.equal(a!.children[0]!.path, "a/b");
  assert.equal(subtreeFilter(a!), "a/#");
  assert.equal(subtreeFilter(a!.children[0]!), "a/b");
});

test("empty levels are kept: /a, a//b, a/", () => {
  const roots = buildTopicTree([
    { topic: "/a", messages: 1, bytes: 0 },
    { topic: "a//b", messages: 1, bytes: 0 },
    { topic: "a/", messages: 1, bytes: 0 },
  ]);
  assert.deepEqual(names(roots), ["", "a"]);
  assert.equal(roots[0]!.children[0]!.path, "/a");
  const a = roots[1]!;
  assert.deepEqual(names(a.children), [""]);
  const empty = a.children[0]!;
  assert.equal(empty.path, "a/");
  assert.equal(empty.leaf, true);
  assert.equal(empty.children[0]!.path, "a//b");
  assert.equal(empty.messages, 2);
});

test("$SYS and unicode topics; children sorted by code unit", () => {
  const roots = buildTopicTree([
    { topic: "b", messages: 1, bytes: 0 },
    { topic: "$SYS/broker/uptime", messages: 1, bytes: 0 },
    { topic: "Z", messages: 1, bytes: 0 },
    { topic: "ä/x", messages: 1, bytes: 0 },
  ]);
  assert.deepEqual(names(roots), ["$SYS", "Z", "b", "ä"]);
});

test("the overcount bound sums up the tree", () => {
  const [a] = buildTopicTree([
    { topic: "a/x", messages: 10, bytes: 0, error: 3 },
    { topic: "a/y", messages: 10, bytes: 0 },
  ]);
  assert.equal(a!.error, 3);
});

test("no topics, no tree", () => {
  assert.deepEqual(buildTopicTree([]), []);
});

test("a wide tree builds quickly", () => {
  const topics = Array.from({ length: 20000 }, (_, i) => ({ topic: `fleet/dev-${i}/t`, messages: 1, bytes: 1 }));
  const t0 = Date.now();
  const [fleet] = buildTopicTree(topics);
  assert.equal(fleet!.children.length, 20000);
  assert.equal(fleet!.messages, 20000);
  assert.ok(Date.now() - t0 < 2000);
});

test("rates between two readings", () => {
  const before = new Map([
    ["a", 10],
    ["b", 100],
    ["c", 5],
  ]);
  const rates = topicRates(
    before,
    [
      { topic: "a", messages: 20 },
      { topic: "b", messages: 100 },
      { topic: "c", messages: 2 }, // went backwards: evicted and re-entered, or a restart
      { topic: "d", messages: 9 }, // new: no rate yet
    ],
    5,
  );
  assert.deepEqual([...rates], [
    ["a", 2],
    ["b", 0],
  ]);
  assert.equal(topicRates(before, [{ topic: "a", messages: 20 }], 0).size, 0);
});

test("flatten walks the expanded nodes depth first", () => {
  const roots = buildTopicTree([
    { topic: "a/b/c", messages: 1, bytes: 0 },
    { topic: "a/d", messages: 1, bytes: 0 },
    { topic: "e", messages: 1, bytes: 0 },
  ]);
  const open = new Set(["a"]);
  assert.deepEqual(
    flatten(roots, (p) => open.has(p)).map(({ node, depth }) => `${depth}:${node.path}`),
    ["0:a", "1:a/b", "1:a/d", "0:e"],
  );
  open.add("a/b");
  assert.deepEqual(
    flatten(roots, (p) => open.has(p)).map(({ node }) => node.path),
    ["a", "a/b", "a/b/c", "a/d", "e"],
  );
  assert.deepEqual(
    flatten(roots, () => false).map(({ node }) => node.path),
    ["a", "e"],
  );
});
