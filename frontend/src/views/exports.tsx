// The export panel (data scientists and admins): choose a format and filters, start an
// export job, follow its progress bar, download the zip when it is done, and see the
// past jobs (a user's own; every job for an admin). The API (annotation/api/exports.py)
// refuses everyone else, whatever this screen shows.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { api } from "../api";
import { Progress } from "../components/charts";
import {
  EMPTY_FORM,
  EXPORT_FORMATS,
  LABEL_SOURCES,
  LABEL_STATUSES,
  exportQuery,
  filtersText,
  isOpenJob,
  jobProgress,
  mergeJobs,
  type ExportForm,
  type ExportFormat,
  type ExportJob,
  type LabelSource,
  type LabelStatus,
} from "../exports";
import type { Boot, CaseListItem } from "../types";
import { showError, showInfo, useLoad } from "../ui";

/** How often the open jobs are read again (exports announce nothing on the websocket). */
const POLL_MS = 1000;
const START = "starting the export";

export function ExportPanel({ boot }: { boot: Boot }) {
  const [form, setForm] = useState<ExportForm>(EMPTY_FORM);
  const [jobs, setJobs] = useState<ExportJob[]>([]);
  const [starting, setStarting] = useState(false);
  const [cases] = useLoad<CaseListItem[]>(() => api.getAll("/api/cases/"), [], "loading the cases");
  const [listed] = useLoad(
    () => api.get("/api/export-jobs/", { query: { limit: 20 } }).then((page) => page.results as ExportJob[]),
    [],
    "loading the export jobs",
  );
  const watching = useRef(new Set<number>()); // open jobs whose end is to be announced
  useEffect(() => {
    if (!listed) return;
    for (const j of listed) if (isOpenJob(j)) watching.current.add(j.id);
    setJobs((now) => mergeJobs(listed, now));
  }, [listed]);
  const caseNames = useMemo(() => new Map((cases ?? []).map((c) => [c.id, c.accession_id])), [cases]);
  const caseName = (id: number) => caseNames.get(id) ?? `#${id}`;

  // Poll the jobs still queued or running; say so when one of them ends.
  const open = jobs.filter(isOpenJob).map((j) => j.id);
  useEffect(() => {
    if (!open.length) return;
    const timer = setTimeout(async () => {
      const read = await Promise.all(
        open.map((id) =>
          api.get("/api/export-jobs/{job_id}/", { path: { job_id: id } }).then(
            (j) => j as ExportJob,
            (e) => {
              showError(e, `reading export job ${id}`);
              return null;
            },
          ),
        ),
      );
      const updated = read.filter((j): j is ExportJob => j !== null);
      for (const j of updated) {
        if (isOpenJob(j) || !watching.current.has(j.id)) continue;
        watching.current.delete(j.id);
        if (j.status === "succeeded") showInfo(`Export job ${j.id} is ready (${j.n_cells} cells): download it below.`);
        else showError(j.error || "no reason recorded", `building export job ${j.id}`);
      }
      setJobs((now) => mergeJobs(now, updated));
    }, POLL_MS);
    return () => clearTimeout(timer);
  }, [jobs]);

  const start = async (e: Event) => {
    e.preventDefault();
    setStarting(true);
    try {
      const job = (await api.get("/api/exports/", { query: exportQuery(form) })) as ExportJob;
      watching.current.add(job.id);
      setJobs((now) => mergeJobs(now, [job]));
      showInfo(
        job.n_cells
          ? `Export job ${job.id} started: ${job.n_cells} cells as ${EXPORT_FORMATS[form.format].title}.`
          : `Export job ${job.id} started, but no cell matches these filters: the zip will hold only its README.`,
        START,
      );
    } catch (err) {
      showError(err, START);
    } finally {
      setStarting(false);
    }
  };

  const set = <K extends keyof ExportForm>(key: K, value: ExportForm[K]) => setForm((f) => ({ ...f, [key]: value }));

  return (
    <section class="exports" aria-labelledby="exports-title" data-testid="export-panel">
      <h1 id="exports-title">Export the labelled dataset</h1>
      <form onSubmit={start} class="export-form" data-testid="export-form">
        <fieldset class="formats">
          <legend>Format</legend>
          {(Object.keys(EXPORT_FORMATS) as ExportFormat[]).map((fmt) => (
            <label key={fmt} class="choice">
              <input
                type="radio"
                name="format"
                value={fmt}
                checked={form.format === fmt}
                onChange={() => set("format", fmt)}
                data-testid={`format-${fmt}`}
              />{" "}
              <strong>{EXPORT_FORMATS[fmt].title}</strong> <span class="muted">{EXPORT_FORMATS[fmt].text}</span>
            </label>
          ))}
        </fieldset>
        <fieldset class="filters">
          <legend>Which cells</legend>
          <label class="field">
            <span>Cells</span>
            <select value={form.label_status} onChange={(e) => set("label_status", e.currentTarget.value as LabelStatus)} data-testid="export-label-status">
              {(Object.keys(LABEL_STATUSES) as LabelStatus[]).map((s) => (
                <option key={s} value={s}>
                  {LABEL_STATUSES[s]}
                </option>
              ))}
            </select>
          </label>
          <label class="field">
            <span>Class</span>
            <select value={form.label} onChange={(e) => set("label", e.currentTarget.value)} data-testid="export-class">
              <option value="">every class</option>
              {boot.taxonomy.map((c) => (
                <option key={c.code} value={c.code}>
                  {c.code} {c.name}
                </option>
              ))}
            </select>
            <small>a class means labelled cells</small>
          </label>
          <label class="field">
            <span>Labelled by</span>
            <select value={form.label_source} onChange={(e) => set("label_source", e.currentTarget.value as LabelSource | "")} data-testid="export-source">
              <option value="">anyone</option>
              {(Object.keys(LABEL_SOURCES) as LabelSource[]).map((s) => (
                <option key={s} value={s}>
                  {LABEL_SOURCES[s]}
                </option>
              ))}
            </select>
          </label>
          <label class="field">
            <span>Case</span>
            <select value={form.caseId} onChange={(e) => set("caseId", e.currentTarget.value)} data-testid="export-case">
              <option value="">every case</option>
              {(cases ?? []).map((c) => (
                <option key={c.id} value={String(c.id)}>
                  {c.accession_id}
                </option>
              ))}
            </select>
          </label>
          <label class="field">
            <span>Since</span>
            <input type="date" value={form.since} onInput={(e) => set("since", e.currentTarget.value)} data-testid="export-since" />
            <small>labels given (unlabelled cells: imported) on or after this day, UTC</small>
          </label>
        </fieldset>
        <p>
          <button type="submit" class="primary" disabled={starting} data-testid="export-start">
            {starting ? "Starting…" : "Start the export"}
          </button>{" "}
          <span class="muted">The zip is built in the background; it stays here to download.</span>
        </p>
      </form>

      <table class="data export-jobs" data-testid="export-jobs">
        <caption>Export jobs, newest first{boot.user.roles.includes("admin") ? " (everyone's)" : " (yours)"}</caption>
        <thead>
          <tr>
            <th scope="col">Job</th>
            <th scope="col">Format</th>
            <th scope="col">Cells chosen</th>
            <th scope="col">Requested</th>
            <th scope="col">Progress</th>
            <th scope="col">Result</th>
          </tr>
        </thead>
        <tbody>
          {jobs.map((job) => {
            const progress = jobProgress(job);
            return (
              <tr key={job.id} data-testid="export-job" data-job-id={job.id} data-status={job.status}>
                <td>{job.id}</td>
                <td>{EXPORT_FORMATS[job.format as ExportFormat]?.title ?? job.format}</td>
                <td>{filtersText(job.params, caseName)}</td>
                <td>
                  {job.requested_by ?? "—"}, {new Date(job.created_at).toLocaleString()}
                </td>
                <td>
                  {progress.percent !== null && <Progress percent={progress.percent} label={`Export job ${job.id} progress`} />}
                  <span class="muted" data-testid="export-job-progress">
                    {progress.text}
                  </span>
                </td>
                <td>
                  {job.status === "succeeded" && job.download_url && (
                    <a class="button" href={job.download_url} download data-testid="export-download">
                      Download zip
                    </a>
                  )}
                  {job.status === "failed" && (
                    <p class="message error" role="alert" data-testid="export-job-error">
                      The export failed: {job.error || "no reason recorded"}
                    </p>
                  )}
                  {isOpenJob(job) && <span class={`status status-${job.status}`}>{job.status}</span>}
                </td>
              </tr>
            );
          })}
          {!jobs.length && (
            <tr>
              <td colSpan={6} class="muted">
                No export jobs yet.
              </td>
            </tr>
          )}
        </tbody>
      </table>
    </section>
  );
}
