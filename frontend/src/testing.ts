// Test helpers: the real taxonomy and differential rules, read from the Python sources
// (the one source of truth) rather than copied into the tests.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { apiUrl } from "./api";
import type { CellClass, DifferentialRules, ReviewItem } from "./types";

const repo = (p: string) => fileURLToPath(new URL(`../../${p}`, import.meta.url));

export function realTaxonomy(): { classes: CellClass[]; reserved: string[] } {
  const text = readFileSync(repo("mlworker/taxonomy.py"), "utf8");
  const classes = [...text.matchAll(/CellClass\("(\w+)", "([^"]+)", "(normal|abnormal)", "(.)"\)/g)].map(
    (m) => ({ code: m[1], name: m[2], group: m[3] as CellClass["group"], key: m[4] }),
  );
  const reservedLine = text.match(/RESERVED_KEYS[^=]*=\s*frozenset\(\{([^}]*)\}\)/);
  const reserved = reservedLine ? [...reservedLine[1].matchAll(/"([^"]+)"/g)].map((m) => m[1]) : [];
  return { classes, reserved };
}

export function realRules(): DifferentialRules {
  const text = readFileSync(repo("annotation/selectors/cases.py"), "utf8");
  const codes = (name: string) => {
    const m = text.match(new RegExp(`${name}\\s*=\\s*(?:frozenset\\(\\{|\\()([^)}]*)`));
    return m ? [...m[1].matchAll(/"(\w+)"/g)].map((x) => x[1]) : [];
  };
  const nrbc = text.match(/NRBC_FLAG_PER_100_WBC\s*=\s*([\d.]+)/);
  return {
    not_in_wbc_count: codes("NOT_IN_WBC_COUNT"),
    left_shift_codes: codes("LEFT_SHIFT_CODES"),
    nrbc_flag_per_100_wbc: nrbc ? Number(nrbc[1]) : NaN,
    nrbc_code: "NR",
    blast_code: "BL",
    artifact_code: "AR",
  };
}

let nextId = 1;
export function fakeItem(topCode = "NE", confidence = 0.6): ReviewItem {
  const id = nextId++;
  return {
    id,
    status: "leased",
    reasons: ["low_confidence"],
    priority: 1,
    flagged: false,
    lease_expires_at: null,
    model_version: 1,
    suggestion: { top_code: topCode, confidence, margin: 0.1, probabilities: [] },
    cell: {
      id: 1000 + id,
      case: 1,
      case_accession: "C1",
      image_url: apiUrl("/api/cells/{cell_id}/image/", { cell_id: 1000 + id }),
      thumbnail_url: "",
      width: 360,
      height: 363,
      original_filename: "x.jpg",
      source_class_name: "",
      processing: "scored",
      has_label_conflict: false,
      label: null,
      prediction: null,
      queue: null,
      created_at: "2025-01-01T00:00:00Z",
    },
  };
}
