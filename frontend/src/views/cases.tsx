// Cases: the list with filters and status, and one case's review: the gallery of its
// cells grouped by class, reclassification by key, the differential with where each count
// came from, and the sign-off, comments and reports (./review.tsx).
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { api } from "../api";
import { computeDifferential, effectiveCode, groupByClass, provenanceLine } from "../differential";
import type { Events } from "../events";
import { buildKeyMap, isTypingTarget, keyAction } from "../keys";
import type { Boot, Case, CaseDetail, Cell, Diff14Code, Differential, Label } from "../types";
import { Kbd, dialogOpen, roles, showError, showInfo, useLoad } from "../ui";
import { Palette } from "./label";
import { LisStatusPanel } from "../components/lisStatus";
import { CellNotesPanel, InterpretationPanel, SignoffPanel } from "./review";
import { GoldMarkForm } from "./trust";

const STATUS_TEXT: Record<string, string> = {
  new: "New",
  in_review: "In review",
  awaiting_second: "Awaiting second signature",
  signed_off: "Signed",
  amending: "Reopened for amendment",
  amended: "Amended",
};
/** A signature is on the case: its labels and comments are frozen until it is reopened. */
const SIGNED = new Set(["awaiting_second", "signed_off", "amended"]);

export function CaseList({ boot: _boot }: { boot: Boot }) {
  const [filters, setFilters] = useState({ status: "", search: "", diagnosis: "" });
  const [applied, setApplied] = useState(filters);
  const [page, reload, loading] = useLoad(
    () => // "" is "any status": the client leaves unset parameters out.
    api.get("/api/cases/", { query: { ...applied, status: (applied.status || undefined) as Case["status"] | undefined, limit: 200 } }),
    [applied.status, applied.search, applied.diagnosis],
    "loading the cases",
  );
  return (
    <section aria-labelledby="cases-title">
      <h1 id="cases-title">Cases</h1>
      <form
        class="filters"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          setApplied({ ...filters });
        }}
      >
        <label>
          Status{" "}
          <select value={filters.status} onChange={(e) => setFilters({ ...filters, status: e.currentTarget.value })} data-testid="filter-status">
            <option value="">any</option>
            {Object.entries(STATUS_TEXT).map(([v, t]) => (
              <option value={v} key={v}>
                {t}
              </option>
            ))}
          </select>
        </label>
        <label>
          Accession{" "}
          <input type="search" value={filters.search} onInput={(e) => setFilters({ ...filters, search: e.currentTarget.value })} data-testid="filter-search" />
        </label>
        <label>
          Diagnosis{" "}
          <input type="search" value={filters.diagnosis} onInput={(e) => setFilters({ ...filters, diagnosis: e.currentTarget.value })} />
        </label>
        <button type="submit">Filter</button>
        <button type="button" onClick={reload}>
          Refresh
        </button>
      </form>
      {loading && !page && <p>Loading…</p>}
      {page && (
        <>
          <p class="muted">{page.count} cases</p>
          <table class="data" data-testid="case-table">
            <thead>
              <tr>
                <th scope="col">Accession</th>
                <th scope="col">Diagnosis</th>
                <th scope="col">Status</th>
                <th scope="col" class="num">Cells</th>
                <th scope="col" class="num">Labelled</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {page.results.map((c) => (
                <tr key={c.id}>
                  <td>
                    <a href={`#/cases/${c.id}`}>{c.accession_id}</a>
                  </td>
                  <td>{c.diagnosis || <span class="muted">none</span>}</td>
                  <td>
                    <span class={`status status-${c.status}`}>{STATUS_TEXT[c.status] ?? c.status}</span>
                  </td>
                  <td class="num">{c.n_cells ?? ""}</td>
                  <td class="num">{c.n_labelled ?? ""}</td>
                  <td>{new Date(c.created_at).toLocaleDateString()}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {!page.results.length && <p>No case matches these filters.</p>}
        </>
      )}
    </section>
  );
}

const isOpen = (c: Cell) => !!c.queue && (c.queue.status === "queued" || c.queue.status === "leased");

export function CaseReview({ boot, caseId, events }: { boot: Boot; caseId: number; events: Events }) {
  const canLabel = roles.canLabel(boot);
  const names = useMemo(() => new Map(boot.taxonomy.map((c) => [c.code, c.name])), []);
  const keymap = useMemo(() => buildKeyMap(boot.taxonomy), []);
  const [caseInfo, setCase] = useState<CaseDetail | null>(null);
  const [cells, setCells] = useState<Cell[] | null>(null);
  const [selected, setSelected] = useState<Set<number>>(new Set());
  const [focusId, setFocusId] = useState<number | null>(null);
  const [saving, setSaving] = useState(0);
  const anchor = useRef<number | null>(null);
  const gallery = useRef<HTMLDivElement>(null);

  const load = async () => {
    try {
      const [detail, list] = await Promise.all([
        api.get("/api/cases/{case_id}/", { path: { case_id: caseId } }),
        api.getAll("/api/cells/", { query: { case: caseId } }),
      ]);
      setCase(detail);
      setCells(list);
    } catch (e) {
      showError(e, `loading case ${caseId}`);
    }
  };
  useEffect(() => {
    void load();
    // Queue changes elsewhere (someone labels one of these cells) refresh the case.
    let timer: number | undefined;
    const off = events.on("queue.counts", () => {
      clearTimeout(timer);
      timer = window.setTimeout(() => void refreshServer(), 500);
    });
    return () => {
      off();
      clearTimeout(timer);
    };
  }, [caseId]);

  const refreshServer = async () => {
    try {
      setCase(await api.get("/api/cases/{case_id}/", { path: { case_id: caseId } }));
    } catch (e) {
      showError(e, "refreshing the case");
    }
  };

  const codeOf = (c: Cell) => effectiveCode({ label: c.label?.code ?? null, predicted: c.prediction?.top_code ?? null });
  const groups = useMemo(() => (cells ? groupByClass(cells, codeOf, boot.taxonomy) : []), [cells]);
  const order = useMemo(() => groups.flatMap((g) => g.cells.map((c) => c.id)), [groups]);
  const local: Differential | null = useMemo(
    () =>
      cells
        ? computeDifferential(
            cells.map((c) => ({
              label: c.label?.code ?? null,
              labelSource: c.label?.source ?? null,
              predicted: c.prediction?.top_code ?? null,
              confidence: c.prediction?.confidence ?? null,
              conflict: c.has_label_conflict,
              open: isOpen(c),
            })),
            boot.taxonomy,
            boot.differential_rules,
            caseInfo
              ? {
                  confidence_threshold: caseInfo.differential.confidence_threshold,
                  model_version: caseInfo.differential.model_version,
                  imported_source: caseInfo.differential.imported_source,
                  adjudication: caseInfo.differential.open_disagreements - caseInfo.differential.label_conflicts,
                }
              : undefined,
          )
        : null,
    [cells, caseInfo],
  );

  const reclassify = async (code: string) => {
    if (!canLabel || !cells) return;
    const ids = selected.size ? [...selected] : focusId !== null ? [focusId] : [];
    if (!ids.length) {
      showInfo("Select one or more cells first (click, or arrow keys and Space).");
      return;
    }
    const before = new Map(cells.map((c) => [c.id, c]));
    const optimistic: Label = { id: 0, cell: 0, code: code as Diff14Code, source: "hematologist", annotator: boot.user.username, created_at: "", supersedes: null };
    setCells(cells.map((c) => (ids.includes(c.id) ? { ...c, label: { ...optimistic, cell: c.id } } : c)));
    setSelected(new Set()); // now, not after the answers: the next selection may start meanwhile
    setSaving((n) => n + 1);
    const results = await Promise.allSettled(ids.map((id) => api.post("/api/cells/{cell_id}/labels/", { path: { cell_id: id }, body: { code: code as Diff14Code } })));
    setSaving((n) => n - 1);
    const failed = ids.filter((_, i) => results[i].status === "rejected");
    results.forEach((r, i) => r.status === "rejected" && showError(r.reason, `reclassifying cell ${ids[i]} as ${code}`));
    setCells((current) =>
      (current ?? []).map((c) => {
        const i = ids.indexOf(c.id);
        if (i < 0) return c;
        const r = results[i];
        return r.status === "fulfilled" ? { ...c, label: r.value } : before.get(c.id) ?? c;
      }),
    );
    if (!failed.length) showInfo(`${ids.length} cell${ids.length > 1 ? "s" : ""} now ${code} (${names.get(code)}).`);
    void refreshServer();
  };

  const toggle = (id: number, mode: "only" | "toggle" | "range") => {
    setFocusId(id);
    setSelected((prev) => {
      if (mode === "only") return prev.size === 1 && prev.has(id) ? new Set() : new Set([id]);
      if (mode === "toggle") {
        const next = new Set(prev);
        next.has(id) ? next.delete(id) : next.add(id);
        anchor.current = id;
        return next;
      }
      const a = order.indexOf(anchor.current ?? id);
      const b = order.indexOf(id);
      const [lo, hi] = a < b ? [a, b] : [b, a];
      return new Set([...prev, ...order.slice(lo, hi + 1)]);
    });
    if (mode === "only") anchor.current = id;
  };

  const moveFocus = (delta: number, extend: boolean) => {
    if (!order.length) return;
    const i = focusId === null ? 0 : Math.min(order.length - 1, Math.max(0, order.indexOf(focusId) + delta));
    const id = order[i];
    setFocusId(id);
    if (extend) setSelected((prev) => new Set([...prev, id, ...(focusId !== null ? [focusId] : [])]));
    gallery.current?.querySelector<HTMLElement>(`[data-cell-id="${id}"]`)?.focus();
  };

  const columns = () => {
    const buttons = gallery.current?.querySelectorAll<HTMLElement>(".thumb");
    if (!buttons || buttons.length < 2) return 1;
    const top = buttons[0].offsetTop;
    let n = 0;
    for (const b of buttons) {
      if (b.offsetTop !== top) break;
      n += 1;
    }
    return Math.max(1, n);
  };

  const onGalleryKey = (e: KeyboardEvent) => {
    if (dialogOpen() || isTypingTarget(e.target)) return;
    const arrows: Record<string, number> = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns(), Home: -1e9, End: 1e9 };
    if (e.key in arrows) {
      e.preventDefault();
      moveFocus(arrows[e.key], e.shiftKey);
      return;
    }
    if ((e.key === " " || e.key === "Enter") && focusId !== null) {
      e.preventDefault();
      toggle(focusId, "toggle");
      return;
    }
    if (e.key === "Escape") {
      setSelected(new Set());
      return;
    }
    const action = keyAction(e, keymap);
    if (action?.kind === "label" && canLabel) {
      e.preventDefault();
      void reclassify(action.code);
    }
  };

  if (!caseInfo || !cells || !local) return <p>Loading case…</p>;
  const frozen = SIGNED.has(caseInfo.status);
  const selectedCell = selected.size === 1 ? [...selected][0] : null;
  const toReview = local.unidentified + local.open_review_items;

  return (
    <section class="case-review" aria-labelledby="case-title">
      <h1 id="case-title">
        Case {caseInfo.accession_id}{" "}
        <span class={`status status-${caseInfo.status}`} data-testid="case-status">
          {STATUS_TEXT[caseInfo.status] ?? caseInfo.status}
        </span>
      </h1>
      <p class="muted">
        {caseInfo.diagnosis || "No diagnosis recorded"} · {cells.length} cells · <a href="#/cases">all cases</a>
      </p>
      {canLabel && !frozen && toReview > 0 && (
        <p>
          <a class="button" href={`#/label/case/${caseInfo.id}`} data-testid="review-open-cells">
            Review this case's open cells
          </a>{" "}
          <span class="muted">the labelling screen, on this case's queued cells only</span>
        </p>
      )}
      <div class="review-layout">
        <div class="gallery-col">
          {canLabel && (
            <p class="help" id="gallery-help">
              Select cells with the mouse (Ctrl-click adds, Shift-click a range) or the keyboard (arrows move, Space
              selects, Shift+arrows extend, Esc clears); then press a class key or a class button. {selected.size} selected
              {saving ? ", saving…" : ""}.
            </p>
          )}
          <div class="gallery" ref={gallery} onKeyDown={onGalleryKey} data-testid="gallery" aria-describedby="gallery-help">
            {groups.map((g) => (
              <section key={g.code ?? "none"} class="gallery-group" aria-label={g.code ? `${g.code} ${names.get(g.code)}` : "Not classified"} data-group={g.code ?? "none"}>
                <h2>
                  {g.code ? (
                    <>
                      <span class="code">{g.code}</span> {names.get(g.code)}
                    </>
                  ) : (
                    "Not classified yet"
                  )}{" "}
                  <span class="muted">({g.cells.length})</span>
                </h2>
                <div class="thumbs">
                  {g.cells.map((c) => {
                    const isSel = selected.has(c.id);
                    const source = c.label ? (c.label.source === "imported" ? "imported" : "labelled") : c.prediction ? "model" : "none";
                    return (
                      <button
                        type="button"
                        key={c.id}
                        class={`thumb${isSel ? " selected" : ""}${isOpen(c) ? " open" : ""}`}
                        data-cell-id={c.id}
                        aria-pressed={isSel}
                        tabIndex={(focusId ?? order[0]) === c.id ? 0 : -1}
                        onFocus={() => setFocusId(c.id)}
                        onClick={(e) => {
                          if (e.detail === 0) return; // Enter/Space from the keyboard: handled above
                          toggle(c.id, e.shiftKey ? "range" : e.ctrlKey || e.metaKey ? "toggle" : "only");
                        }}
                        aria-label={`Cell ${c.id}: ${codeOf(c) ?? "not classified"} (${source}${c.prediction ? `, model ${c.prediction.top_code} ${Math.round(100 * c.prediction.confidence)} %` : ""})${isOpen(c) ? ", open in the queue" : ""}${isSel ? ", selected" : ""}`}
                      >
                        <img src={c.thumbnail_url} alt="" loading="lazy" width={96} height={96} />
                        <span class="badge">
                          {isSel && <span class="tick">✓ </span>}
                          {codeOf(c) ?? "?"} · {source === "model" ? `model ${Math.round(100 * (c.prediction?.confidence ?? 0))}%` : source}
                          {isOpen(c) ? " · queued" : ""}
                        </span>
                      </button>
                    );
                  })}
                </div>
              </section>
            ))}
          </div>
          {canLabel && (
            <Palette
              boot={boot}
              verb="Reclassify selected as"
              disabled={frozen}
              onPick={(code) => void reclassify(code)}
            />
          )}
        </div>
        <aside class="diff-col" aria-label="Differential">
          <DifferentialTable d={local} />
          {roles.isAdmin(boot) && selected.size === 1 && (
            <section class="gold-mark-cell" aria-labelledby="gold-cell-title" data-testid="gold-mark-cell">
              <h2 id="gold-cell-title">Gold cell</h2>
              <p class="muted">Readers and models are measured on gold cells; the reference class defaults to the cell's current one.</p>
              {(() => {
                const cell = cells.find((c) => selected.has(c.id));
                return cell ? <GoldMarkForm key={cell.id} boot={boot} cellId={cell.id} defaultCode={codeOf(cell)} /> : null;
              })()}
            </section>
          )}
          <CellNotesPanel boot={boot} caseInfo={caseInfo} selectedCell={selectedCell} />
          <InterpretationPanel boot={boot} caseInfo={caseInfo} />
          <SignoffPanel boot={boot} caseInfo={caseInfo} refreshKey={caseInfo} onChanged={() => void refreshServer()} />
          <LisStatusPanel boot={boot} caseId={caseId} refreshKey={caseInfo} />
        </aside>
      </div>
    </section>
  );
}

