// src/api/schema.d.ts must be what openapi-typescript makes of openapi.json, so the types
// the client is compiled against are the committed schema's. (That openapi.json is the
// server's current schema is checked on the Python side: tests/frontend/test_openapi_schema.py.)
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const frontend = fileURLToPath(new URL("../../", import.meta.url));
const cli = join(dirname(createRequire(import.meta.url).resolve("openapi-typescript/package.json")), "bin", "cli.js");

describe("the generated API types", () => {
  it("are up to date with openapi.json (else run `npm run gen:api`)", () => {
    const generated = execFileSync(process.execPath, [cli, "openapi.json"], { cwd: frontend, encoding: "utf8" });
    const committed = readFileSync(new URL("./schema.d.ts", import.meta.url), "utf8");
    expect(committed === generated, "src/api/schema.d.ts is stale: run `npm run gen:api`").toBe(true);
  });
});
