// A case's review to its signed report: whether it can be signed and every reason why
// not (from GET /api/cases/{id}/sign-off/, the server's rules), signing with the password
// again (one signature, or two by different people), who signed and when, reopening with
// a reason, the report versions (HTML and PDF), the interpretive comment and the notes on
// flagged cells; and, for admins, the lab's review rules.
import { useEffect, useState } from "preact/hooks";
import { api } from "../api";
import type { Boot, CaseDetail, CaseReport, CellNote, ReviewRules, SignoffState } from "../types";
import { confirmAction, roles, showError, showInfo, useLoad } from "../ui";

const when = (iso: string | null | undefined) => (iso ? new Date(iso).toLocaleString() : "");

/** "signed by A (time)[, second signature B (time)]" for a report. */
export function signersText(r: CaseReport): string {
  const first = `${r.signed_by} (${when(r.signed_at)})`;
  return r.second_signed_by ? `${first} and ${r.second_signed_by} (${when(r.second_signed_at)})` : first;
}

export function targetText(target: number): string {
  return target ? `${target} reviewed white cells` : "every cell reviewed";
}

export function SignoffPanel({
  boot,
  caseInfo,
  refreshKey,
  onChanged,
}: {
  boot: Boot;
  caseInfo: CaseDetail;
  /** changes whenever the case's cells change, so the state is read again */
  refreshKey: unknown;
  onChanged: () => void;
}) {
  const caseId = caseInfo.id;
  const canLabel = roles.canLabel(boot);
  const [state, reloadState] = useLoad(
    () => api.get("/api/cases/{case_id}/sign-off/", { path: { case_id: caseId } }),
    [caseId, refreshKey, caseInfo.status],
    "reading whether the case can be signed",
  );
  const [reports, reloadReports] = useLoad(
    () => api.get("/api/cases/{case_id}/reports/", { path: { case_id: caseId } }),
    [caseId, caseInfo.status],
    "loading the case's reports",
  );
  const reload = () => {
    reloadState();
    reloadReports();
    onChanged();
  };

  const sign = async (s: SignoffState) => {
    let password = "";
    const second = s.next_step === "second_signature";
    const ok = await confirmAction(
      second ? `Second signature for case ${caseInfo.accession_id}` : `Sign case ${caseInfo.accession_id}?`,
      <>
        <p>
          {second
            ? `${s.latest_report?.signed_by} signed version ${s.latest_report?.version}; your signature makes it final.`
            : s.rules.two_person_signoff
              ? "The report is frozen now and becomes final with a second signature by another user."
              : "The report is frozen and final with your signature."}
        </p>
        <label class="field">
          <span>Your password</span>
          <input
            type="password"
            autocomplete="current-password"
            required
            data-testid="signoff-password"
            onInput={(e) => (password = e.currentTarget.value)}
          />
        </label>
      </>,
      second ? "Sign (second)" : "Sign",
    );
    if (!ok) return;
    try {
      const signed = await api.post("/api/cases/{case_id}/sign-off/", { path: { case_id: caseId }, body: { password } });
      showInfo(
        signed.report.is_final
          ? `Case ${signed.case.accession_id} is signed: report version ${signed.report.version} is final.`
          : `Signed; report version ${signed.report.version} awaits a second signature by another user.`,
        "signing the case",
      );
    } catch (e) {
      showError(e, "signing the case");
    }
    reload();
  };

  const reopen = async () => {
    let reason = "";
    const ok = await confirmAction(
      `Reopen case ${caseInfo.accession_id} to amend it?`,
      <>
        <p>The signed report stays as it is; signing again makes a new version that amends it.</p>
        <label class="field">
          <span>Reason (printed on the amended report)</span>
          <textarea required rows={3} data-testid="reopen-reason" onInput={(e) => (reason = e.currentTarget.value)} />
        </label>
      </>,
      "Reopen",
      true,
    );
    if (!ok) return;
    try {
      await api.post("/api/cases/{case_id}/reopen/", { path: { case_id: caseId }, body: { reason } });
      showInfo(`Case ${caseInfo.accession_id} is reopened for amendment.`, "reopening the case");
    } catch (e) {
      showError(e, "reopening the case");
    }
    reload();
  };

  if (!state) return <p class="muted">Reading the sign-off rules…</p>;
  const signed = caseInfo.status === "signed_off" || caseInfo.status === "amended";
  return (
    <section class="signoff" aria-labelledby="signoff-title" data-testid="signoff-panel">
      <h2 id="signoff-title">Sign-off</h2>
      <p class="muted">
        Rules: {targetText(state.rules.count_target)}, nothing unidentified, no open disagreement
        {state.rules.two_person_signoff ? ", two signatures by different people" : ""}.
      </p>
      {state.reopen_reason && <p data-testid="reopen-reason-shown">Reopened: {state.reopen_reason}</p>}
      {state.unmet.length > 0 && (
        <ul class="unmet" data-testid="signoff-unmet" aria-label="Why it cannot be signed yet">
          {state.unmet.map((u) => (
            <li key={u.code} data-code={u.code}>
              {u.message}
            </li>
          ))}
        </ul>
      )}
      {canLabel && state.next_step && (
        <button type="button" class="primary" onClick={() => void sign(state)} disabled={!state.can_sign} data-testid="signoff">
          {state.next_step === "second_signature" ? "Give the second signature" : "Sign off the case"}
        </button>
      )}
      {state.can_sign && <p id="signoff-why" class="muted" data-testid="signoff-why">Every rule is met; the case can be signed.</p>}
      {canLabel && signed && (
        <button type="button" onClick={() => void reopen()} data-testid="reopen">
          Reopen to amend
        </button>
      )}
      {reports && reports.length > 0 && (
        <>
          <h3>Reports</h3>
          <ul class="reports" data-testid="reports">
            {reports.map((r) => (
              <li key={r.version} data-version={r.version}>
                Version {r.version}
                {r.amends_version ? ` (amends v${r.amends_version}: ${r.amend_reason})` : ""} ·{" "}
                {r.is_final ? (r.superseded ? "superseded" : "final") : "awaiting the second signature"} · signed by{" "}
                <span data-testid={`signers-${r.version}`}>{signersText(r)}</span> ·{" "}
                <a href={r.html_url} target="_blank" rel="noopener" data-testid={`report-html-${r.version}`}>
                  HTML
                </a>{" "}
                ·{" "}
                <a href={r.pdf_url} download data-testid={`report-pdf-${r.version}`}>
                  PDF
                </a>
              </li>
            ))}
          </ul>
        </>
      )}
    </section>
  );
}

