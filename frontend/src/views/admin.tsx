// The admin console: model versions side by side (TPR bars, confusion matrices, promote,
// rollback), training jobs (trigger, live progress, log tail, result), the queue's
// composition with the routing thresholds, import/upload with a progress bar, and the
// trust tab (agreement between readers and gold cells, views/trust.tsx).
import { useEffect, useMemo, useState } from "preact/hooks";
import { ApiError, api, type UploadProgress } from "../api";
import { Bars, ConfusionMatrix, PairedBars, Progress, guardRow } from "../components/charts";
import type { Events } from "../events";
import { reasonText } from "../labelling";
import { laterOf } from "../training";
import type { Boot, ModelVersion, ModelVersionDetail, QueueCounts, RoutingConfig, TrainingJob, UploadSummary } from "../types";
import { confirmAction, showError, showInfo, useLoad } from "../ui";
import { ReviewRulesForm } from "./review";
import { TrustTab } from "./trust";

const TABS: [string, string][] = [
  ["models", "Model versions"],
  ["training", "Training"],
  ["queue", "Queue and routing"],
  ["import", "Import"],
  ["trust", "Agreement and gold"],
  ["review", "Review rules"],
];

export function AdminConsole({ boot, events, tab }: { boot: Boot; events: Events; tab: string }) {
  return (
    <section class="admin" aria-labelledby="admin-title">
      <h1 id="admin-title">Admin console</h1>
      <nav class="tabs" aria-label="Admin sections">
        {TABS.map(([id, text]) => (
          <a key={id} href={`#/admin/${id}`} aria-current={tab === id ? "page" : undefined}>
            {text}
          </a>
        ))}
      </nav>
      {tab === "models" && <ModelsTab boot={boot} events={events} />}
      {tab === "training" && <TrainingTab events={events} />}
      {tab === "queue" && <QueueTab boot={boot} events={events} />}
      {tab === "import" && <ImportTab boot={boot} />}
      {tab === "trust" && <TrustTab boot={boot} />}
      {tab === "review" && <ReviewRulesForm />}
    </section>
  );
}

// --- model versions ------------------------------------------------------------------------

const pct = (v: number | null | undefined) => (v === null || v === undefined ? "n/a" : `${(100 * v).toFixed(1)} %`);

function confusionOf(d: ModelVersionDetail): number[][] | null {
  return d.metrics?.evaluation_set?.confusion ?? d.metrics?.confusion ?? null;
}

function tprOf(d: ModelVersionDetail): Record<string, number | null> {
  const perClass = d.metrics?.evaluation_set?.per_class ?? d.metrics?.per_class;
  if (d.per_class_tpr && Object.keys(d.per_class_tpr).length) return d.per_class_tpr;
  return Object.fromEntries(Object.entries(perClass ?? {}).map(([k, v]) => [k, v?.tpr ?? null]));
}

