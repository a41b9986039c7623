// The admin console's trust tab: agreement between independent readers (Fleiss' kappa
// overall, per class and per week; Cohen's kappa per pair of readers as a heat map) and
// gold cells (readers' and models' accuracy on them, the list, marking and retiring).
import { useState } from "preact/hooks";
import { ApiError, api } from "../api";
import { LineChart } from "../components/charts";
import { KAPPA_BANDS, classKappaRows, formatKappa, goldClasses, isLow, kappaBand, pairMatrix } from "../trust";
import type { Boot, Diff14Code, GoldCell, GoldGroup, GoldModel, GoldPerClass, GoldReader } from "../types";
import { confirmAction, showError, showInfo, useLoad } from "../ui";

export function TrustTab({ boot }: { boot: Boot }) {
  const [goldVersion, setGoldVersion] = useState(0);
  return (
    <div data-testid="trust-tab">
      <AgreementPanel boot={boot} />
      <GoldPanel boot={boot} version={goldVersion} onChange={() => setGoldVersion((v) => v + 1)} />
    </div>
  );
}

// --- agreement -------------------------------------------------------------------------------

function KappaValue({ kappa, n, testid }: { kappa: number | null; n?: number; testid?: string }) {
  const band = kappaBand(kappa);
  return (
    <span class="kappa" data-testid={testid} title={`Landis & Koch: ${band.name}`}>
      <strong>{formatKappa(kappa)}</strong> <span class="muted">({band.name}{n !== undefined ? `, n = ${n}` : ""})</span>
    </span>
  );
}

