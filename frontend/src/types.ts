// Shapes of the server's data. What the REST API sends is generated from its OpenAPI
// schema (openapi.json -> src/api/schema.d.ts, `npm run gen:api`), and the aliases below
// name those components, so a change on the server shows up here as a type error.
//
// Hand-written here, because the schema cannot express them:
// - the page's boot JSON (annotation/views.py `ui_boot`), which is not an API response;
// - fields the schema types as `unknown` or as a dict without keys (JSON columns,
//   SerializerMethodFields without a type hint), narrowed to what the server puts in them.
// The websocket events' payloads are typed where they are received (./events.ts users):
// the schema describes HTTP only.
import type { components } from "./api/schema";

type Schemas = components["schemas"];

/** `T` with the fields of `R` typed as `R` types them (see the header). */
type Narrowed<T, R> = Omit<T, keyof R> & R;

// --- the boot JSON (not an API response) -------------------------------------------------

export type Group = "normal" | "abnormal";

export interface CellClass {
  code: string;
  name: string;
  group: Group;
  key: string;
}

export interface DifferentialRules {
  not_in_wbc_count: string[];
  left_shift_codes: string[];
  nrbc_flag_per_100_wbc: number;
  nrbc_code: string;
  blast_code: string;
  artifact_code: string;
}

export interface Boot {
  user: { username: string; roles: string[] };
  taxonomy: CellClass[];
  reserved_keys: string[];
  differential_rules: DifferentialRules;
  queue_reasons: Record<string, string>;
  /** cells leased and loaded ahead of the one on screen (WBC_LABEL_PREFETCH) */
  label_prefetch?: number;
  urls: { logout: string; login: string; api: string; events: string };
}

// --- cells, labels, predictions -----------------------------------------------------------

export type Diff14Code = Schemas["Diff14CodeEnum"];
export type Label = Schemas["Label"];
export type PredictionBrief = Schemas["PredictionBrief"];
export type Prediction = Schemas["Prediction"];
export type Segmentation = Schemas["Segmentation"];

/** The open review item of a cell; `reasons` is a JSON list of route reasons. */
export type ReviewItemBrief = Narrowed<Schemas["ReviewItemBrief"], { reasons: string[] }>;

export type Cell = Narrowed<Schemas["Cell"], { queue: ReviewItemBrief | null }>;

export type CellDetail = Cell &
  Narrowed<Omit<Schemas["CellDetail"], keyof Schemas["Cell"]>, { review_items: ReviewItemBrief[] }>;

/** The prediction of the version that queued a cell (a dict in the schema). */
export type Suggestion = {
  top_code: string;
  confidence: number;
  margin: number;
  probabilities: number[] | Record<string, number>;
};

/** A leased review item; the schema types its `suggestion` and `cell` as dicts. */
export type ReviewItem = Narrowed<Schemas["ReviewItem"], { reasons: string[]; suggestion: Suggestion | null; cell: Cell }>;

export type QueueCounts = Schemas["QueueCounts"];

/** One page of a paginated list (every Paginated*List component has this shape). */
export interface Page<T> {
  count: number;
  next: string | null;
  previous: string | null;
  results: T[];
}

// --- cases and the differential -----------------------------------------------------------

/** A case; only rows of the case list carry the counts (CaseListItem). */
export type Case = Schemas["Case"] & Partial<Pick<Schemas["CaseListItem"], "n_cells" | "n_labelled">>;
export type CaseListItem = Schemas["CaseListItem"];

export type DifferentialClass = Narrowed<Schemas["DifferentialClass"], { group: Group }>;
export type Flag = Schemas["Flag"];

/** The schema types `totals` as a dict; the server (annotation/selectors/cases.py) sends these. */
export type Differential = Narrowed<
  Schemas["Differential"],
  {
    classes: DifferentialClass[];
    totals: {
      normal: { count: number; percent: number | null };
      abnormal: { count: number; percent: number | null };
      nrbc: { count: number; per_100_wbc: number | null };
      artifacts: { count: number };
    };
  }
