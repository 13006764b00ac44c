import { test } from "node:test";
import assert from "node:assert/strict";
import { headline, isLive, lastSeenText, msToIso, stateHint, stateKind } from "../src/lib/cluster.js";

test("node states as badges", () => {
  assert.equal(stateKind("up"), "ok");
  assert.equal(stateKind("silent"), "warn");
  assert.equal(stateKind("down"), "bad");
  assert.equal(stateKind("adopted"), "off");
  assert.equal(stateKind("something new"), "off");
  assert.equal(stateHint("adopted", "tern-2"), "Dead; its sessions were taken over by tern-2");
  assert.equal(stateHint("adopted", null), "Dead; its sessions were taken over");
  assert.equal(stateHint("odd"), "odd");
});

test("live nodes are up or silent", () => {
  assert.deepEqual(
    ["up", "silent", "down", "adopted"].map(isLive),
    [true, true, false, false],
  );
});

test("last seen", () => {
  assert.equal(lastSeenText(0, true), "this node");
  assert.equal(lastSeenText(null), "never");
  assert.equal(lastSeenText(undefined), "never");
  assert.equal(lastSeenText(800), "0.8 s ago");
  assert.equal(lastSeenText(12_345), "12 s ago");
  assert.equal(lastSeenText(125_000), "2m 5s ago");
  assert.equal(lastSeenText(2 * 3600_000 + 60_000), "2h 1m ago");
  assert.equal(lastSeenText(3 * 86400_000 + 4 * 3600_000), "3d 4h ago");
});

test("start times", () => {
  assert.equal(msToIso(0), null);
  assert.equal(msToIso(null), null);
  assert.equal(msToIso(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
});

test("headline", () => {
  assert.equal(headline([{ state: "up" }]), "1 of 1 node up");
  assert.equal(headline([{ state: "up" }, { state: "silent" }, { state: "down" }]), "1 of 3 nodes up, 1 silent");
  assert.equal(headline([]), "0 of 0 nodes up");
});
