import { describe, expect, it } from "vitest";
import { errorFromBody, describeError } from "./api";
import { normaliseLease, percentiles, topClasses } from "./labelling";
import { boundary, outlineOverlay } from "./outline";
import { fakeItem, realTaxonomy } from "./testing";
import type { CellDetail } from "./types";

const codes = realTaxonomy().classes.map((c) => c.code);

describe("lease answers", () => {
  it("accepts 204, one item, or a batch", () => {
    const a = fakeItem();
    const b = fakeItem();
    expect(normaliseLease(undefined)).toEqual([]);
    expect(normaliseLease(a)).toEqual([a]);
    expect(normaliseLease({ items: [a, b] })).toEqual([a, b]);
    expect(normaliseLease({ items: [] })).toEqual([]);
  });
});

describe("top classes", () => {
  it("ranks the suggestion's probabilities, read in taxonomy order when a list", () => {
    const item = fakeItem("LY", 0.5);
    const probs = codes.map(() => 0);
    probs[codes.indexOf("LY")] = 0.5;
    probs[codes.indexOf("LR")] = 0.3;
    probs[codes.indexOf("MO")] = 0.15;
    probs[codes.indexOf("NE")] = 0.05;
    item.suggestion!.probabilities = probs;
    expect(topClasses(item, null, codes)).toEqual([
      { code: "LY", p: 0.5 },
      { code: "LR", p: 0.3 },
      { code: "MO", p: 0.15 },
    ]);
  });

  it("prefers the queuing version's prediction from the cell's detail", () => {
    const item = fakeItem("LY", 0.5);
    const detail = {
      predictions: [
        { model_version: 99, probabilities: { NE: 0.9 } },
        { model_version: 1, probabilities: { BA: 0.7, EO: 0.2, NE: 0.1 } },
      ],
    } as unknown as CellDetail;
    expect(topClasses(item, detail, codes).map((r) => r.code)).toEqual(["BA", "EO", "NE"]);
  });

  it("falls back to the top class alone", () => {
    const item = fakeItem("MO", 0.42);
    expect(topClasses(item, null, codes)).toEqual([{ code: "MO", p: 0.42 }]);
  });
});

describe("errors", () => {
  it("shows the API's message, or a sentence about the status", () => {
    const e = errorFromBody(409, { error: { code: "lease_lost", message: "Take a new cell.", fields: {} } });
    expect(describeError(e)).toBe("Take a new cell.");
    expect(e.code).toBe("lease_lost");
    expect(describeError(errorFromBody(502, null))).toMatch(/not reachable/);
    expect(describeError(errorFromBody(418, null, "I'm a teapot"))).toBe("The server answered 418 I'm a teapot.");
    const fields = errorFromBody(400, { error: { code: "invalid", message: "Bad.", fields: { code: "not a code" } } });
    expect(describeError(fields)).toBe("Bad. (code: not a code)");
  });
});

describe("percentiles", () => {
  it("uses the nearest rank", () => {
    const values = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentiles(values)).toEqual({ p50: 50, p95: 95, n: 100 });
    expect(percentiles([5]).p95).toBe(5);
  });
});

describe("segmentation outlines", () => {
  it("marks the boundary of the cell and of the nucleus", () => {
    // 7x7: cytoplasm square 1..5, nucleus 3x3 at 2..4
    const w = 7;
    const gray = new Array(49).fill(0);
    for (let y = 1; y <= 5; y++) for (let x = 1; x <= 5; x++) gray[y * w + x] = 128;
    for (let y = 2; y <= 4; y++) for (let x = 2; x <= 4; x++) gray[y * w + x] = 255;
    const wbc = boundary(gray, w, 7, (v) => v >= 64);
    expect(wbc[1 * w + 1]).toBe(1);
    expect(wbc[3 * w + 3]).toBe(0); // interior
    expect(wbc[0]).toBe(0); // background
    const nuc = boundary(gray, w, 7, (v) => v >= 192);
    expect(nuc[2 * w + 2]).toBe(1);
    expect(nuc[3 * w + 3]).toBe(0);
    const rgba = new Array(49 * 4).fill(0);
    gray.forEach((v, i) => (rgba[4 * i] = rgba[4 * i + 1] = rgba[4 * i + 2] = v));
    const overlay = outlineOverlay(rgba, w, 7);
    expect(overlay[4 * (1 * w + 1) + 3]).toBe(255);
    expect(overlay[4 * (2 * w + 2) + 1]).toBe(229); // nucleus colour wins
  });
});
