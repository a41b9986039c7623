// A case's differential computed in the browser, so the table follows each
// reclassification at once; the server's answer (GET /api/cases/{id}/) replaces it as
// soon as it arrives. The rules are annotation/selectors/cases.py's: each cell counts
// under one provenance (reviewed in the portal, imported, model only), the headline counts
// and percentages are over reviewed cells, and the flags are computed on reviewed cells
// only. The codes they single out (NRBC, artifacts, left shift) come from the server in
// the boot JSON; what only the server knows (the routing threshold, the active model, the
// case's import source, reads awaiting adjudication) comes from its last answer.
import type { CellClass, Differential, DifferentialClass, DifferentialRules, Flag } from "./types";

export interface CellClassification {
  /** the current label's code (a person's or an imported one) */
  label: string | null;
  /** where the label came from: "imported", or a person's ("hematologist", "adjudicated") */
  labelSource?: string | null;
  /** the active model's top class */
  predicted: string | null;
  /** the active model's confidence in it (0-1) */
  confidence?: number | null;
  conflict?: boolean;
  /** an open review item on the cell */
  open?: boolean;
}

/** What the browser cannot compute itself, from the server's last differential. */
export interface ServerContext {
  confidence_threshold: number;
  model_version: string | null;
  imported_source: string | null;
  /** cells whose independent reads wait for adjudication */
  adjudication?: number;
}

const DEFAULT_CONTEXT: ServerContext = { confidence_threshold: 0, model_version: null, imported_source: null };

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

/** The class a cell is shown under in the gallery: its label, else the model's class. */
export function effectiveCode(cell: CellClassification): string | null {
  return cell.label ?? cell.predicted ?? null;
}

/** "portal", "imported" or "model": where a cell's count comes from (null: nowhere). */
export function provenance(cell: CellClassification): "portal" | "imported" | "model" | null {
  if (cell.label) return cell.labelSource === "imported" ? "imported" : "portal";
  return cell.predicted ? "model" : null;
}

export function computeDifferential(
  cells: CellClassification[],
  classes: CellClass[],
  rules: DifferentialRules,
  context: ServerContext = DEFAULT_CONTEXT,
): Differential {
  const portal = new Map<string, number>();
  const imported = new Map<string, number>();
  const byModel = new Map<string, number>();
  const add = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
  const get = (m: Map<string, number>, k: string) => m.get(k) ?? 0;
  const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
  let unclassified = 0;
  let unidentified = 0;
  let conflicts = 0;
  let open = 0;
  let openLabelled = 0;
  for (const cell of cells) {
    const from = provenance(cell);
    if (from === "portal") add(portal, cell.label!);
    else if (from === "imported") add(imported, cell.label!);
    else if (from === "model") add(byModel, cell.predicted!);
    else unclassified += 1;
    const unsure = cell.predicted === null || (cell.confidence ?? 1) < context.confidence_threshold;
    if (!cell.label && (cell.open || unsure)) unidentified += 1;
    if (cell.conflict && !cell.label) conflicts += 1;
    if (cell.open) {
      open += 1;
      if (cell.label) openLabelled += 1;
    }
  }
  const reviewed = (code: string) => get(portal, code) + get(imported, code);
  const excluded = new Set(rules.not_in_wbc_count);
  const wbc = classes.reduce((n, c) => n + (excluded.has(c.code) ? 0 : reviewed(c.code)), 0);
  const modelWbc = classes.reduce((n, c) => n + (excluded.has(c.code) ? 0 : get(byModel, c.code)), 0);

  const rows: DifferentialClass[] = classes.map((cls) => {
    const n = reviewed(cls.code);
    const inWbc = !excluded.has(cls.code);
    return {
      code: cls.code,
      name: cls.name,
      group: cls.group,
      count: n,
      reviewed_in_portal: get(portal, cls.code),
      imported: get(imported, cls.code),
      model_only: get(byModel, cls.code),
      percent: inWbc ? percent(n, wbc) : null,
      model_only_percent: inWbc ? percent(get(byModel, cls.code), modelWbc) : null,
      per_100_wbc: cls.code === rules.nrbc_code ? percent(n, wbc) : null,
    };
  });
  const normal = classes
    .filter((c) => c.group === "normal" && !excluded.has(c.code))
    .reduce((n, c) => n + reviewed(c.code), 0);
  const abnormal = wbc - normal;
  const nrbcPer100 = percent(reviewed(rules.nrbc_code), wbc);
  const modelOnly = sum(byModel);

  const flags: Flag[] = [];
  const blasts = reviewed(rules.blast_code);
  if (blasts) flags.push({ code: "blasts_present", message: `Blasts present (${blasts} cells).` });
  if (nrbcPer100 !== null && nrbcPer100 > rules.nrbc_flag_per_100_wbc) {
    flags.push({
      code: "nrbc_over_5",
      message: `NRBC ${nrbcPer100} per 100 WBC (more than ${rules.nrbc_flag_per_100_wbc}).`,
    });
  }
  const shift = rules.left_shift_codes.filter((c) => reviewed(c)).map((c) => `${c} ${reviewed(c)}`);
  if (shift.length) {
    flags.push({
      code: "left_shift",
      message: `Immature granulocytes present (left shift): ${shift.join(", ")}.`,
    });
  }
  if (open || modelOnly || unclassified) {
    flags.push({
      code: "unreviewed_cells",
      message: `${open} ${open === 1 ? "cell" : "cells"} open in the review queue, ${modelOnly} classified by the model only, ${unclassified} not classified yet; they are not in the counts.`,
    });
  }
  if (conflicts) {
    flags.push({
      code: "label_conflicts",
      message: `${conflicts} ${conflicts === 1 ? "cell has" : "cells have"} conflicting imported labels that nobody has settled.`,
    });
  }
  return {
    cells_total: cells.length,
    reviewed: sum(portal) + sum(imported),
    reviewed_in_portal: sum(portal),
    imported: sum(imported),
    imported_source: context.imported_source,
    model_only: modelOnly,
    unclassified,
    unidentified,
    open_review_items: open,
    open_labelled_cells: openLabelled,
    open_disagreements: conflicts + (context.adjudication ?? 0),
    label_conflicts: conflicts,
    wbc_counted: wbc,
    model_only_wbc: modelWbc,
    model_version: context.model_version,
    confidence_threshold: context.confidence_threshold,
    classes: rows,
    totals: {
      normal: { count: normal, percent: percent(normal, wbc) },
      abnormal: { count: abnormal, percent: percent(abnormal, wbc) },
      nrbc: { count: reviewed(rules.nrbc_code), per_100_wbc: nrbcPer100 },
      artifacts: { count: reviewed(rules.artifact_code) },
    },
    flags,
  };
}

/** One line that says where the headline counts come from. */
export function provenanceLine(d: Differential): string {
  const source = d.imported_source ? ` from ${d.imported_source}` : "";
  return (
    `${d.wbc_counted} WBC reviewed (${d.reviewed_in_portal} cells in the portal, ${d.imported} imported${source})` +
    ` · ${d.model_only} by the model only, not counted · ${d.unidentified} unidentified`
  );
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
