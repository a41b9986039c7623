// Pure helpers of the labelling screen: the API's answers normalised, the model's top
// classes, the reasons a cell was queued in words.
import type { CellDetail, ReviewItem } from "./types";

/** The items of a lease answer: nothing (204), one item (a server without batch leases),
 * or {"items": [...]}. */
export function normaliseLease(body: unknown): ReviewItem[] {
  if (body === undefined || body === null || body === "") return [];
  if (Array.isArray(body)) return body as ReviewItem[];
  const items = (body as { items?: unknown }).items;
  if (Array.isArray(items)) return items as ReviewItem[];
  if (typeof (body as ReviewItem).id === "number") return [body as ReviewItem];
  return [];
}

export interface Ranked {
  code: string;
  p: number;
}

/** The model's top `n` classes for a queued cell, best first. Uses the prediction of the
 * version that queued it (from the cell's detail, with class codes) when known, else the
 * suggestion's probabilities; a bare list is read in taxonomy order. */
export function topClasses(item: ReviewItem, detail: CellDetail | null, codes: string[], n = 3): Ranked[] {
  let probs: Record<string, number> | null = null;
  const fromDetail = detail?.predictions.find((p) => p.model_version === item.model_version);
  if (fromDetail && fromDetail.probabilities && !Array.isArray(fromDetail.probabilities)) {
    probs = fromDetail.probabilities;
  } else if (item.suggestion) {
    const raw = item.suggestion.probabilities;
    if (Array.isArray(raw)) {
      probs = {};
      raw.forEach((p, i) => {
        if (i < codes.length) probs![codes[i]] = p;
      });
    } else if (raw) {
      probs = raw;
    }
  }
  if (!probs || !Object.keys(probs).length) {
    const s = item.suggestion ?? item.cell.prediction;
    return s ? [{ code: s.top_code, p: s.confidence }] : [];
  }
  return Object.entries(probs)
    .map(([code, p]) => ({ code, p }))
    .sort((a, b) => b.p - a.p || a.code.localeCompare(b.code))
    .slice(0, n);
}

export function reasonText(reason: string, names: Record<string, string>): string {
  return names[reason] ?? reason.replace(/_/g, " ");
}

export function formatPercent(p: number | null | undefined, digits = 1): string {
  if (p === null || p === undefined || Number.isNaN(p)) return "n/a";
  return `${(100 * p).toFixed(digits)} %`;
}

/** p50/p95 of a list of durations (nearest rank). */
export function percentiles(values: number[]): { p50: number; p95: number; n: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (q: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
  return { p50: sorted.length ? rank(0.5) : NaN, p95: sorted.length ? rank(0.95) : NaN, n: sorted.length };
}
