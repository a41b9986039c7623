// Adjudication: a senior hematologist settles cells whose independent reads disagree.
// The cell large with its segmentation outlines, every read with its author and time,
// and the labelling screen's 14-class palette and keys; the decision is an adjudicated
// label (POST /api/adjudication/<item>/decide/) and the next disagreement appears.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { ApiError, api } from "../api";
import { CellViewer, ViewerTools, loadOverlay, useOverlayCanvas, zoomBy } from "../components/viewer";
import type { Events } from "../events";
import { buildKeyMap, useKeyActions, type KeyAction, type KeyMap } from "../keys";
import { formatPercent, reasonText } from "../labelling";
import { nextItem, readTally } from "../trust";
import type { AdjudicationItem, Boot, CellDetail, Diff14Code } from "../types";
import { Kbd, showError, showInfo } from "../ui";
import { Palette } from "./label";

interface Shown {
  detail: CellDetail | null;
  overlay: ImageData | null;
  note: string;
}

export function AdjudicateScreen({ boot, events }: { boot: Boot; events: Events }) {
  const names = useMemo(() => new Map(boot.taxonomy.map((c) => [c.code, c.name])), []);
  const keymap = useMemo<KeyMap | Error>(() => {
    try {
      return buildKeyMap(boot.taxonomy);
    } catch (e) {
      return e as Error;
    }
  }, []);
  const [items, setItems] = useState<AdjudicationItem[] | null>(null);
  const [currentId, setCurrentId] = useState<number | null>(null);
  const passed = useRef(new Set<number>());
  const [deciding, setDeciding] = useState(false);
  const [decided, setDecided] = useState<{ cell: number; code: string }[]>([]);
  const [shownInfo, setShownInfo] = useState<Shown>({ detail: null, overlay: null, note: "" });
  const [outlines, setOutlines] = useState(true);
  const [zoom, setZoom] = useState(1);
  const viewer = useRef<HTMLDivElement>(null);
  const overlayCanvas = useOverlayCanvas(shownInfo.overlay, [shownInfo.overlay]);

  const load = async () => {
    try {
      setItems(await api.get("/api/adjudication/"));
    } catch (e) {
      showError(e, "loading the cells to adjudicate");
    }
  };
  useEffect(() => {
    void load();
    // Someone else may decide, or new disagreements arrive: the queue's counts change.
    let timer: number | undefined;
    const later = () => {
      clearTimeout(timer);
      timer = window.setTimeout(() => void load(), 400);
    };
    const offs = [events.on("queue.counts", later), events.onState((s) => s === "open" && later())];
    viewer.current?.focus();
    return () => {
      offs.forEach((off) => off());
      clearTimeout(timer);
    };
  }, []);

  const shown = items ? nextItem(items, currentId, passed.current) : null;

  useEffect(() => {
    if (!shown) return;
    if (shown.id !== currentId) setCurrentId(shown.id);
    let live = true;
    setShownInfo({ detail: null, overlay: null, note: "loading outlines" });
    setZoom(1);
    (async () => {
      const next: Shown = { detail: null, overlay: null, note: "" };
      try {
        next.detail = await api.get("/api/cells/{cell_id}/", { path: { cell_id: shown.cell } });
        const seg = next.detail.segmentations.filter((s) => s.mask_url).pop();
        if (seg?.mask_url) next.overlay = await loadOverlay(seg.mask_url);
        else {
          const failed = next.detail.segmentations.find((s) => s.status === "failed");
          next.note = failed ? `segmentation failed: ${failed.failure_reason || "no reason"}` : "no segmentation yet";
        }
      } catch (e) {
        next.note = "outlines unavailable";
        console.warn("could not load cell", shown.cell, e);
      }
      if (live) setShownInfo(next);
    })();
    return () => {
      live = false;
    };
  }, [shown?.id]);


  const decide = async (code: string) => {
    if (!shown || deciding) return;
    const item = shown;
    setDeciding(true);
    try {
      await api.post("/api/adjudication/{item_id}/decide/", { path: { item_id: item.id }, body: { code: code as Diff14Code } });
      showInfo(`Cell ${item.cell} is now ${code} (${names.get(code) ?? code}), adjudicated.`);
      setDecided((d) => [...d, { cell: item.cell, code }]);
      setItems((list) => (list ?? []).filter((i) => i.id !== item.id));
      setCurrentId(null);
      void load();
    } catch (e) {
      showError(e, `deciding cell ${item.cell}`);
      // Decided by someone else meanwhile, or gone: show what is waiting now.
      if (e instanceof ApiError && (e.status === 409 || e.status === 404)) {
        setCurrentId(null);
        void load();
      }
    } finally {
      setDeciding(false);
    }
  };

  const pass = () => {
    if (!shown || !items) return;
    passed.current.add(shown.id);
    if (items.every((i) => passed.current.has(i.id))) passed.current.clear();
    const following = items.find((i) => !passed.current.has(i.id) && i.id !== shown.id);
    setCurrentId(following?.id ?? shown.id);
  };

  const perform = (action: KeyAction) => {
    switch (action.kind) {
      case "label":
        void decide(action.code);
        break;
      case "skip":
        pass();
        break;
      case "outlines":
        setOutlines((o) => !o);
        break;
      case "zoom":
        setZoom((z) => zoomBy(z, action.step));
        break;
      default:
        break; // accept, undo, flag: the labelling screen's, with no meaning here
    }
  };
  useKeyActions(keymap, perform, ["label", "skip", "outlines", "zoom"]);

  if (keymap instanceof Error) {
    return <p class="message error" role="alert">The class keys cannot be used: {keymap.message}</p>;
  }
  const click = (action: KeyAction) => (e: MouseEvent) => {
    perform(action);
    if (e.detail > 0) viewer.current?.focus({ preventScroll: true });
  };
  const tally = shown ? readTally(shown) : [];
  const prediction = shownInfo.detail?.prediction;

  return (
    <section class="label-screen adjudicate" aria-labelledby="adjudicate-title">
      <h1 id="adjudicate-title">Adjudicate disagreements</h1>
      <div class="counters" aria-live="polite">
        <span>
          Waiting: <strong data-testid="adjudication-left">{items ? items.length : "…"}</strong>
        </span>
        <span>
          Decided this session: <strong data-testid="adjudication-decided">{decided.length}</strong>
        </span>
        {deciding && <span class="muted">saving…</span>}
      </div>

      {items && !shown ? (
        <p class="placeholder" data-testid="adjudication-empty">
          Nothing to adjudicate: no cell has independent reads that disagree. Cells appear here when two readers give a
          cell different classes.
        </p>
      ) : (
        <div class="label-layout">
          <div class="viewer-col">
            <CellViewer
              viewerRef={viewer}
              canvasRef={overlayCanvas}
              src={shown?.image_url ?? null}
              alt={shown ? `Cell ${shown.cell} from case ${shown.case}` : ""}
              label={shown ? `Cell ${shown.cell}: press a class key to decide its class` : "No cell"}
              testid="adjudication-viewer"
              cellId={shown?.cell ?? null}
              itemId={shown?.id ?? null}
              zoom={zoom}
              setZoom={setZoom}
              outlines={outlines}
              placeholder={<p class="placeholder">Loading…</p>}
            />
            <ViewerTools outlines={outlines} zoom={zoom} note={shownInfo.note} hasOverlay={!!shownInfo.overlay} click={click} />
          </div>

          <aside class="info-col" aria-label="The reads of this cell">
            {shown && (
              <>
                <h2>
                  Cell {shown.cell}{" "}
                  <span class="muted">
                    case {shown.case_id ? <a href={`#/cases/${shown.case_id}`}>{shown.case}</a> : shown.case}
                  </span>
                </h2>
                <p data-testid="tally">
                  <strong>The readers disagree:</strong>{" "}
                  {tally.map((t, i) => (
                    <span key={t.code}>
                      {i ? "; " : ""}
                      <span class="code">{t.code}</span> {names.get(t.code) ?? t.code} ({t.authors.join(", ")})
                    </span>
                  ))}
                </p>
                <table class="data compact" data-testid="reads">
                  <caption>Independent reads ({shown.reads.length} of {shown.labels_required} required)</caption>
                  <thead>
                    <tr>
                      <th scope="col">Reader</th>
                      <th scope="col">Class</th>
                      <th scope="col">When</th>
                    </tr>
                  </thead>
                  <tbody>
                    {shown.reads.map((r) => (
                      <tr key={r.id} data-author={r.annotator ?? ""} data-code={r.code}>
                        <th scope="row">{r.annotator ?? "unknown"}</th>
                        <td>
                          <span class="code">{r.code}</span> {names.get(r.code) ?? r.code}
                        </td>
                        <td>{new Date(r.created_at).toLocaleString()}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
                <h3>Why it was queued</h3>
                <ul class="reasons">
                  {shown.reasons.map((r) => (
                    <li key={r}>{reasonText(r, boot.queue_reasons)}</li>
                  ))}
                </ul>
                <p class="muted">
                  Model:{" "}
                  {prediction
                    ? `${prediction.top_code} ${names.get(prediction.top_code) ?? ""} (${formatPercent(prediction.confidence)}, ${prediction.model_version_name})`
                    : "no prediction"}
                </p>
              </>
            )}
            <div class="actions" role="toolbar" aria-label="Adjudication actions">
              <button type="button" onClick={click({ kind: "skip" })} disabled={!shown || (items?.length ?? 0) < 2} aria-keyshortcuts="S">
                Next disagreement, decide later <Kbd k="s" />
              </button>
            </div>
            <p class="muted">
              A class key or button decides the cell: the decision is an adjudicated label, which counts for training
              and export. The readers' labels stay in the history.
            </p>
          </aside>
        </div>
      )}

      {shown && <Palette boot={boot} verb="Decide" disabled={deciding} onPick={(code, e) => click({ kind: "label", code })(e)} />}

      {decided.length > 0 && (
        <details class="history">
          <summary>Decided in this session ({decided.length})</summary>
          <ol reversed>
            {decided
              .slice(-15)
              .reverse()
              .map((d) => (
                <li key={d.cell}>
                  cell {d.cell}: {d.code}
                </li>
              ))}
          </ol>
        </details>
      )}
    </section>
  );
}
