// Bars and matrices in plain HTML/SVG (no chart library): every value is also written as
// text, so nothing depends on colour or on seeing the bar.

import type { ModelVersionComparison } from "../types";

export interface Bar {
  key: string;
  label: string;
  value: number | null;
  title?: string;
}

/** Horizontal bars; `max` fixes the scale (1 for rates), else the largest value. */
export function Bars({ bars, max, format, caption, testid }: { bars: Bar[]; max?: number; format: (v: number | null) => string; caption: string; testid?: string }) {
  const top = max ?? Math.max(1, ...bars.map((b) => b.value ?? 0));
  return (
    <figure class="bars" data-testid={testid}>
      <figcaption>{caption}</figcaption>
      <table>
        <tbody>
          {bars.map((b) => (
            <tr key={b.key} title={b.title}>
              <th scope="row">{b.label}</th>
              <td class="bar-cell">
                <svg viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true" class="bar-svg">
                  <rect x="0" y="0" width="100" height="10" class="track" />
                  {b.value !== null && <rect x="0" y="0" width={Math.max(0, Math.min(100, (100 * b.value) / top))} height="10" class="fill" />}
                </svg>
              </td>
              <td class="num">{format(b.value)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </figure>
  );
}

/** Paired bars for two model versions per class, with the difference as text. */
type PairedRow = { code: string; label: string; a: number | null; b: number | null; n?: number | null; blocks?: boolean; judged?: boolean };

/** The paired guard's n and verdict for one class, when the comparison has them. */
export function guardRow(compare: ModelVersionComparison | null | undefined, code: string): Pick<PairedRow, "n" | "blocks" | "judged"> {
  const row = compare?.guard_b_over_a.per_class?.find((r) => r.code === code);
  const n = compare?.per_class_tpr?.[code]?.n ?? row?.n ?? null;
  return row ? { n, blocks: row.blocks, judged: row.judged } : { n };
}

export function PairedBars({ rows, nameA, nameB }: { rows: PairedRow[]; nameA: string; nameB: string }) {
  const pct = (v: number | null) => (v === null ? "n/a" : `${(100 * v).toFixed(1)} %`);
  return (
    <table class="paired" data-testid="tpr-compare">
      <caption>Per-class TPR (recall) on the evaluation set: A = {nameA} (upper bar), B = {nameB} (lower bar)</caption>
      <thead>
        <tr>
          <th scope="col">Class</th>
          <th scope="col">TPR</th>
          <th scope="col" class="num">A</th>
          <th scope="col" class="num">B</th>
          <th scope="col" class="num">n</th>
          <th scope="col" class="num">B − A</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r) => {
          const delta = r.a === null || r.b === null ? null : r.b - r.a;
          // With paired figures only a drop the guard judged (enough cells, unlikely noise) is flagged.
          const worse = r.blocks ?? (r.judged === false ? false : delta !== null && delta < -0.05);
          return (
            <tr key={r.code}>
              <th scope="row" title={r.label}>
                {r.code}
              </th>
              <td class="bar-cell">
                <svg viewBox="0 0 100 12" preserveAspectRatio="none" aria-hidden="true" class="bar-svg">
                  <rect x="0" y="0" width="100" height="12" class="track" />
                  {r.a !== null && <rect x="0" y="0.5" width={100 * r.a} height="5" class="fill-a" />}
                  {r.b !== null && <rect x="0" y="6.5" width={100 * r.b} height="5" class="fill-b" />}
                </svg>
              </td>
              <td class="num">{pct(r.a)}</td>
              <td class="num">{pct(r.b)}</td>
              <td class="num" data-testid={`n-${r.code}`} title={r.judged === false ? "too few cells to judge" : undefined}>
                {r.n ?? "–"}
                {r.judged === false ? " ·" : ""}
              </td>
              <td class={`num ${worse ? "worse" : ""}`}>
                {delta === null ? "n/a" : `${delta >= 0 ? "+" : "−"}${Math.abs(100 * delta).toFixed(1)}`}
                {worse ? " ▼" : ""}
              </td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

/** Confusion matrix: rows true class, columns predicted; shade by row share, count as text. */
export function ConfusionMatrix({ matrix, codes, caption }: { matrix: number[][]; codes: string[]; caption: string }) {
  return (
    <div class="matrix-wrap">
      <table class="matrix" data-testid="confusion">
        <caption>{caption}</caption>
        <thead>
          <tr>
            <th scope="col">
              <span class="visually-hidden">rows: true class, columns: predicted class</span>
              <span aria-hidden="true">true ↓ / pred →</span>
            </th>
            {codes.map((c) => (
              <th scope="col" key={c}>
                {c}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {matrix.map((row, i) => {
            const total = row.reduce((a, b) => a + b, 0);
            return (
              <tr key={codes[i] ?? i}>
                <th scope="row">{codes[i] ?? i}</th>
                {row.map((n, j) => {
                  const share = total ? n / total : 0;
                  return (
                    <td
                      key={j}
                      class={`${i === j ? "diag" : ""}${n ? "" : " zero"}`}
                      style={{ "--share": share.toFixed(3) } as Record<string, string>}
                      title={`true ${codes[i]}, predicted ${codes[j]}: ${n}${total ? ` (${(100 * share).toFixed(0)} % of ${codes[i]})` : ""}`}
                    >
                      {n}
                    </td>
                  );
                })}
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

export function Progress({ percent, label }: { percent: number | null; label: string }) {
  return (
    <div class="progress">
      <progress max={100} value={percent ?? undefined} aria-label={label} data-testid="progress" />
      <span class="num">{percent === null ? "…" : `${Math.round(percent)} %`}</span>
    </div>
  );
}

export interface LinePoint {
  key: string;
  label: string;
  value: number | null;
  note?: string;
}

/** A small line chart over ordered points (weeks); gaps where a value is null. `min` and
 * `max` fix the scale; grid lines at `ticks`. The values are also listed as text below. */
export function LineChart({
  points,
  min,
  max,
  ticks = [],
  format,
  caption,
  testid,
}: {
  points: LinePoint[];
  min: number;
  max: number;
  ticks?: number[];
  format: (v: number | null) => string;
  caption: string;
  testid?: string;
}) {
  const W = 320;
  const H = 120;
  const pad = { left: 30, right: 8, top: 8, bottom: 18 };
  const x = (i: number) => pad.left + (points.length <= 1 ? (W - pad.left - pad.right) / 2 : (i * (W - pad.left - pad.right)) / (points.length - 1));
  const y = (v: number) => pad.top + ((max - Math.max(min, Math.min(max, v))) * (H - pad.top - pad.bottom)) / (max - min || 1);
  const segments: string[] = [];
  let run: string[] = [];
  points.forEach((p, i) => {
    if (p.value === null) {
      if (run.length) segments.push(run.join(" "));
      run = [];
    } else run.push(`${x(i).toFixed(1)},${y(p.value).toFixed(1)}`);
  });
  if (run.length) segments.push(run.join(" "));
  return (
    <figure class="bars line-chart" data-testid={testid}>
      <figcaption>{caption}</figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={caption} style={{ width: "100%", maxWidth: "32rem", display: "block" }}>
        {ticks.map((t) => (
          <g key={t}>
            <line x1={pad.left} x2={W - pad.right} y1={y(t)} y2={y(t)} stroke="#d0d7de" stroke-width="0.6" />
            <text x={pad.left - 4} y={y(t) + 3} text-anchor="end" font-size="8" fill="#57606a">
              {format(t)}
            </text>
          </g>
        ))}
        {segments.map((s, i) => (
          <polyline key={i} points={s} fill="none" stroke="#5a3e99" stroke-width="1.6" />
        ))}
        {points.map((p, i) =>
          p.value === null ? null : (
            <circle key={p.key} cx={x(i)} cy={y(p.value)} r="2.6" fill="#5a3e99">
              <title>{`${p.label}: ${format(p.value)}${p.note ? ` (${p.note})` : ""}`}</title>
            </circle>
          ),
        )}
        {points.map((p, i) =>
          i === 0 || i === points.length - 1 || points.length <= 6 ? (
            <text key={`l-${p.key}`} x={x(i)} y={H - 4} text-anchor="middle" font-size="8" fill="#57606a">
              {p.label}
            </text>
          ) : null,
        )}
      </svg>
      <table class="data compact">
        <tbody>
          {points.map((p) => (
            <tr key={p.key}>
              <th scope="row">{p.label}</th>
              <td class="num">{format(p.value)}</td>
              <td class="muted">{p.note ?? ""}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </figure>
  );
}
