// The typed client: URLs from the schema's paths, filled in and encoded; and, checked by
// `tsc --noEmit` (npm run build / typecheck), calls the schema does not allow are type errors.
import { describe, expect, it } from "vitest";
import type { CellDetail, Page, Case } from "../types";
import { api, apiUrl } from "./index";

describe("apiUrl", () => {
  it("fills in and encodes the path's parameters", () => {
    expect(apiUrl("/api/cells/{cell_id}/labels/", { cell_id: 42 })).toBe("/api/cells/42/labels/");
    expect(apiUrl("/api/cases/{case_id}/", { case_id: "a/b" })).toBe("/api/cases/a%2Fb/");
  });

  it("adds the query, leaving out unset and empty parameters", () => {
    expect(apiUrl("/api/cases/", {}, { status: "", search: "x y", limit: 200, diagnosis: undefined })).toBe(
      "/api/cases/?search=x+y&limit=200",
    );
    expect(apiUrl("/api/cases/", {}, {})).toBe("/api/cases/");
  });

  it("refuses a path whose parameter is missing", () => {
    expect(() => apiUrl("/api/cells/{cell_id}/", {})).toThrow(/cell_id/);
  });
});

/** Never called: its body is checked by the compiler only. */
export function typeChecks(): void {
  const detail: Promise<CellDetail> = api.get("/api/cells/{cell_id}/", { path: { cell_id: 1 } });
  const cases: Promise<Page<Case>> = api.get("/api/cases/", { query: { status: "new", limit: 10 } });
  void [detail, cases];
  // @ts-expect-error a path the server does not have
  void api.get("/api/cell/{cell_id}/", { path: { cell_id: 1 } });
  // @ts-expect-error the path's parameter is required
  void api.get("/api/cells/{cell_id}/");
  // @ts-expect-error GET is the only method on this path
  void api.post("/api/queue/counts/");
  // @ts-expect-error the body must be the schema's (a class code)
  void api.post("/api/cells/{cell_id}/labels/", { path: { cell_id: 1 }, body: { code: "XX" } });
  // @ts-expect-error a query parameter the operation does not declare
  void api.get("/api/cases/", { query: { colour: "red" } });
}