>;

export type CaseDetail = Case & { readonly differential: Differential };

// --- sign-off and the report (annotation/api/review.py) ----------------------------------

export type ReviewRules = Schemas["ReviewRules"];
export type SignoffState = Schemas["SignoffState"];
export type CaseReport = Schemas["Report"];
export type CellNote = Schemas["CellNote"];
export type Interpretation = Schemas["Interpretation"];

// --- model versions, training, routing ----------------------------------------------------

export type ModelVersion = Schemas["ModelVersion"];

/** The schema types the JSON columns `class_codes`, `metrics` and `per_class_tpr` as `unknown`. */
export type ModelVersionDetail = ModelVersion &
  Narrowed<
    Omit<Schemas["ModelVersionDetail"], keyof Schemas["ModelVersion"]>,
    {
      class_codes: string[];
      metrics: Record<string, unknown> & {
        balanced_accuracy?: number | null;
        normal_tpr?: number | null;
        abnormal_tpr?: number | null;
        confusion?: number[][];
        per_class?: Record<string, { n?: number; tpr?: number | null }>;
        evaluation_set?: { confusion?: number[][]; per_class?: Record<string, { tpr?: number | null }> };
      };
      per_class_tpr: Record<string, number | null>;
    }
  >;

/** `GET /api/model-versions/compare/`: the schema types the answer as a dict. */
/** One class in the paired guard: both versions on the same evaluation cells. */
export type GuardClassRow = { code: string; n: number; judged: boolean; blocks: boolean; p: number | null };

export type ModelVersionComparison = {
  guard_b_over_a: {
    passes: boolean;
    reasons: string[];
    /** "paired": both versions scored on the same cells; "tpr": older versions, TPRs only. */
    basis?: "paired" | "tpr";
    /** e.g. "cannot judge: AR (n=2), BL (n=0)"; empty when every class has enough cells. */
    cannot_judge?: string;
    per_class?: GuardClassRow[];
  };
  /** n per class on the evaluation set (null where the versions were not paired). */
  per_class_tpr?: Record<string, { n: number | null }>;
};

/** The training job's `progress` JSON column (`unknown` in the schema), as the worker writes it. */
export type TrainingProgress = { stage?: string; percent?: number; epoch?: number; epochs?: number } & Record<string, unknown>;

/** A training job; the list leaves out `log_tail`, the detail has it. */
export type TrainingJob = Narrowed<Schemas["TrainingJob"], { progress: TrainingProgress }> & { log_tail?: string };

export type TrainingJobDetail = TrainingJob & Pick<Schemas["TrainingJobDetail"], "log_tail">;

export type RoutingConfig = Schemas["RoutingConfig"];
export type RoutingConfigUpdate = Schemas["RoutingConfigUpdateRequest"];

export type UploadSummary = Narrowed<
  Schemas["UploadSummary"],
  { skipped_files: { file: string; reason: string }[]; unknown_class_names: Record<string, number> }
>;

// --- trust: agreement (GET /api/agreement/), adjudication, gold cells ----------------------

/** `GET /api/agreement/` is a dict in the schema: the shape annotation/selectors sends. */
export type AgreementPair = {
  a: string;
  b: string;
  n_items: number;
  kappa: number | null;
};

export type AgreementSummary = {
  fleiss_kappa: number | null;
  n_items: number;
  per_class: Record<string, number | null>;
  per_class_items?: Record<string, number>;
  pairs: AgreementPair[];
  by_week: { week: string; kappa: number | null; n_items: number }[];
};

export type AdjudicationItem = Narrowed<Schemas["AdjudicationItem"], { reasons: string[] }>;

export type GoldCell = Schemas["GoldCell"];
export type GoldPerClass = Schemas["ClassScore"];
export type GoldReader = Schemas["ReaderScore"];
export type GoldModel = Schemas["ModelScore"];
export type GoldGroup = Schemas["GoldGroup"];
export type GoldPerformance = Schemas["GoldPerformance"];
