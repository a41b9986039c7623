import { describe, expect, it } from "vitest";
import { computeDifferential, groupByClass, percent, provenanceLine, type CellClassification } from "./differential";
import { realRules, realTaxonomy } from "./testing";

const { classes } = realTaxonomy();
const rules = realRules();

const cells = (spec: Record<string, number>, extra: Partial<CellClassification> = {}) =>
  Object.entries(spec).flatMap(([code, n]) =>
    Array.from({ length: n }, () => ({ label: code, predicted: null, ...extra })),
  );

describe("differential arithmetic", () => {
  it("reads the server's rules", () => {
    expect(rules.not_in_wbc_count.sort()).toEqual(["AR", "NR"]);
    expect(rules.left_shift_codes).toEqual(["PR", "MY", "ME"]);
    expect(rules.nrbc_flag_per_100_wbc).toBe(5);
  });

  it("gives counts and percentages of the reviewed WBC, NRBC per 100 WBC", () => {
    const d = computeDifferential(cells({ NE: 60, LY: 30, MO: 5, BL: 5, NR: 8, AR: 2 }), classes, rules);
    const row = (code: string) => d.classes.find((c) => c.code === code)!;
    expect(d.cells_total).toBe(110);
    expect(d.wbc_counted).toBe(100);
    expect(row("NE")).toMatchObject({ count: 60, percent: 60, reviewed_in_portal: 60, imported: 0, model_only: 0 });
    expect(row("NR")).toMatchObject({ count: 8, percent: null, per_100_wbc: 8 });
    expect(row("AR")).toMatchObject({ count: 2, percent: null, per_100_wbc: null });
    expect(row("EO")).toMatchObject({ count: 0, percent: 0 });
    expect(d.totals.normal).toEqual({ count: 95, percent: 95 });
    expect(d.totals.abnormal).toEqual({ count: 5, percent: 5 });
    expect(d.totals.nrbc).toEqual({ count: 8, per_100_wbc: 8 });
    expect(d.flags.map((f) => f.code)).toEqual(["blasts_present", "nrbc_over_5"]);
  });

  it("counts reviewed cells (portal and imported) apart from the model's guesses", () => {
    const context = { confidence_threshold: 0.8, model_version: "v1", imported_source: "cellavision" };
    const d = computeDifferential(
      [
        { label: "NE", labelSource: "hematologist", predicted: "LY", confidence: 0.9 },
        { label: "NE", labelSource: "imported", predicted: "NE", confidence: 0.9 },
        { label: null, predicted: "LY", confidence: 0.95 },
        { label: null, predicted: null },
        { label: null, predicted: "MY", confidence: 0.9, open: true },
        { label: null, predicted: "BL", confidence: 0.5 },
        { label: null, predicted: null, conflict: true },
      ],
      classes,
      rules,
      context,
    );
    const row = (code: string) => d.classes.find((c) => c.code === code)!;
    expect(row("NE")).toMatchObject({ count: 2, reviewed_in_portal: 1, imported: 1, model_only: 0, percent: 100 });
    expect(row("LY")).toMatchObject({ count: 0, model_only: 1, percent: 0, model_only_percent: 33.3 });
    expect(d.wbc_counted).toBe(2);
    expect(d.model_only_wbc).toBe(3);
    expect(d.unclassified).toBe(2);
    expect(d.model_only).toBe(3);
    // queued MY, BL below 0.8, and the two the model has not classified
    expect(d.unidentified).toBe(4);
    expect(d.open_review_items).toBe(1);
    expect(d.label_conflicts).toBe(1);
    // MY and BL are the model's guesses only: no left-shift or blast flag.
    expect(d.flags.map((f) => f.code)).toEqual(["unreviewed_cells", "label_conflicts"]);
    expect(provenanceLine(d)).toBe(
      "2 WBC reviewed (1 cells in the portal, 1 imported from cellavision) · 3 by the model only, not counted · 4 unidentified",
    );
  });

  it("flags left shift from reviewed immature granulocytes", () => {
    const d = computeDifferential(cells({ NE: 3, MY: 1 }), classes, rules);
    expect(d.flags[0].message).toBe("Immature granulocytes present (left shift): MY 1.");
  });

  it("updates as cells are reclassified", () => {
    const before = cells({ NE: 3, LY: 1 });
    const d1 = computeDifferential(before, classes, rules);
    expect(d1.classes.find((c) => c.code === "NE")!.percent).toBe(75);
    const after = before.map((c, i) => (i === 0 ? { ...c, label: "AR" } : c));
    const d2 = computeDifferential(after, classes, rules);
    expect(d2.wbc_counted).toBe(3);
    expect(d2.classes.find((c) => c.code === "NE")!.percent).toBe(66.7);
    expect(d2.classes.find((c) => c.code === "LY")!.percent).toBe(33.3);
    expect(d2.totals.artifacts.count).toBe(1);
  });

  it("rounds exact halves to even like the server, and has no percent of nothing", () => {
    expect(percent(1, 16)).toBe(6.2); // 6.25
    expect(percent(3, 80)).toBe(3.8); // 3.75
    expect(percent(2, 3)).toBe(66.7);
    expect(percent(0, 0)).toBeNull();
    const empty = computeDifferential([], classes, rules);
    expect(empty.totals.normal.percent).toBeNull();
    expect(empty.classes.every((c) => c.percent === null)).toBe(true);
  });

  it("groups the gallery in taxonomy order with the unclassified last", () => {
    const groups = groupByClass(["LY", null, "NE", "LY", "XX"], (c) => c, classes);
    expect(groups.map((g) => [g.code, g.cells.length])).toEqual([
      ["NE", 1],
      ["LY", 2],
      [null, 2],
    ]);
  });
});