export function AgreementPanel({ boot }: { boot: Boot }) {
  const [summary, reload, loading] = useLoad(() => api.get("/api/agreement/"), [], "loading the agreement between readers");
  if (!summary) return <section aria-labelledby="agreement-title"><h2 id="agreement-title">Agreement between readers</h2><p>{loading ? "Loading…" : "Not available."}</p></section>;
  const { readers, cells } = pairMatrix(summary.pairs);
  const classes = classKappaRows(summary.per_class, boot.taxonomy);
  return (
    <section class="agreement" aria-labelledby="agreement-title" data-testid="agreement">
      <h2 id="agreement-title">Agreement between readers</h2>
      {summary.n_items === 0 ? (
        <p data-testid="agreement-empty">
          No cell has been read independently by two people yet, so there is no agreement to measure. Double reading
          starts when a case asks for two reads, or when "Independent reads (abnormal)" under{" "}
          <a href="#/admin/queue">Queue and routing</a> is 2 or more.
        </p>
      ) : (
        <>
          <p class="headline">
            Fleiss' kappa over every double-read cell: <KappaValue kappa={summary.fleiss_kappa} n={summary.n_items} testid="fleiss" />
            <span class="muted"> · n = cells read by two or more people</span>{" "}
            <button type="button" onClick={reload}>
              Refresh
            </button>
          </p>
          <div class="side-by-side">
            <figure class="bars">
              <figcaption>Cohen's kappa per pair of readers (n = cells both read)</figcaption>
              <table class="matrix kappa-matrix" data-testid="kappa-pairs" style={{ fontSize: ".85rem", width: "auto" }}>
                <thead>
                  <tr>
                    <th scope="col">
                      <span class="visually-hidden">reader</span>
                    </th>
                    {readers.map((r) => (
                      <th scope="col" key={r}>
                        {r}
                      </th>
                    ))}
                  </tr>
                </thead>
                <tbody>
                  {readers.map((r, i) => (
                    <tr key={r}>
                      <th scope="row">{r}</th>
                      {readers.map((other, j) => {
                        const c = cells[i][j];
                        if (i === j) return <td key={other} class="zero">–</td>;
                        if (!c) return <td key={other} class="zero" title={`${r} and ${other} have read no cell in common`}>·</td>;
                        const band = kappaBand(c.kappa);
                        return (
                          <td
                            key={other}
                            data-pair={`${r}|${other}`}
                            style={{ background: band.colour, minWidth: "4.5rem", textAlign: "center" }}
                            title={`${r} vs ${other}: kappa ${formatKappa(c.kappa)} (${band.name}) over ${c.n} cells`}
                          >
                            <strong>{formatKappa(c.kappa)}</strong>
                            <br />
                            <span class="muted">n = {c.n}</span>
                          </td>
                        );
                      })}
                    </tr>
                  ))}
                </tbody>
              </table>
              <KappaLegend />
            </figure>
            <div>
              <table class="data compact" data-testid="kappa-classes">
                <caption>Fleiss' kappa per class (over {summary.n_items} cells)</caption>
                <thead>
                  <tr>
                    <th scope="col">Class</th>
                    <th scope="col" class="num" title="double-read cells in which at least one reader chose the class">
                      n
                    </th>
                    <th scope="col" class="num">Kappa</th>
                    <th scope="col">Landis & Koch</th>
                  </tr>
                </thead>
                <tbody>
                  {classes.map((c) => {
                    const band = kappaBand(c.kappa);
                    return (
                      <tr key={c.code} data-code={c.code}>
                        <th scope="row" title={c.name}>
                          <span class="code">{c.code}</span> {c.name}
                        </th>
                        <td class="num">{summary.per_class_items?.[c.code] ?? "–"}</td>
                        <td class="num" style={{ background: band.colour }}>
                          {formatKappa(c.kappa)}
                        </td>
                        <td>{band.name}</td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
              <p class="muted">
                Not shown: classes no reader chose
                {boot.taxonomy.filter((c) => summary.per_class[c.code] === null).length
                  ? ` (${boot.taxonomy
                      .filter((c) => summary.per_class[c.code] === null)
                      .map((c) => c.code)
                      .join(", ")})`
                  : ""}
                ; kappa is undefined for them.
              </p>
              <LineChart
                caption="Fleiss' kappa per week (of the last read of each cell)"
                testid="kappa-weeks"
                min={Math.min(0, ...summary.by_week.map((w) => w.kappa ?? 0))}
                max={1}
                ticks={[0, 0.2, 0.4, 0.6, 0.8, 1]}
                format={formatKappa}
                points={summary.by_week.map((w) => ({ key: w.week, label: w.week, value: w.kappa, note: `n = ${w.n_items}, ${kappaBand(w.kappa).name}` }))}
              />
            </div>
          </div>
          <p class="muted">
            Kappa corrects agreement for chance: 1 is perfect, 0 is what chance alone gives, below 0 is worse than chance.
            A pair whose reads all fall in one class has no kappa (n/a).
          </p>
        </>
      )}
    </section>
  );
}

function KappaLegend() {
  return (
    <p class="kappa-legend muted" data-testid="kappa-legend">
      Landis & Koch:{" "}
      {[...KAPPA_BANDS].reverse().map((b, i, all) => (
        <span key={b.name} style={{ background: b.colour, padding: "0 .3rem", marginRight: ".2rem", color: "#1b1f24" }}>
          {b.name} {b.min === -Infinity ? "< 0" : i === all.length - 1 ? `≥ ${b.min.toFixed(2)}` : `${b.min.toFixed(2)}–${(all[i + 1].min - 0.01).toFixed(2)}`}
        </span>
      ))}
    </p>
  );
}

// --- gold cells ------------------------------------------------------------------------------

const pct = (v: number | null | undefined) => (v === null || v === undefined ? "n/a" : `${(100 * v).toFixed(1)} %`);

/** A missing gold API (404 from the catch-all) means a server without gold cells. */
async function orMissing<T>(load: Promise<T>): Promise<T | "missing"> {
  try {
    return await load;
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return "missing";
    throw e;
  }
}

function TprCell({ v }: { v: GoldPerClass | undefined }) {
  if (!v || !v.n) return <td class="num zero">–</td>;
  const low = isLow(v.tpr);
  return (
    <td class={`num${low ? " worse" : ""}`} title={`${v.correct} of ${v.n} gold cells right`}>
      {pct(v.tpr)}
      {low ? " ▼" : ""}
      <br />
      <span class="muted">n = {v.n}</span>
    </td>
  );
}

function PerformanceTable({
  caption,
  who,
  rows,
  codes,
  testid,
}: {
  caption: string;
  who: string;
  rows: { key: string; name: string; tag?: string; n: number; correct: number; accuracy: number | null; balanced?: number | null; per_class: Record<string, GoldPerClass> }[];
  codes: string[];
  testid: string;
}) {
  const hasBalanced = rows.some((r) => r.balanced !== undefined);
  return (
    <div class="matrix-wrap">
      <table class="data compact gold-perf" data-testid={testid}>
        <caption>{caption}</caption>
        <thead>
          <tr>
            <th scope="col">{who}</th>
            <th scope="col" class="num">n</th>
            <th scope="col" class="num">Accuracy</th>
            {hasBalanced && (
              <th scope="col" class="num">
                Balanced
              </th>
            )}
            {codes.map((c) => (
              <th scope="col" class="num" key={c} title={`TPR on gold ${c} cells`}>
                {c}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr key={r.key} data-row={r.name}>
              <th scope="row">
                {r.name}
                {r.tag ? <span class="status status-active"> {r.tag}</span> : null}
              </th>
              <td class="num">{r.n}</td>
              <td class={`num${isLow(r.accuracy) ? " worse" : ""}`} title={`${r.correct} of ${r.n} right`}>
                {pct(r.accuracy)}
                {isLow(r.accuracy) ? " ▼" : ""}
              </td>
              {hasBalanced && (
                <td class={`num${isLow(r.balanced) ? " worse" : ""}`}>
                  {pct(r.balanced)}
                  {isLow(r.balanced) ? " ▼" : ""}
                </td>
              )}
              {codes.map((c) => (
                <TprCell key={c} v={r.per_class[c]} />
              ))}
            </tr>
          ))}
          {!rows.length && (
            <tr>
              <td colSpan={3 + codes.length}>Nobody has been measured on gold cells yet.</td>
            </tr>
          )}
        </tbody>
      </table>
    </div>
  );
}

function readerRows(readers: GoldReader[]) {
  return readers.map((r) => ({ key: r.user, name: r.user, n: r.n, correct: r.correct, accuracy: r.accuracy, per_class: r.per_class }));
}

function modelRows(models: GoldModel[]) {
  return models.map((m) => ({
    key: String(m.model_version),
    name: m.name,
    tag: m.active ? "active" : undefined,
    n: m.n,
    correct: m.correct,
    accuracy: m.accuracy,
    balanced: m.balanced_accuracy,
    per_class: m.per_class,
  }));
}

/** The readers' and the models' table; `testid` prefixes their test ids ("gold" overall). */
export function GoldPerformanceTables({ perf, boot, scope, testid }: { perf: GoldGroup; boot: Boot; scope: string; testid: string }) {
  const codes = goldClasses([...perf.readers, ...perf.models], boot.taxonomy);
  return (
    <>
      <PerformanceTable caption={`Readers on gold cells${scope}: accuracy and TPR per class`} who="Reader" rows={readerRows(perf.readers)} codes={codes} testid={`${testid}-readers`} />
      <PerformanceTable caption={`Model versions on gold cells${scope}`} who="Model version" rows={modelRows(perf.models)} codes={codes} testid={`${testid}-models`} />
    </>
  );
}

export function GoldPanel({ boot, version, onChange }: { boot: Boot; version: number; onChange: () => void }) {
  const [gold] = useLoad(() => orMissing(api.get("/api/gold/")), [version], "loading the gold cells");
  const [perf] = useLoad(() => orMissing(api.get("/api/gold/performance/")), [version], "loading the performance on gold cells");
  const names = new Map(boot.taxonomy.map((c) => [c.code, c.name]));

  const retire = async (g: GoldCell) => {
    const ok = await confirmAction(
      `Retire gold cell ${g.cell}?`,
      <p>
        Cell {g.cell} stops being a gold cell ({g.diff14}); readers and models are no longer measured on it. Its labels
        stay as they are.
      </p>,
      "Retire",
      true,
    );
    if (!ok) return;
    try {
      await api.delete("/api/gold/{cell_id}/", { path: { cell_id: g.cell } });
      showInfo(`Cell ${g.cell} is no longer a gold cell.`);
      onChange();
    } catch (e) {
      showError(e, `retiring gold cell ${g.cell}`);
    }
  };

  if (gold === "missing" || perf === "missing") {
    return (
      <section aria-labelledby="gold-title" data-testid="gold">
        <h2 id="gold-title">Gold cells</h2>
        <p class="muted" data-testid="gold-missing">
          This server has no gold-cell API (/api/gold/); update it to measure readers and models on gold cells.
        </p>
      </section>
    );
  }
  return (
    <section class="gold" aria-labelledby="gold-title" data-testid="gold">
      <h2 id="gold-title">Gold cells</h2>
      {perf && (
        <p class="headline" data-testid="gold-summary">
          {perf.gold_cells} gold cells · gold rate {pct(perf.gold_rate)} (the share of the cells a reader takes from the
          queue that are gold cells, shown like any other)
          <span class="muted"> · values below {Math.round(100 * 0.9)} % are marked ▼</span>
        </p>
      )}
      {perf && <GoldPerformanceTables perf={perf} boot={boot} scope="" testid="gold" />}
      {perf &&
        (
          [
            ["scanner", perf.by_scanner],
            ["stain", perf.by_stain],
          ] as const
        ).flatMap(([what, groups]) =>
          Object.entries(groups ?? {}).map(([name, group]) => (
            <details key={`${what}-${name}`} class="gold-group" data-group={`${what}:${name}`}>
              <summary>
                By {what}: {name} <span class="muted">({group.gold_cells} gold cells)</span>
              </summary>
              <GoldPerformanceTables perf={group} boot={boot} scope={` (${what} ${name})`} testid={`gold-${what}-${name}`} />
            </details>
          )),
        )}
      <h3>Mark a cell as gold</h3>
      <GoldMarkForm boot={boot} onMarked={onChange} />
      <h3>The gold cells</h3>
      {gold && !gold.length && <p data-testid="gold-empty">No gold cell yet. Mark one above or from a case's review screen.</p>}
      {gold && gold.length > 0 && (
        <ul class="gold-list" data-testid="gold-list" style={{ display: "flex", flexWrap: "wrap", gap: ".5rem", listStyle: "none", padding: 0 }}>
          {gold.map((g) => (
            <li key={g.cell} class="thumb" data-cell-id={g.cell} style={{ width: "10rem" }}>
              <img src={g.thumbnail_url} alt={`Gold cell ${g.cell}`} loading="lazy" width={96} height={96} />
              <span class="badge">
                <strong>
                  <span class="code">{g.diff14}</span> {names.get(g.diff14) ?? ""}
                </strong>
                <br />
                cell {g.cell} · case <a href={`#/cases/${g.case_id}`}>{g.case}</a>
                <br />
                {g.current_label === g.diff14 ? (
                  <span class="muted">label agrees</span>
                ) : (
                  <span style={{ color: "var(--bad)", fontWeight: 600 }}>label {g.current_label ?? "none"} ≠ gold</span>
                )}
                <br />
                {g.marked_by ?? "?"}, {new Date(g.marked_at).toLocaleDateString()}
                {g.note ? (
                  <>
                    <br />
                    <em>{g.note}</em>
                  </>
                ) : null}
              </span>
              <button type="button" class="link" onClick={() => void retire(g)} aria-label={`Retire gold cell ${g.cell}`}>
                Retire…
              </button>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

/** Mark a cell as gold with its reference class. Used here (by cell id) and in a case's
 * review screen for the selected cell (the class defaults to its current one). */
export function GoldMarkForm({
  boot,
  onMarked,
  cellId,
  defaultCode,
}: {
  boot: Boot;
  onMarked?: () => void;
  cellId?: number;
  defaultCode?: string | null;
}) {
  const [cell, setCell] = useState(cellId ? String(cellId) : "");
  const [code, setCode] = useState(defaultCode ?? "");
  const [note, setNote] = useState("");
  const [saving, setSaving] = useState(false);
  const target = cellId ?? Number(cell);
  const submit = async (e: Event) => {
    e.preventDefault();
    if (!Number.isInteger(target) || target <= 0) {
      showError("Give the cell's id (a whole number, shown on the case review screen).");
      return;
    }
    if (!code) {
      showError("Choose the reference class of the gold cell.");
      return;
    }
    setSaving(true);
    try {
      await api.post("/api/gold/", { body: { cell: target, diff14: code as Diff14Code, note } });
      showInfo(`Cell ${target} is now a gold cell (${code}).`);
      setNote("");
      if (!cellId) setCell("");
      onMarked?.();
    } catch (err) {
      showError(err, `marking cell ${target} as gold`);
    } finally {
      setSaving(false);
    }
  };
  return (
    <form class="gold-mark filters" onSubmit={submit} data-testid="gold-mark" aria-label={cellId ? `Mark cell ${cellId} as gold` : "Mark a cell as gold"}>
      {cellId ? (
        <strong>Cell {cellId}</strong>
      ) : (
        <label>
          Cell id{" "}
          <input type="number" min={1} value={cell} onInput={(e) => setCell(e.currentTarget.value)} data-testid="gold-cell" style={{ width: "7rem" }} />
        </label>
      )}
      <label>
        Reference class{" "}
        <select value={code} onChange={(e) => setCode(e.currentTarget.value)} data-testid="gold-code">
          <option value="">choose…</option>
          {boot.taxonomy.map((c) => (
            <option key={c.code} value={c.code}>
              {c.code} {c.name}
            </option>
          ))}
        </select>
      </label>
      <label>
        Note{" "}
        <input type="text" value={note} onInput={(e) => setNote(e.currentTarget.value)} placeholder="optional" data-testid="gold-note" />
      </label>
      <button type="submit" class="primary" disabled={saving}>
        Mark as gold
      </button>
    </form>
  );
}
