// Pure helpers of the trust screens (agreement, adjudication, gold cells): kappa in words,
// the pairwise kappa matrix, the adjudication tally and the gold performance tables.
import type { AdjudicationItem, AgreementPair, CellClass, GoldPerClass } from "./types";

/** Landis & Koch (1977) bands for a kappa. Lower bounds are inclusive except "poor"
 * (anything below 0). */
export const KAPPA_BANDS: { min: number; name: string; colour: string }[] = [
  { min: 0.81, name: "almost perfect", colour: "#b7e4c7" },
  { min: 0.61, name: "substantial", colour: "#d8f3dc" },
  { min: 0.41, name: "moderate", colour: "#fff3bf" },
  { min: 0.21, name: "fair", colour: "#ffe0b2" },
  { min: 0.0, name: "slight", colour: "#ffccbc" },
  { min: -Infinity, name: "poor", colour: "#f8b4b4" },
];

/** The band of a kappa; "undefined" when the API sends null (too few reads, or every
 * read in one class, so chance agreement is 1). Kappa is rounded to 2 decimals first, as
 * shown, so 0.605 reads "substantial" like its label 0.61. */
export function kappaBand(kappa: number | null | undefined): { name: string; colour: string } {
  if (kappa === null || kappa === undefined || Number.isNaN(kappa)) return { name: "undefined", colour: "#eef1f4" };
  const shown = Math.round(kappa * 100) / 100;
  const band = KAPPA_BANDS.find((b) => shown >= b.min)!;
  return { name: band.name, colour: band.colour };
}

export function formatKappa(kappa: number | null | undefined): string {
  if (kappa === null || kappa === undefined || Number.isNaN(kappa)) return "n/a";
  return kappa.toFixed(2);
}

export interface PairCell {
  kappa: number | null;
  n: number;
}

/** The symmetric reader x reader matrix of Cohen's kappa; null off the pairs that have
 * read a cell in common, and on the diagonal. */
export function pairMatrix(pairs: AgreementPair[]): { readers: string[]; cells: (PairCell | null)[][] } {
  const readers = [...new Set(pairs.flatMap((p) => [p.a, p.b]))].sort();
  const index = new Map(readers.map((r, i) => [r, i]));
  const cells: (PairCell | null)[][] = readers.map(() => readers.map(() => null));
  for (const p of pairs) {
    const i = index.get(p.a)!;
    const j = index.get(p.b)!;
    cells[i][j] = cells[j][i] = { kappa: p.kappa, n: p.n_items };
  }
  return { readers, cells };
}

export interface ClassKappaRow {
  code: string;
  name: string;
  kappa: number | null;
}

/** Per-class Fleiss' kappa in taxonomy order, for the classes that have one (the API
 * sends null for a class nobody chose, where kappa is undefined). */
export function classKappaRows(perClass: Record<string, number | null>, taxonomy: CellClass[]): ClassKappaRow[] {
  return taxonomy
    .filter((c) => perClass[c.code] !== null && perClass[c.code] !== undefined)
    .map((c) => ({ code: c.code, name: c.name, kappa: perClass[c.code] }));
}

// --- adjudication ---------------------------------------------------------------------------

export interface Tally {
  code: string;
  authors: string[];
}

/** The classes the reads gave, most votes first, each with who gave it. */
export function readTally(item: AdjudicationItem): Tally[] {
  const by = new Map<string, string[]>();
  for (const r of item.reads) {
    const list = by.get(r.code) ?? [];
    list.push(r.annotator ?? "unknown");
    by.set(r.code, list);
  }
  return [...by.entries()]
    .map(([code, authors]) => ({ code, authors }))
    .sort((a, b) => b.authors.length - a.authors.length || a.code.localeCompare(b.code));
}

/** The item to show: the one on screen while it is still waiting, else the first one
 * not passed over in this session, else the first. */
export function nextItem(items: AdjudicationItem[], currentId: number | null, passed: Set<number>): AdjudicationItem | null {
  const current = items.find((i) => i.id === currentId);
  if (current) return current;
  return items.find((i) => !passed.has(i.id)) ?? items[0] ?? null;
}

// --- gold cells -----------------------------------------------------------------------------

/** Below this a reader's or a model's accuracy or TPR on gold is highlighted: the
 * weak-class rule of the design (validation TPR below 90 %). */
export const LOW_ON_GOLD = 0.9;

export const isLow = (v: number | null | undefined) => v !== null && v !== undefined && v < LOW_ON_GOLD;

/** Classes with at least one gold cell for anyone in the table, in taxonomy order. */
export function goldClasses(rows: { per_class: Record<string, GoldPerClass> }[], taxonomy: CellClass[]): string[] {
  const present = new Set(rows.flatMap((r) => Object.entries(r.per_class).filter(([, v]) => v.n > 0).map(([k]) => k)));
  return taxonomy.map((c) => c.code).filter((c) => present.has(c));
}
