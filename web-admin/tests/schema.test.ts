// src/api/schema.d.ts must be what openapi-typescript makes of openapi/tern.json today: the UI's
// types are the API's (`npm run gen:api` refreshes the file after an API change).

import { it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

it("the generated API types match openapi/tern.json", () => {
  const dir = mkdtempSync(join(tmpdir(), "tern-schema-"));
  try {
    const out = join(dir, "schema.d.ts");
    execFileSync(process.execPath, ["node_modules/openapi-typescript/bin/cli.js", "../openapi/tern.json", "-o", out], {
      stdio: "pipe",
    });
    const fresh = readFileSync(out, "utf8");
    const committed = readFileSync("src/api/schema.d.ts", "utf8");
    assert.ok(fresh === committed, "src/api/schema.d.ts is stale: run `npm run gen:api` in web-admin/");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
