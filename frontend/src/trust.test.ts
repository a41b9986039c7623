import { describe, expect, it } from "vitest";
import { realTaxonomy } from "./testing";
import { classKappaRows, formatKappa, goldClasses, isLow, kappaBand, nextItem, pairMatrix, readTally } from "./trust";
import type { AdjudicationItem, Diff14Code, GoldPerClass, Label } from "./types";

const taxonomy = realTaxonomy().classes;

describe("kappa bands (Landis & Koch)", () => {
  it("names every band at its edges", () => {
    const cases: [number, string][] = [
      [-0.3, "poor"],
      [-0.001, "slight"], // shown as 0.00
      [0, "slight"],
      [0.2, "slight"],
      [0.21, "fair"],
      [0.4, "fair"],
      [0.41, "moderate"],
      [0.5, "moderate"],
      [0.6, "moderate"],
      [0.605, "substantial"], // shown as 0.61
      [0.8, "substantial"],
      [0.81, "almost perfect"],
      [1, "almost perfect"],
    ];
    for (const [k, name] of cases) expect([k, kappaBand(k).name]).toEqual([k, name]);
  });

  it("says undefined, never a band, when the API has no kappa", () => {
    expect(kappaBand(null).name).toBe("undefined");
    expect(kappaBand(undefined).name).toBe("undefined");
    expect(formatKappa(null)).toBe("n/a");
    expect(formatKappa(0.48936)).toBe("0.49");
  });
});

describe("pair matrix", () => {
  it("is symmetric over the sorted readers, empty where two never read the same cell", () => {
    const m = pairMatrix([
      { a: "bob", b: "cy", n_items: 4, kappa: 0.5 },
      { a: "ann", b: "bob", n_items: 6, kappa: null },
    ]);
    expect(m.readers).toEqual(["ann", "bob", "cy"]);
    expect(m.cells[0][1]).toEqual({ kappa: null, n: 6 });
    expect(m.cells[1][0]).toEqual({ kappa: null, n: 6 });
    expect(m.cells[1][2]).toEqual({ kappa: 0.5, n: 4 });
    expect(m.cells[2][1]).toEqual({ kappa: 0.5, n: 4 });
    expect(m.cells[0][2]).toBeNull();
    expect(m.cells[1][1]).toBeNull();
  });
});

describe("per-class kappa rows", () => {
  it("keeps taxonomy order and leaves out classes without a kappa", () => {
    const perClass = Object.fromEntries(taxonomy.map((c) => [c.code, null])) as Record<string, number | null>;
    perClass.MO = 0.3;
    perClass.NE = 0.9;
    const rows = classKappaRows(perClass, taxonomy);
    expect(rows.map((r) => r.code)).toEqual(["NE", "MO"]);
    expect(rows[0].name).toMatch(/Neutrophil/);
  });
});

function read(code: string, annotator: string, id: number): Label {
  return { id, cell: 1, code: code as Diff14Code, source: "hematologist", annotator, created_at: "2025-01-01T00:00:00Z", supersedes: null };
}

function item(id: number, reads: Label[]): AdjudicationItem {
  return { id, cell: 100 + id, case: "C", case_id: 1, image_url: "", reasons: ["disagreement"], labels_required: reads.length, reads };
}

describe("adjudication", () => {
  it("tallies the reads by class, most votes first, with their authors", () => {
    const it3 = item(1, [read("MO", "b", 1), read("LY", "a", 2), read("MO", "c", 3)]);
    expect(readTally(it3)).toEqual([
      { code: "MO", authors: ["b", "c"] },
      { code: "LY", authors: ["a"] },
    ]);
  });

  it("keeps the cell on screen while it waits, else the first not passed over", () => {
    const items = [item(1, []), item(2, []), item(3, [])];
    expect(nextItem(items, 2, new Set())?.id).toBe(2);
    expect(nextItem(items, 9, new Set([1]))?.id).toBe(2); // 9 was decided elsewhere
    expect(nextItem(items, null, new Set([1, 2, 3]))?.id).toBe(1);
    expect(nextItem([], null, new Set())).toBeNull();
  });
});

describe("gold performance", () => {
  it("marks values below 90 % as low, never a missing one", () => {
    expect(isLow(0.89)).toBe(true);
    expect(isLow(0.9)).toBe(false);
    expect(isLow(null)).toBe(false);
  });

  it("lists the classes that have gold cells, in taxonomy order", () => {
    const rows: { per_class: Record<string, GoldPerClass> }[] = [
      { per_class: { LY: { n: 2, correct: 1, tpr: 0.5 }, BL: { n: 0, correct: 0, tpr: null } } },
      { per_class: { NE: { n: 3, correct: 3, tpr: 1 } } },
    ];
    expect(goldClasses(rows, taxonomy)).toEqual(["NE", "LY"]);
  });
});
