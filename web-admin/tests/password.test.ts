import { test } from "node:test";
import assert from "node:assert/strict";
import { ALPHABET, generatePassword, passwordProblem } from "../src/lib/password.js";

test("generated passwords: length, alphabet, no repeats across calls", () => {
  const a = generatePassword();
  assert.equal(a.length, 20);
  assert.ok([...a].every((c) => ALPHABET.includes(c)));
  assert.notEqual(a, generatePassword());
  assert.equal(passwordProblem(a), null);
});

test("bytes above the unbiased limit are skipped", () => {
  // 57 letters: limit 228; 250 is skipped, 0 → 'A', 57 → 'A', 1 → 'B'.
  let call = 0;
  const seq = [250, 0, 57, 1];
  const p = generatePassword(3, (b) => {
    b.fill(255);
    if (call++ === 0) seq.forEach((v, i) => (b[i] = v));
    else b.fill(2);
    return b;
  });
  assert.equal(ALPHABET.length, 57);
  assert.equal(p, "AAB");
});

test("password length rule", () => {
  assert.equal(passwordProblem("short"), "At least 12 characters.");
  assert.equal(passwordProblem("x".repeat(1025)), "At most 1024 characters.");
  assert.equal(passwordProblem("x".repeat(12)), null);
});