/** The interpretive comment: free text plus the lab's coded comments; until signed. */
export function InterpretationPanel({ boot, caseInfo }: { boot: Boot; caseInfo: CaseDetail }) {
  const caseId = caseInfo.id;
  const canLabel = roles.canLabel(boot);
  const editable = canLabel && !["awaiting_second", "signed_off", "amended"].includes(caseInfo.status);
  const [current, reload] = useLoad(
    () => api.get("/api/cases/{case_id}/interpretation/", { path: { case_id: caseId } }),
    [caseId],
    "loading the interpretive comment",
  );
  const [rules] = useLoad(
    () => (canLabel ? api.get("/api/review-rules/") : Promise.resolve(null)),
    [],
    "loading the coded comments",
  );
  const [text, setText] = useState("");
  const [coded, setCoded] = useState<string[]>([]);
  useEffect(() => {
    if (current) {
      setText(current.text);
      setCoded(current.coded);
    }
  }, [current]);
  const save = async (e: Event) => {
    e.preventDefault();
    try {
      await api.put("/api/cases/{case_id}/interpretation/", { path: { case_id: caseId }, body: { text, coded } });
      showInfo("Comment saved.", "saving the comment");
      reload();
    } catch (err) {
      showError(err, "saving the comment");
    }
  };
  if (!current) return null;
  const list = rules?.coded_comments ?? [];
  return (
    <form class="interpretation" onSubmit={save} aria-labelledby="comment-title" data-testid="interpretation">
      <h2 id="comment-title">Interpretive comment</h2>
      {list.length > 0 && (
        <fieldset disabled={!editable}>
          <legend>Coded comments</legend>
          {list.map((c) => (
            <label key={c.code} class="check">
              <input
                type="checkbox"
                checked={coded.includes(c.code)}
                onChange={(e) => setCoded(e.currentTarget.checked ? [...coded, c.code] : coded.filter((x) => x !== c.code))}
                data-code={c.code}
              />{" "}
              <span class="code">{c.code}</span> {c.text}
            </label>
          ))}
        </fieldset>
      )}
      <label class="field">
        <span>Free text</span>
        <textarea rows={3} value={text} disabled={!editable} onInput={(e) => setText(e.currentTarget.value)} data-testid="comment-text" />
      </label>
      {editable && (
        <button type="submit" data-testid="comment-save">
          Save comment
        </button>
      )}
      {current.updated_by && (
        <p class="muted">
          Last changed by {current.updated_by}, {when(current.updated_at)}
        </p>
      )}
    </form>
  );
}

/** Notes on cells (printed under "Notes on flagged cells"): the flagged cells, and a note
 * on the one selected cell. */