export function DifferentialTable({ d }: { d: Differential }) {
  const fmt = (p: number | null) => (p === null ? "–" : `${p.toFixed(1)} %`);
  return (
    <div class="differential" data-testid="differential">
      <h2>Differential</h2>
      <p class="muted" data-testid="provenance">
        {provenanceLine(d)}
      </p>
      <table class="data compact">
        <thead>
          <tr>
            <th scope="col">Class</th>
            <th scope="col" class="num" title="reviewed cells: in the portal and imported">
              Count
            </th>
            <th scope="col" class="num">
              %
            </th>
            <th scope="col" class="num" title="reviewed in the portal">
              Portal
            </th>
            <th scope="col" class="num" title={`imported${d.imported_source ? ` (${d.imported_source})` : ""}`}>
              Imp.
            </th>
            <th scope="col" class="num muted" title="the model's class only, not counted">
              Model
            </th>
          </tr>
        </thead>
        <tbody>
          {d.classes.map((c) => (
            <tr key={c.code} data-code={c.code} class={c.count || c.model_only ? "" : "zero"}>
              <th scope="row" title={c.name}>
                <span class="code">{c.code}</span> <span class="name">{c.name}</span>
              </th>
              <td class="num" data-testid={`count-${c.code}`}>
                {c.count}
              </td>
              <td class="num">{c.per_100_wbc !== null ? `${c.per_100_wbc.toFixed(1)} /100 WBC` : fmt(c.percent)}</td>
              <td class="num" data-testid={`portal-${c.code}`}>
                {c.reviewed_in_portal || ""}
              </td>
              <td class="num" data-testid={`imported-${c.code}`}>
                {c.imported || ""}
              </td>
              <td class="num muted" data-testid={`model-${c.code}`}>
                {c.model_only || ""}
              </td>
            </tr>
          ))}
        </tbody>
        <tfoot>
          <tr>
            <th scope="row">Normal</th>
            <td class="num" data-testid="total-normal">{d.totals.normal.count}</td>
            <td class="num">{fmt(d.totals.normal.percent)}</td>
            <td colSpan={3}></td>
          </tr>
          <tr>
            <th scope="row">Abnormal</th>
            <td class="num" data-testid="total-abnormal">{d.totals.abnormal.count}</td>
            <td class="num">{fmt(d.totals.abnormal.percent)}</td>
            <td colSpan={3}></td>
          </tr>
        </tfoot>
      </table>
      <p class="muted">
        Counts and percentages are of reviewed cells; flags too. Pre-classified by {d.model_version ?? "no active model"}.
      </p>
      <h3>Flags</h3>
      <ul class="flags" data-testid="flags">
        {d.flags.map((f) => (
          <li key={f.code}>
            <span class="tag">⚠</span> {f.message}
          </li>
        ))}
        {!d.flags.length && <li>None</li>}
      </ul>
      <p class="muted">
        Keys: <Kbd k="Esc" /> clears the selection.
      </p>
    </div>
  );
}