function ModelsTab({ boot, events }: { boot: Boot; events: Events }) {
  const [versions, reload] = useLoad(() => api.getAll("/api/model-versions/"), [], "loading the model versions");
  const [a, setA] = useState<number | null>(null);
  const [b, setB] = useState<number | null>(null);
  useEffect(() => events.on("model.activated", () => reload()), []);
  useEffect(() => {
    if (!versions?.length) return;
    const active = versions.find((v) => v.status === "active") ?? versions[0];
    if (a === null || !versions.some((v) => v.id === a)) setA(active.id);
    if (b === null || !versions.some((v) => v.id === b)) setB((versions.find((v) => v.id !== active.id) ?? active).id);
  }, [versions]);
  const [details, , loadingDetails] = useLoad(
    async () => (a && b ? Promise.all([a, b].map((id) => api.get("/api/model-versions/{version_id}/", { path: { version_id: id } }))) : null),
    [a, b, versions],
    "loading the two versions",
  );
  const [compare] = useLoad(
    async () => (a && b && a !== b ? api.get("/api/model-versions/compare/", { query: { a, b } }) : null),
    [a, b, versions],
    "comparing the versions",
  );

  const act = async (v: ModelVersion, action: "promote" | "rollback", force = false) => {
    const what = action === "promote" ? (force ? "Promote anyway" : "Promote") : "Roll back to";
    const ok = await confirmAction(
      `${what} ${v.name}?`,
      <p>
        {v.name} becomes the active model. Every unlabelled cell is scored again with it and the review queue is rebuilt;
        the current active version stays available for rollback.
        {force ? " The promotion guard found regressions; you are overriding it." : ""}
      </p>,
      `${what} ${v.name}`,
      force,
    );
    if (!ok) return;
    try {
      const version = { path: { version_id: v.id } };
      if (action === "promote") await api.post("/api/model-versions/{version_id}/promote/", { ...version, body: { force } });
      else await api.post("/api/model-versions/{version_id}/rollback/", version);
      showInfo(`${v.name} is now the active model.`);
      reload();
    } catch (e) {
      showError(e, `${action === "promote" ? "promoting" : "rolling back to"} ${v.name}`);
      if (e instanceof ApiError && e.code === "regression" && !force) {
        if (await confirmAction(`Override the guard for ${v.name}?`, <p>{e.message}</p>, "Review and promote anyway", true)) {
          await act(v, "promote", true);
        }
      }
    }
  };

  if (!versions) return <p>Loading model versions…</p>;
  if (!versions.length) return <p>No model version is registered yet.</p>;
  const codes = boot.taxonomy.map((c) => c.code);
  const names = new Map(boot.taxonomy.map((c) => [c.code, c.name]));
  const [da, db] = details ?? [null, null];
  return (
    <div data-testid="models-tab">
      <table class="data" data-testid="versions">
        <caption>Model versions, newest first</caption>
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Status</th>
            <th scope="col">Created</th>
            <th scope="col">Triggered by</th>
            <th scope="col">Actions</th>
          </tr>
        </thead>
        <tbody>
          {versions.map((v) => (
            <tr key={v.id} data-version={v.name}>
              <th scope="row">{v.name}</th>
              <td>
                <span class={`status status-${v.status}`}>{v.status}</span>
              </td>
              <td>{new Date(v.created_at).toLocaleString()}</td>
              <td>{v.triggered_by || "–"}</td>
              <td>
                {v.status === "candidate" && (
                  <button type="button" onClick={() => act(v, "promote")}>
                    Promote…
                  </button>
                )}
                {v.status === "retired" && (
                  <button type="button" onClick={() => act(v, "rollback")}>
                    Roll back to this…
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>

      <div class="pick">
        <label>
          Version A{" "}
          <select value={a ?? ""} onChange={(e) => setA(Number(e.currentTarget.value))} data-testid="pick-a">
            {versions.map((v) => (
              <option key={v.id} value={v.id}>
                {v.name} ({v.status})
              </option>
            ))}
          </select>
        </label>
        <label>
          Version B{" "}
          <select value={b ?? ""} onChange={(e) => setB(Number(e.currentTarget.value))} data-testid="pick-b">
            {versions.map((v) => (
              <option key={v.id} value={v.id}>
                {v.name} ({v.status})
              </option>
            ))}
          </select>
        </label>
        {loadingDetails && <span class="muted">loading…</span>}
      </div>
      {compare && (
        <p class={compare.guard_b_over_a.passes ? "guard ok" : "guard bad"} data-testid="guard">
          Promotion guard, B over A: {compare.guard_b_over_a.passes ? "✓ passes" : "✗ would be held back"}
          {compare.guard_b_over_a.reasons.length ? ` (${compare.guard_b_over_a.reasons.join("; ")})` : ""}
          {compare.guard_b_over_a.cannot_judge ? `; ${compare.guard_b_over_a.cannot_judge}` : ""}
        </p>
      )}
      {da && db && (
        <>
          <PairedBars
            nameA={da.name}
            nameB={db.name}
            rows={codes.map((code) => ({ code, label: names.get(code) ?? code, a: tprOf(da)[code] ?? null, b: tprOf(db)[code] ?? null, ...guardRow(compare, code) }))}
          />
          <div class="side-by-side">
            {[da, db].map((d, i) => (
              <VersionCard key={`${i}-${d.id}`} d={d} which={i ? "B" : "A"} names={names} />
            ))}
          </div>
        </>
      )}
    </div>
  );
}

function VersionCard({ d, which, names }: { d: ModelVersionDetail; which: string; names: Map<string, string> }) {
  const tpr = tprOf(d);
  const matrix = confusionOf(d);
  const m = (d.metrics?.evaluation_set ?? d.metrics ?? {}) as Record<string, unknown>;
  const codes = d.class_codes?.length ? d.class_codes : [...names.keys()];
  return (
    <article class="version-card" data-testid={`version-${which}`}>
      <h2>
        {which}: {d.name} <span class={`status status-${d.status}`}>{d.status}</span>
      </h2>
      <p class="muted">
        {d.arch} · balanced accuracy {pct(m.balanced_accuracy as number | null)} · normal TPR {pct(m.normal_tpr as number | null)} · abnormal TPR{" "}
        {pct(m.abnormal_tpr as number | null)}
      </p>
      <Bars
        caption={`Per-class TPR of ${d.name}`}
        max={1}
        format={pct}
        bars={codes.map((code) => ({ key: code, label: code, value: tpr[code] ?? null, title: names.get(code) }))}
      />
      {matrix ? (
        <ConfusionMatrix matrix={matrix} codes={codes} caption={`Confusion matrix of ${d.name} (rows: true class, columns: predicted)`} />
      ) : (
        <p class="muted">No confusion matrix was recorded for this version.</p>
      )}
    </article>
  );
}

// --- training ----------------------------------------------------------------------------------

function TrainingTab({ events }: { events: Events }) {
  const [jobs, reload] = useLoad(() => api.get("/api/training-jobs/", { query: { limit: 20 } }).then((p) => p.results), [], "loading the training jobs");
  const [live, setLive] = useState<Record<number, Partial<TrainingJob>>>({});
  const [logs, setLogs] = useState<Record<number, string>>({});
  const [starting, setStarting] = useState(false);
  useEffect(() => {
    const offs = [
      events.on("training.progress", (data: { id: number; status: TrainingJob["status"]; progress: TrainingJob["progress"]; error: string; result_version: string | null }) => {
        const next = { status: data.status, progress: data.progress, error: data.error, result_version_name: data.result_version };
        setLive((prev) => ({ ...prev, [data.id]: laterOf(prev[data.id], next) }));
        if (["succeeded", "failed", "cancelled"].includes(data.status)) reload();
      }),
      events.on("training.log", (data: { id: number; log_tail: string }) => setLogs((prev) => ({ ...prev, [data.id]: data.log_tail }))),
      // Progress sent while the socket was down is lost: read the jobs again on reconnect.
      events.onState((state) => state === "open" && reload()),
    ];
    return () => offs.forEach((off) => off());
  }, []);

  const merged = (jobs ?? []).map((j) => ({ ...laterOf(j, live[j.id]), log_tail: logs[j.id] ?? j.log_tail }) as TrainingJob);
  const open = merged.find((j) => j.status === "queued" || j.status === "running");
  // The list has no log; the newest job's detail has it.
  const newest = merged[0];
  const [detail, reloadDetail] = useLoad(
    async () => (newest ? api.get("/api/training-jobs/{job_id}/", { path: { job_id: newest.id } }) : null),
    [newest?.id, newest?.status],
    "loading the training job",
  );
  useEffect(() => {
    if (!open) return;
    const t = setInterval(reloadDetail, 5000); // the websocket is the fast path; this is the safety net
    return () => clearInterval(t);
  }, [open?.id]);

  const trigger = async () => {
    const ok = await confirmAction(
      "Start retraining now?",
      <p>A new candidate version is trained on every current label and judged on the fixed evaluation set. It is promoted only if it does not regress.</p>,
      "Start retraining",
    );
    if (!ok) return;
    setStarting(true);
    try {
      const job = await api.post("/api/training-jobs/", { body: { params: {} } });
      showInfo(`Training job ${job.id} is queued.`);
      reload();
    } catch (e) {
      showError(e, "starting retraining");
    } finally {
      setStarting(false);
    }
  };
  const cancel = async (job: TrainingJob) => {
    if (!(await confirmAction(`Cancel training job ${job.id}?`, <p>The job stops at its next progress report; no version is registered.</p>, "Cancel the job", true))) return;
    try {
      await api.post("/api/training-jobs/{job_id}/cancel/", { path: { job_id: job.id } });
      reload();
    } catch (e) {
      showError(e, `cancelling job ${job.id}`);
    }
  };

  const shownJob = newest ? ({ ...newest, ...(detail && detail.id === newest.id ? { log_tail: detail.log_tail } : {}) } as TrainingJob) : null;
  const logText = (newest && logs[newest.id]) || shownJob?.log_tail || "";
  return (
    <div data-testid="training-tab">
      <p>
        <button type="button" class="primary" onClick={trigger} disabled={!!open || starting} data-testid="trigger-training">
          Retrain now…
        </button>{" "}
        {open && <span class="muted">Job {open.id} is {open.status}; one job runs at a time.</span>}
      </p>
      {shownJob && (
        <article class="job" data-testid="job" data-status={shownJob.status}>
          <h2>
            Job {shownJob.id}: <span class={`status status-${shownJob.status}`} data-testid="job-status">{shownJob.status}</span>
          </h2>
          <Progress
            percent={typeof shownJob.progress?.percent === "number" ? shownJob.progress.percent : shownJob.status === "succeeded" ? 100 : null}
            label={`Training job ${shownJob.id} progress`}
          />
          <p class="muted" aria-live="polite" data-testid="job-stage">
            Stage: {String(shownJob.progress?.stage ?? (shownJob.status === "queued" ? "waiting for a worker" : shownJob.status))}
            {shownJob.progress?.epoch !== undefined ? ` · epoch ${shownJob.progress.epoch}${shownJob.progress.epochs ? ` of ${shownJob.progress.epochs}` : ""}` : ""}
          </p>
          {shownJob.status === "succeeded" && (
            <p data-testid="job-result">
              Result: candidate <strong>{shownJob.result_version_name ?? "?"}</strong> — compare it under{" "}
              <a href="#/admin/models">Model versions</a>.
            </p>
          )}
          {shownJob.status === "failed" && (
            <p class="message error" data-testid="job-error">
              The job failed: {shownJob.error || "no error recorded"}
            </p>
          )}
          {open && open.id === shownJob.id && (
            <button type="button" onClick={() => cancel(shownJob)}>
              Cancel job…
            </button>
          )}
          <h3>Log tail</h3>
          <pre class="log" data-testid="job-log" tabIndex={0} aria-label="Training log">
            {logText || "No log lines yet."}
          </pre>
        </article>
      )}
      <table class="data">
        <caption>Training jobs, newest first</caption>
        <thead>
          <tr>
            <th scope="col">Job</th>
            <th scope="col">Trigger</th>
            <th scope="col">Status</th>
            <th scope="col">Progress</th>
            <th scope="col">Result</th>
            <th scope="col">Started by</th>
            <th scope="col">Created</th>
          </tr>
        </thead>
        <tbody>
          {merged.map((j) => (
            <tr key={j.id}>
              <th scope="row">{j.id}</th>
              <td>{j.trigger}</td>
              <td>{j.status}</td>
              <td class="num">{typeof j.progress?.percent === "number" ? `${Math.round(j.progress.percent)} %` : "–"}</td>
              <td>{j.result_version_name ?? (j.error ? `failed: ${j.error.slice(0, 80)}` : "–")}</td>
              <td>{j.created_by ?? "schedule"}</td>
              <td>{new Date(j.created_at).toLocaleString()}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

// --- queue and routing ---------------------------------------------------------------------------

function QueueTab({ boot, events }: { boot: Boot; events: Events }) {
  const [counts, setCounts] = useState<QueueCounts | null>(null);
  const [config, reloadConfig] = useLoad(() => api.get("/api/routing-config/"), [], "loading the routing settings");
  const [form, setForm] = useState<Partial<RoutingConfig>>({});
  // Edits in progress are never overwritten by a settings reload that arrives later.
  const [dirty, setDirty] = useState(false);
  const edit = (change: Partial<RoutingConfig>) => {
    setDirty(true);
    setForm({ ...form, ...change });
  };
  useEffect(() => {
    const read = () => api.get("/api/queue/counts/").then(setCounts, (e) => showError(e, "reading the queue counts"));
    void read();
    const offs = [events.on("queue.counts", setCounts), events.onState((state) => state === "open" && void read())];
    return () => offs.forEach((off) => off());
  }, []);
  useEffect(() => {
    if (config && !dirty) setForm(config);
  }, [config]);
  const names = new Map(boot.taxonomy.map((c) => [c.code, c.name]));

  const save = async (e: Event) => {
    e.preventDefault();
    if (!config) return;
    const changed: Record<string, unknown> = {};
    for (const k of ["confidence_threshold", "weak_class_tpr", "audit_rate", "strategy", "lease_seconds", "retrain_min_new_labels", "retrain_every_labels", "labels_required_abnormal"] as const) {
      if (form[k] !== config[k]) changed[k] = form[k];
    }
    if (!Object.keys(changed).length) {
      showInfo("Nothing changed.");
      return;
    }
    try {
      const saved = await api.patch("/api/routing-config/", { body: changed });
      setForm(saved);
      setDirty(false);
      showInfo("Routing settings saved; they apply to cells routed from now on.");
      reloadConfig();
    } catch (err) {
      showError(err, "saving the routing settings");
    }
  };
  const num = (k: keyof RoutingConfig, label: string, step: string, help: string) => (
    <label class="field">
      <span>{label}</span>
      <input
        type="number"
        step={step}
        value={String(form[k] ?? "")}
        onInput={(e) => edit({ [k]: e.currentTarget.value === "" ? undefined : Number(e.currentTarget.value) })}
        data-testid={`routing-${k}`}
      />
      <small>{help}</small>
    </label>
  );

  const total = counts ? counts.queued + counts.leased : 0;
  return (
    <div data-testid="queue-tab">
      {counts && (
        <>
          <p aria-live="polite">
            {total} cells open: {counts.queued} queued, {counts.leased} being labelled.
          </p>
          <div class="side-by-side">
            <Bars
              caption="By reason (a cell counts once per reason)"
              testid="by-reason"
              format={(v) => String(v ?? 0)}
              bars={Object.entries(counts.by_reason)
                .sort((x, y) => y[1] - x[1])
                .map(([r, n]) => ({ key: r, label: reasonText(r, boot.queue_reasons), value: n }))}
            />
            <Bars
              caption="By predicted class"
              testid="by-class"
              format={(v) => String(v ?? 0)}
              bars={boot.taxonomy.filter((c) => counts.by_class[c.code]).map((c) => ({ key: c.code, label: c.code, value: counts.by_class[c.code], title: names.get(c.code) }))}
            />
          </div>
        </>
      )}
      {config && (
        <form class="routing" onSubmit={save} aria-labelledby="routing-title">
          <h2 id="routing-title">Routing thresholds</h2>
          {num("confidence_threshold", "Confidence threshold", "0.01", "cells below this calibrated confidence are queued (0–1)")}
          {num("weak_class_tpr", "Weak-class TPR", "0.01", "a class with validation TPR below this is weak (0–1)")}
          {num("audit_rate", "Audit rate", "0.005", "share of confident cells queued at random (0–1)")}
          <label class="field">
            <span>Strategy</span>
            <select value={form.strategy ?? ""} onChange={(e) => edit({ strategy: e.currentTarget.value })}>
              {["default", "least_confidence", "margin", "entropy", "weak_class", "kcenter", "random"].map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </select>
            <small>the order of the queue</small>
          </label>
          {num("lease_seconds", "Lease (seconds)", "1", "how long a cell stays with one person")}
          {num("retrain_min_new_labels", "Labels before scheduled retraining", "1", "new hematologist labels needed")}
          {num("retrain_every_labels", "Retrain after every N labels", "1", "starts retraining as soon as N new hematologist labels exist; 0 = only the nightly schedule")}
          {num("labels_required_abnormal", "Independent reads (abnormal)", "1", "reads a cell predicted abnormal needs; 2 = double reading (1–5)")}
          <p>
            <button type="submit" class="primary">
              Save thresholds
            </button>{" "}
            <span class="muted">Last changed {new Date(config.updated_at).toLocaleString()}</span>
          </p>
        </form>
      )}
    </div>
  );
}

// --- import ---------------------------------------------------------------------------------------

function ImportTab({ boot }: { boot: Boot }) {
  const [files, setFiles] = useState<File[]>([]);
  const [caseName, setCaseName] = useState("");
  const [label, setLabel] = useState("");
  const [progress, setProgress] = useState<UploadProgress | null>(null);
  const [phase, setPhase] = useState<"idle" | "uploading" | "importing">("idle");
  const [summary, setSummary] = useState<UploadSummary | null>(null);
  const [failure, setFailure] = useState<ApiError | null>(null);
  const isZip = useMemo(() => files.some((f) => f.name.toLowerCase().endsWith(".zip")), [files]);

  const send = async (e: Event) => {
    e.preventDefault();
    if (!files.length) {
      showError("Choose images or one zip first.");
      return;
    }
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    if (caseName) form.append("case", caseName);
    if (label && !isZip) form.append("label", label);
    setSummary(null);
    setFailure(null);
    setPhase("uploading");
    setProgress({ loaded: 0, total: files.reduce((s, f) => s + f.size, 0) });
    try {
      const result = await api.upload("/api/cells/upload/", form, (p) => {
        setProgress(p);
        if (p.total && p.loaded >= p.total) setPhase("importing");
      });
      setSummary(result);
      showInfo(result.line);
    } catch (err) {
      if (err instanceof ApiError) setFailure(err);
      showError(err, "importing");
    } finally {
      setPhase("idle");
    }
  };
  const percent = progress && progress.total ? (100 * progress.loaded) / progress.total : null;
  const skipped = summary?.skipped_files ?? (failure ? Object.entries(failure.fields).map(([file, reason]) => ({ file, reason })) : []);
  return (
    <div data-testid="import-tab">
      <form onSubmit={send} class="upload">
        <label class="field">
          <span>Images (JPEG, PNG, BMP, TIFF) or one zip</span>
          <input type="file" multiple accept=".jpg,.jpeg,.png,.bmp,.tif,.tiff,.zip" onChange={(e) => setFiles([...(e.currentTarget.files ?? [])])} data-testid="upload-files" />
        </label>
        <label class="field">
          <span>Case (accession id)</span>
          <input type="text" value={caseName} onInput={(e) => setCaseName(e.currentTarget.value)} placeholder={isZip ? "from the zip's layout" : "upload-<date>"} />
        </label>
        <label class="field">
          <span>Class of every image</span>
          <select value={label} onChange={(e) => setLabel(e.currentTarget.value)} disabled={isZip}>
            <option value="">unlabelled</option>
            {boot.taxonomy.map((c) => (
              <option key={c.code} value={c.code}>
                {c.code} {c.name}
              </option>
            ))}
          </select>
          <small>{isZip ? "a zip carries its own classes" : "leave unlabelled to let the model and the queue decide"}</small>
        </label>
        <p>
          <button type="submit" class="primary" disabled={phase !== "idle"} data-testid="upload-submit">
            Upload {files.length ? `${files.length} file${files.length > 1 ? "s" : ""}` : ""}
          </button>
        </p>
      </form>
      {phase !== "idle" && (
        <div aria-live="polite">
          <Progress percent={phase === "importing" ? 100 : percent} label="Upload progress" />
          <p class="muted">{phase === "uploading" ? "Uploading…" : "Uploaded; checking and importing the images…"}</p>
        </div>
      )}
      {summary && (
        <section class="summary" data-testid="upload-summary" aria-labelledby="summary-title">
          <h2 id="summary-title">Imported</h2>
          <p>{summary.line}</p>
          <ul>
            <li>{summary.new_cells} new cells ({summary.labelled} labelled)</li>
            <li>{summary.duplicates} duplicates (already stored, not stored twice)</li>
            <li>{summary.skipped} skipped</li>
            {summary.cases_created > 0 && <li>{summary.cases_created} cases created</li>}
          </ul>
        </section>
      )}
      {skipped.length > 0 && (
        <table class="data" data-testid="skipped">
          <caption>Skipped files and why</caption>
          <thead>
            <tr>
              <th scope="col">File</th>
              <th scope="col">Reason</th>
            </tr>
          </thead>
          <tbody>
            {skipped.map((s) => (
              <tr key={s.file}>
                <td>{s.file}</td>
                <td>{s.reason}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
