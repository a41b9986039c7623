// Shapes of the server's data, as the API (annotation/api/) and the page's boot JSON
// (annotation/views.py) send them. Only the fields the UI reads are typed.

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

export interface Label {
  id: number;
  cell: number;
  code: string;
  source: string;
  annotator: string | null;
  created_at: string;
  supersedes: number | null;
}

export interface PredictionBrief {
  model_version: number;
  model_version_name: string;
  top_code: string;
  confidence: number;
}

export interface Prediction extends PredictionBrief {
  model_version_status: string;
  margin: number;
  entropy: number;
  probabilities: Record<string, number>;
}

export interface Segmentation {
  id: number;
  status: string;
  quality: number | null;
  failure_reason: string;
  mask_url: string | null;
  created_at: string;
}

export interface Cell {
  id: number;
  case: number;
  case_accession: string;
  image_url: string;
  thumbnail_url: string;
  width: number;
  height: number;
  original_filename: string;
  has_label_conflict: boolean;
  label: Label | null;
  prediction: PredictionBrief | null;
  queue: { id: number; status: string; reasons: string[]; flagged: boolean } | null;
}

export interface CellDetail extends Cell {
  predictions: Prediction[];
  segmentations: Segmentation[];
  labels: Label[];
}

export interface Suggestion {
  top_code: string;
  confidence: number;
  margin: number;
  probabilities: number[] | Record<string, number>;
}

export interface ReviewItem {
  id: number;
  status: string;
  reasons: string[];
  priority: number;
  flagged: boolean;
  lease_expires_at: string | null;
  model_version: number | null;
  suggestion: Suggestion | null;
  cell: Cell;
}

export interface Page<T> {
  count: number;
  next: string | null;
  previous: string | null;
  results: T[];
}

export interface QueueCounts {
  queued: number;
  leased: number;
  by_reason: Record<string, number>;
  by_class: Record<string, number>;
}

export interface Case {
  id: number;
  accession_id: string;
  patient_pseudonym: string;
  diagnosis: string;
  source: string;
  status: string;
  created_at: string;
  updated_at: string;
  n_cells?: number;
  n_labelled?: number;
}

export interface DifferentialClass {
  code: string;
  name: string;
  group: Group;
  count: number;
  labelled: number;
  predicted: number;
  source: string | null;
  percent: number | null;
  per_100_wbc: number | null;
}

export interface Flag {
  code: string;
  message: string;
}

export interface Differential {
  cells_total: number;
  labelled: number;
  predicted_only: number;
  unclassified: number;
  open_review_items: number;
  label_conflicts: number;
  wbc_counted: number;
  classes: DifferentialClass[];
  totals: {
    normal: { count: number; percent: number | null };
    abnormal: { count: number; percent: number | null };
    nrbc: { count: number; per_100_wbc: number | null };
    artifacts: { count: number };
  };
  flags: Flag[];
}

export interface CaseDetail extends Case {
  differential: Differential;
}

export interface ModelVersion {
  id: number;
  name: string;
  arch: string;
  status: string;
  created_at: string;
  promoted_at: string | null;
  triggered_by: string;
}

export interface ModelVersionDetail extends ModelVersion {
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

export interface TrainingJob {
  id: number;
  trigger: string;
  status: string;
  progress: { stage?: string; percent?: number; epoch?: number; epochs?: number } & Record<
    string,
    unknown
  >;
  error: string;
  result_version: number | null;
  result_version_name: string | null;
  created_by: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  log_tail?: string;
}

export interface RoutingConfig {
  confidence_threshold: number;
  weak_class_tpr: number;
  audit_rate: number;
  strategy: string;
  lease_seconds: number;
  retrain_min_new_labels: number;
  labels_required_abnormal: number;
  updated_at: string;
}

// --- trust: agreement (GET /api/agreement/), adjudication, gold cells ----------------------

export interface AgreementPair {
  a: string;
  b: string;
  n_items: number;
  kappa: number | null;
}

export interface AgreementSummary {
  fleiss_kappa: number | null;
  n_items: number;
  per_class: Record<string, number | null>;
  per_class_items?: Record<string, number>;
  pairs: AgreementPair[];
  by_week: { week: string; kappa: number | null; n_items: number }[];
}

export interface AdjudicationItem {
  id: number;
  cell: number;
  case: string;
  case_id?: number;
  image_url: string;
  reasons: string[];
  labels_required: number;
  reads: Label[];
}

export interface GoldCell {
  cell: number;
  diff14: string;
  note: string;
  marked_by: string | null;
  marked_at: string;
  thumbnail_url: string;
  /** the case's accession id; case_id is its id */
  case: string;
  case_id: number;
  /** the cell's current label, to compare with the gold class */
  current_label: string | null;
}

export interface GoldPerClass {
  n: number;
  correct: number;
  tpr: number | null;
}

export interface GoldReader {
  user: string;
  n: number;
  correct: number;
  accuracy: number | null;
  per_class: Record<string, GoldPerClass>;
}

export interface GoldModel {
  model_version: number;
  name: string;
  status: string;
  active: boolean;
  n: number;
  correct: number;
  accuracy: number | null;
  balanced_accuracy: number | null;
  per_class: Record<string, GoldPerClass>;
}

export interface GoldGroup {
  gold_cells: number;
  readers: GoldReader[];
  models: GoldModel[];
}

export interface GoldPerformance extends GoldGroup {
  /** RoutingConfig.gold_rate: the share of the cells a reader takes that are gold */
  gold_rate: number;
  classes: string[];
  by_scanner: Record<string, GoldGroup>;
  by_stain: Record<string, GoldGroup>;
}
