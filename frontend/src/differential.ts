// A case's differential computed in the browser, so the table follows each
// reclassification at once; the server's answer (GET /api/cases/{id}/) replaces it as
// soon as it arrives. The rules are annotation/selectors/cases.py's; the codes they
// single out (NRBC, artifacts, left shift) come from the server in the boot JSON.
import type { CellClass, Differential, DifferentialClass, DifferentialRules, Flag } from "./types";

export interface CellClassification {
  /** the current label's code (a person's or an imported one) */
  label: string | null;
  /** the active model's top class */
  predicted: string | null;
  conflict?: boolean;
  /** an open review item on the cell */
  open?: boolean;
}

/** Percent with one decimal, null when there is nothing to divide by. Exact halves
 * round to even, as Python's round() does on the server. */
export function percent(n: number, of: number): number | null {
  if (!of) return null;
  const scaled = 1000 * n;
  let tenths = Math.floor(scaled / of);
  const twiceRest = 2 * (scaled - tenths * of);
  if (twiceRest > of || (twiceRest === of && tenths % 2 === 1)) tenths += 1;
  return tenths / 10;
}

/** The class a cell counts under: its label, else the model's class, else null. */
export function effectiveCode(cell: CellClassification): string | null {
  return cell.label ?? cell.predicted ?? null;
}

export function computeDifferential(
  cells: CellClassification[],
  classes: CellClass[],
  rules: DifferentialRules,
): Differential {
  const labelled = new Map<string, number>();
  const byModel = new Map<string, number>();
  const add = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  let unclassified = 0;
  let conflicts = 0;
  let open = 0;
  for (const cell of cells) {
    if (cell.label) add(labelled, cell.label);
    else if (cell.predicted) add(byModel, cell.predicted);
    else unclassified += 1;
    if (cell.conflict && !cell.label) conflicts += 1;
    if (cell.open) open += 1;
  }
  const total = (code: string) => (labelled.get(code) ?? 0) + (byModel.get(code) ?? 0);
  const excluded = new Set(rules.not_in_wbc_count);
  const wbc = classes.reduce((sum, c) => sum + (excluded.has(c.code) ? 0 : total(c.code)), 0);

  const rows: DifferentialClass[] = classes.map((cls) => {
    const l = labelled.get(cls.code) ?? 0;
    const p = byModel.get(cls.code) ?? 0;
    return {
      code: cls.code,
      name: cls.name,
      group: cls.group,
      count: l + p,
      labelled: l,
      predicted: p,
      source: l && p ? "mixed" : l ? "label" : p ? "model" : null,
      percent: excluded.has(cls.code) ? null : percent(l + p, wbc),
      per_100_wbc: cls.code === rules.nrbc_code ? percent(l + p, wbc) : null,
    };
  });
  const normal = classes
    .filter((c) => c.group === "normal" && !excluded.has(c.code))
    .reduce((sum, c) => sum + total(c.code), 0);
  const abnormal = wbc - normal;
  const nrbcPer100 = percent(total(rules.nrbc_code), wbc);
  const predictedOnly = [...byModel.values()].reduce((a, b) => a + b, 0);

  const flags: Flag[] = [];
  const blasts = total(rules.blast_code);
  if (blasts) flags.push({ code: "blasts_present", message: `Blasts present (${blasts} cells).` });
  if (nrbcPer100 !== null && nrbcPer100 > rules.nrbc_flag_per_100_wbc) {
    flags.push({
      code: "nrbc_over_5",
      message: `NRBC ${nrbcPer100} per 100 WBC (more than ${rules.nrbc_flag_per_100_wbc}).`,
    });
  }
  const shift = rules.left_shift_codes.filter((c) => total(c)).map((c) => `${c} ${total(c)}`);
  if (shift.length) {
    flags.push({
      code: "left_shift",
      message: `Immature granulocytes present (left shift): ${shift.join(", ")}.`,
    });
  }
  if (open || predictedOnly || unclassified) {
    flags.push({
      code: "unreviewed_cells",
      message: `${open} cells open in the review queue, ${predictedOnly} classified by the model only, ${unclassified} not classified yet.`,
    });
  }
  if (conflicts) {
    flags.push({
      code: "label_conflicts",
      message: `${conflicts} cells have conflicting imported labels that nobody has settled.`,
    });
  }
  return {
    cells_total: cells.length,
    labelled: [...labelled.values()].reduce((a, b) => a + b, 0),
    predicted_only: predictedOnly,
    unclassified,
    open_review_items: open,
    label_conflicts: conflicts,
    wbc_counted: wbc,
    classes: rows,
    totals: {
      normal: { count: normal, percent: percent(normal, wbc) },
      abnormal: { count: abnormal, percent: percent(abnormal, wbc) },
      nrbc: { count: total(rules.nrbc_code), per_100_wbc: nrbcPer100 },
      artifacts: { count: total(rules.artifact_code) },
    },
    flags,
  };
}

/** Why a case cannot be signed off yet, or null when it can. */
export function signOffBlocker(d: Differential, status: string): string | null {
  if (status === "signed_off") return "This case is already signed off.";
  const parts: string[] = [];
  if (d.open_review_items) parts.push(`${d.open_review_items} cells are still open in the review queue`);
  if (d.label_conflicts) parts.push(`${d.label_conflicts} cells have conflicting labels`);
  if (d.cells_total === 0) parts.push("the case has no cells");
  return parts.length ? `Cannot sign off yet: ${parts.join("; ")}.` : null;
}

/** Cells grouped for the gallery: taxonomy order, then unclassified. */
export function groupByClass<T>(
  cells: T[],
  codeOf: (cell: T) => string | null,
  classes: CellClass[],
): { code: string | null; cells: T[] }[] {
  const groups = new Map<string | null, T[]>();
  for (const cls of classes) groups.set(cls.code, []);
  groups.set(null, []);
  for (const cell of cells) {
    const code = codeOf(cell);
    const bucket = groups.get(code) ?? groups.get(null)!;
    bucket.push(cell);
  }
  return [...groups.entries()].filter(([, c]) => c.length).map(([code, c]) => ({ code, cells: c }));
}