export function CellNotesPanel({ boot, caseInfo, selectedCell }: { boot: Boot; caseInfo: CaseDetail; selectedCell: number | null }) {
  const caseId = caseInfo.id;
  const editable = roles.canLabel(boot) && !["awaiting_second", "signed_off", "amended"].includes(caseInfo.status);
  const [notes, setNotes] = useState<CellNote[] | null>(null);
  const [draft, setDraft] = useState("");
  const load = () =>
    api.get("/api/cases/{case_id}/cell-notes/", { path: { case_id: caseId } }).then(setNotes, (e) => showError(e, "loading the cell notes"));
  useEffect(() => void load(), [caseId]);
  useEffect(() => setDraft(notes?.find((n) => n.cell_id === selectedCell)?.note ?? ""), [selectedCell, notes]);
  const save = async (e: Event) => {
    e.preventDefault();
    if (selectedCell === null) return;
    try {
      setNotes(await api.put("/api/cases/{case_id}/cell-notes/{cell_id}/", { path: { case_id: caseId, cell_id: selectedCell }, body: { note: draft } }));
      showInfo(draft.trim() ? `Note on cell ${selectedCell} saved.` : `Note on cell ${selectedCell} removed.`, "saving the cell note");
    } catch (err) {
      showError(err, "saving the cell note");
    }
  };
  return (
    <section class="cell-notes" aria-labelledby="notes-title" data-testid="cell-notes">
      <h2 id="notes-title">Notes on flagged cells</h2>
      {notes && notes.length > 0 ? (
        <ul>
          {notes.map((n) => (
            <li key={n.cell_id}>
              Cell {n.cell_id}
              {n.flagged ? " (flagged)" : ""}: {n.note || <span class="muted">no note yet</span>}
            </li>
          ))}
        </ul>
      ) : (
        <p class="muted">No cell is flagged or has a note.</p>
      )}
      {editable && selectedCell !== null && (
        <form onSubmit={save}>
          <label class="field">
            <span>Note on cell {selectedCell}</span>
            <input type="text" value={draft} maxLength={2000} onInput={(e) => setDraft(e.currentTarget.value)} data-testid="cell-note" />
          </label>
          <button type="submit">Save note</button>
        </form>
      )}
      {editable && selectedCell === null && <p class="muted">Select one cell to write a note on it.</p>}
    </section>
  );
}

// --- admin: the lab's review rules -----------------------------------------------------

const TARGETS: [ReviewRules["count_target"], string][] = [
  [100, "100 cells"],
  [200, "200 cells"],
  [400, "400 cells (ICSH reference)"],
  [0, "every cell of the case"],
];

/** "CODE: text" per line, the editable form of the coded comments. */
export function parseCodedComments(text: string): { code: string; text: string }[] {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean)
    .map((line) => {
      const at = line.indexOf(":");
      return at < 0 ? { code: line, text: "" } : { code: line.slice(0, at).trim(), text: line.slice(at + 1).trim() };
    });
}

export function ReviewRulesForm() {
  const [rules, reload] = useLoad(() => api.get("/api/review-rules/"), [], "loading the review rules");
  const [form, setForm] = useState<{ count_target: ReviewRules["count_target"]; two_person_signoff: boolean; coded: string } | null>(null);
  useEffect(() => {
    if (rules) setForm({ count_target: rules.count_target, two_person_signoff: rules.two_person_signoff, coded: codedText(rules) });
  }, [rules]);
  const save = async (e: Event) => {
    e.preventDefault();
    if (!form) return;
    try {
      await api.put("/api/review-rules/", {
        body: { count_target: form.count_target, two_person_signoff: form.two_person_signoff, coded_comments: parseCodedComments(form.coded) },
      });
      showInfo("Review rules saved; they apply to every case signed from now on.", "saving the review rules");
      reload();
    } catch (err) {
      showError(err, "saving the review rules");
    }
  };
  if (!rules || !form) return null;
  return (
    <form class="routing" onSubmit={save} aria-labelledby="rules-title" data-testid="review-rules">
      <h2 id="rules-title">Review and sign-off rules</h2>
      <label class="field">
        <span>Count target</span>
        <select value={String(form.count_target)} onChange={(e) => setForm({ ...form, count_target: Number(e.currentTarget.value) as ReviewRules["count_target"] })} data-testid="rules-target">
          {TARGETS.map(([v, t]) => (
            <option key={v} value={String(v)}>
              {t}
            </option>
          ))}
        </select>
        <small>reviewed white cells a case needs before it can be signed (model-only cells do not count)</small>
      </label>
      <label class="field">
        <span>Two-person sign-off</span>
        <input type="checkbox" checked={form.two_person_signoff} onChange={(e) => setForm({ ...form, two_person_signoff: e.currentTarget.checked })} data-testid="rules-two-person" />
        <small>a second signature by another user makes the report final</small>
      </label>
      <label class="field">
        <span>Coded comments</span>
        <textarea rows={5} value={form.coded} onInput={(e) => setForm({ ...form, coded: e.currentTarget.value })} data-testid="rules-coded" />
        <small>one per line, "CODE: text"</small>
      </label>
      <p>
        <button type="submit" class="primary">
          Save review rules
        </button>{" "}
        {rules.updated_by && (
          <span class="muted">
            Last changed by {rules.updated_by}, {when(rules.updated_at)}
          </span>
        )}
      </p>
    </form>
  );
}

function codedText(rules: ReviewRules): string {
  return rules.coded_comments.map((c) => `${c.code}: ${c.text}`).join("\n");
}
