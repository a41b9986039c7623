// Pure helpers of the export panel (views/exports.tsx): the formats and filters the
// export API accepts (typed from its OpenAPI operation, so a format or filter the server
// adds or drops is a type error here), the query a form makes, and a job's progress and
// filters in words.
import type { components, operations } from "./api/schema";

export type ExportQuery = NonNullable<operations["exports_retrieve"]["parameters"]["query"]>;
export type ExportFormat = NonNullable<ExportQuery["format"]>;
export type LabelStatus = NonNullable<ExportQuery["label_status"]>;
export type LabelSource = NonNullable<ExportQuery["label_source"]>;
export type ExportJobStatus = components["schemas"]["ExportJobStatusEnum"];

/** `progress` as annotation/services/exports/jobs.py writes it. */
export interface ExportProgress {
  done?: number;
  total?: number;
  percent?: number;
}

/** `params` as ExportFilters.as_params writes them. */
export interface ExportParams {
  case_id?: number;
  label?: string;
  label_source?: string;
  label_status?: string;
  since?: string;
}

export type ExportJob = Omit<components["schemas"]["ExportJob"], "progress" | "params"> & {
  progress: ExportProgress | null;
  params: ExportParams | null;
};

/** Every format of the API (a Record, so none can be left out), in the order shown. */
export const EXPORT_FORMATS: Record<ExportFormat, { title: string; text: string }> = {
  imagefolder: {
    title: "Image folders",
    text: "one folder per class with the images, and manifest.csv (import_cells reads it back)",
  },
  csv: { title: "CSV", text: "cells.csv: one row per cell with its label and provenance, no images" },
  coco: { title: "COCO JSON", text: "annotations.json with the segmentation masks (RLE), and the images" },
};

export const LABEL_STATUSES: Record<LabelStatus, string> = {
  labelled: "labelled cells",
  unlabelled: "unlabelled cells",
  any: "every cell",
};

export const LABEL_SOURCES: Record<LabelSource, string> = {
  hematologist: "a hematologist, in the portal",
  adjudicated: "adjudication (a senior hematologist)",
  imported: "import (analyser or technologist)",
};

export interface ExportForm {
  format: ExportFormat;
  /** a case id, or "" for every case */
  caseId: string;
  /** a 14-Diff code, or "" for every class */
  label: string;
  label_source: LabelSource | "";
  label_status: LabelStatus;
  /** yyyy-mm-dd (an <input type=date>), or "" */
  since: string;
}

export const EMPTY_FORM: ExportForm = {
  format: "imagefolder",
  caseId: "",
  label: "",
  label_source: "",
  label_status: "labelled",
  since: "",
};

/** The export API's query for a form, always as a job (progress, a list, a download
 * that stays); unset filters are left out. */
export function exportQuery(form: ExportForm): ExportQuery {
  const q: ExportQuery = { format: form.format, label_status: form.label_status, mode: "job" };
  if (form.caseId) q.case = Number(form.caseId);
  if (form.label) q.label = form.label as ExportQuery["label"];
  if (form.label_source) q.label_source = form.label_source;
  if (form.since) q.since = form.since;
  return q;
}

export const isOpenJob = (job: Pick<ExportJob, "status">) => job.status === "queued" || job.status === "running";

/** The bar's percent (null: no bar, the job failed) and the line under it. */
export function jobProgress(job: Pick<ExportJob, "status" | "progress" | "n_cells">): { percent: number | null; text: string } {
  const p = job.progress ?? {};
  const total = p.total || job.n_cells;
  switch (job.status) {
    case "queued":
      return { percent: 0, text: "waiting for a worker" };
    case "running":
      return {
        percent: typeof p.percent === "number" ? p.percent : 0,
        text: `${p.done ?? 0} of ${total} cell${total === 1 ? "" : "s"} written`,
      };
    case "succeeded":
      return { percent: 100, text: `${total} cell${total === 1 ? "" : "s"}` };
    default:
      return { percent: null, text: "failed" };
  }
}

/** A job's filters in words, e.g. "labelled cells · class BL · case SMEAR-1 · since 2026-01-01". */
export function filtersText(params: ExportParams | null, caseName: (id: number) => string = (id) => `#${id}`): string {
  const p = params ?? {};
  const parts = [LABEL_STATUSES[(p.label_status ?? "labelled") as LabelStatus] ?? p.label_status ?? "labelled cells"];
  if (p.label) parts.push(`class ${p.label}`);
  if (p.label_source) parts.push(`labelled by ${LABEL_SOURCES[p.label_source as LabelSource] ?? p.label_source}`);
  if (p.case_id !== undefined) parts.push(`case ${caseName(p.case_id)}`);
  if (p.since) parts.push(`since ${p.since.slice(0, 10)}`);
  return parts.join(" · ");
}

/** Jobs newest first, with `updated` replacing the job of the same id. */
export function mergeJobs(jobs: ExportJob[], updated: ExportJob[]): ExportJob[] {
  const byId = new Map(jobs.map((j) => [j.id, j]));
  for (const j of updated) byId.set(j.id, j);
  return [...byId.values()].sort((a, b) => b.id - a.id);
}
