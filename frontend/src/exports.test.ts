import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  EMPTY_FORM,
  EXPORT_FORMATS,
  LABEL_SOURCES,
  LABEL_STATUSES,
  exportQuery,
  filtersText,
  jobProgress,
  mergeJobs,
  type ExportJob,
} from "./exports";

/** The export operation's query parameters in the server's OpenAPI schema. */
function schemaEnums(): Record<string, string[] | undefined> {
  const schema = JSON.parse(readFileSync(fileURLToPath(new URL("../openapi.json", import.meta.url)), "utf8"));
  const params: { name: string; schema: { enum?: string[] } }[] = schema.paths["/api/exports/"].get.parameters;
  return Object.fromEntries(params.map((p) => [p.name, p.schema.enum]));
}

const job = (over: Partial<ExportJob>): ExportJob => ({
  id: 1,
  format: "csv",
  params: { label_status: "labelled" },
  status: "queued",
  progress: { done: 0, total: 0, percent: 0 },
  n_cells: 250,
  error: "",
  requested_by: "ds",
  created_at: "2026-01-02T10:00:00Z",
  finished_at: null,
  status_url: "/api/export-jobs/1/",
  download_url: null,
  ...over,
});

describe("the export panel's choices", () => {
  it("offers every format, cell status and label source the export API accepts, and no other", () => {
    const enums = schemaEnums();
    expect(Object.keys(EXPORT_FORMATS).sort()).toEqual([...(enums.format ?? [])].sort());
    expect(Object.keys(LABEL_STATUSES).sort()).toEqual([...(enums.label_status ?? [])].sort());
    expect(Object.keys(LABEL_SOURCES).sort()).toEqual([...(enums.label_source ?? [])].sort());
    // The filters the form sets are the API's (mode is the panel's own choice: a job).
    expect(Object.keys(enums).sort()).toEqual(["case", "format", "label", "label_source", "label_status", "mode", "since"]);
  });

  it("asks for a job with only the filters that are set", () => {
    expect(exportQuery(EMPTY_FORM)).toEqual({ format: "imagefolder", label_status: "labelled", mode: "job" });
    expect(
      exportQuery({ format: "coco", caseId: "12", label: "BL", label_source: "hematologist", label_status: "any", since: "2026-03-01" }),
    ).toEqual({ format: "coco", case: 12, label: "BL", label_source: "hematologist", label_status: "any", since: "2026-03-01", mode: "job" });
  });
});

describe("an export job on screen", () => {
  it("shows its progress from queued to done, and no bar when it failed", () => {
    expect(jobProgress(job({}))).toEqual({ percent: 0, text: "waiting for a worker" });
    expect(jobProgress(job({ status: "running", progress: { done: 100, total: 250, percent: 40 } }))).toEqual({
      percent: 40,
      text: "100 of 250 cells written",
    });
    expect(jobProgress(job({ status: "running", progress: null }))).toEqual({ percent: 0, text: "0 of 250 cells written" });
    expect(jobProgress(job({ status: "succeeded", progress: { done: 250, total: 250, percent: 100 } }))).toEqual({
      percent: 100,
      text: "250 cells",
    });
    expect(jobProgress(job({ status: "failed", error: "disk full" })).percent).toBeNull();
  });

  it("says which cells it holds", () => {
    expect(filtersText({ label_status: "labelled" })).toBe("labelled cells");
    expect(
      filtersText(
        { label_status: "labelled", label: "BL", label_source: "adjudicated", case_id: 7, since: "2026-03-01T00:00:00+00:00" },
        (id) => (id === 7 ? "SMEAR-7" : "?"),
      ),
    ).toBe("labelled cells · class BL · labelled by adjudication (a senior hematologist) · case SMEAR-7 · since 2026-03-01");
    expect(filtersText(null)).toBe("labelled cells");
  });

  it("keeps the newest state of each job, newest job first", () => {
    const merged = mergeJobs([job({ id: 1 }), job({ id: 2 })], [job({ id: 1, status: "succeeded" }), job({ id: 3 })]);
    expect(merged.map((j) => [j.id, j.status])).toEqual([
      [3, "queued"],
      [2, "queued"],
      [1, "succeeded"],
    ]);
  });
});
