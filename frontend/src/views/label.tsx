// Labelling: the next queued cell, large and zoomable, with its segmentation outlines,
// why it was queued and the model's top 3 classes; the 14 classes as a palette; one key
// labels and moves on. Works with the keyboard alone and with the mouse alone.
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import { api as client } from "../api";
import { CellViewer, ViewerTools, loadOverlay, useOverlayCanvas, zoomBy } from "../components/viewer";
import type { Events } from "../events";
import { buildKeyMap, useKeyActions, type KeyAction, type KeyMap } from "../keys";
import { formatPercent, normaliseLease, reasonText, topClasses } from "../labelling";
import { LabelQueue, type QueueApi } from "../queue";
import type { Boot, CellDetail, Diff14Code, QueueCounts, ReviewItem } from "../types";
import { Kbd, dialogOpen, showError, showInfo } from "../ui";

const api: QueueApi = {
  lease: async (count) => normaliseLease(await client.post("/api/queue/next/", { body: { count } })),
  // The codes come from the boot JSON's taxonomy, the same list as the schema's Diff14CodeEnum.
  submit: (id, code) => client.post("/api/queue/items/{item_id}/submit/", { path: { item_id: id }, body: { code: code as Diff14Code } }),
  skip: (id) => client.post("/api/queue/items/{item_id}/skip/", { path: { item_id: id } }),
  release: (id) => client.post("/api/queue/items/{item_id}/release/", { path: { item_id: id } }),
  releaseMany: (ids) => client.postKeepalive("/api/queue/release/", { body: { item_ids: ids } }),
  flag: (id, flagged) => client.post("/api/queue/items/{item_id}/flag/", { path: { item_id: id }, body: { flagged } }),
  relabel: (cellId, code) => client.post("/api/cells/{cell_id}/labels/", { path: { cell_id: cellId }, body: { code: code as Diff14Code } }),
};

interface Prepared {
  image: HTMLImageElement;
  detail: CellDetail | null;
  overlay: ImageData | null;
  overlayNote: string;
}

declare global {
  interface Window {
    __wbcLatencies?: number[];
  }
}

/** `opened` changes whenever the screen is opened again from the header (app.tsx). */
export function LabelScreen({ boot, events, opened = 0, caseId }: { boot: Boot; events: Events; opened?: number; caseId?: number }) {
  const codes = boot.taxonomy.map((c) => c.code);
  const names = useMemo(() => new Map(boot.taxonomy.map((c) => [c.code, c.name])), []);
  const keymap = useMemo<KeyMap | Error>(() => {
    try {
      return buildKeyMap(boot.taxonomy);
    } catch (e) {
      return e as Error;
    }
  }, []);
  const [, setTick] = useState(0);
  const rerender = () => setTick((t) => t + 1);
  const cache = useRef(new Map<number, Prepared>());

  const prepare = async (item: ReviewItem) => {
    const id = item.cell.id;
    if (cache.current.has(id)) return;
    const entry: Prepared = { image: new Image(), detail: null, overlay: null, overlayNote: "loading outlines" };
    cache.current.set(id, entry);
    if (cache.current.size > 24) cache.current.delete(cache.current.keys().next().value!);
    entry.image.src = item.cell.image_url;
    const decoded = entry.image.decode().catch(() => undefined);
    try {
      entry.detail = await client.get("/api/cells/{cell_id}/", { path: { cell_id: id } });
      const segs = entry.detail.segmentations.filter((s) => s.mask_url);
      const seg = segs[segs.length - 1];
      if (seg?.mask_url) {
        entry.overlay = await loadOverlay(seg.mask_url);
        entry.overlayNote = "";
      } else {
        const failed = entry.detail.segmentations.find((s) => s.status === "failed");
        entry.overlayNote = failed ? `segmentation failed: ${failed.failure_reason || "no reason"}` : "no segmentation yet";
      }
    } catch (e) {
      entry.overlayNote = "outlines unavailable";
      console.warn("could not prepare cell", id, e);
    }
    await decoded;
    rerender();
  };

  const queue = useMemo(
    () =>
      // "Review this case's open cells": leases from that case only (POST queue/next "case").
      new LabelQueue(caseId ? { ...api, lease: async (count) => normaliseLease(await client.post("/api/queue/next/", { body: { count, case: caseId } })) } : api, {
        depth: boot.label_prefetch ?? 4,
        prepare,
        onChange: rerender,
        onError: (e, doing) => showError(e, doing),
      }),
    [],
  );
  const [counts, setCounts] = useState<QueueCounts | null>(null);
  const [outlines, setOutlines] = useState(true);
  const [zoom, setZoom] = useState(1);
  const viewer = useRef<HTMLDivElement>(null);
  const img = useRef<HTMLImageElement>(null);
  const pendingStart = useRef<number | null>(null);

  useEffect(() => {
    window.__wbcLatencies = [];
    queue.start();
    const readCounts = () =>
      client.get("/api/queue/counts/").then(setCounts, (e) => showError(e, "reading the queue counts"));
    void readCounts();
    const offCounts = events.on("queue.counts", (data: QueueCounts) => {
      setCounts(data);
      if (data.queued > 0) queue.poke();
    });
    // Events sent while the socket was down are lost: read the counts again on reconnect.
    const offState = events.onState((state) => state === "open" && void readCounts());
    const off = () => {
      offCounts();
      offState();
    };
    // Leaving the screen (another screen, or the tab closed) gives back every lease it
    // holds in one retried call, so no cell stays "being labelled" for the lease time.
    const release = () => void queue.leave();
    // Back from the browser's page cache: the leases were given back, take new ones.
    const back = (e: PageTransitionEvent) => e.persisted && location.reload();
    window.addEventListener("pagehide", release);
    window.addEventListener("pageshow", back);
    return () => {
      off();
      window.removeEventListener("pagehide", release);
      window.removeEventListener("pageshow", back);
      release();
    };
  }, []);

  // The keys act on the cell: the focus goes to it whenever the screen opens (first
  // mount, or its header link clicked again, which would otherwise keep the focus and
  // take Enter for itself), and after each label or skip (see perform).
  const focusCell = () => {
    if (!dialogOpen()) viewer.current?.focus({ preventScroll: true });
  };
  useEffect(focusCell, [opened]);

  const snap = queue.snapshot();
  const shown = snap.shown;
  const prepared = shown ? cache.current.get(shown.cell.id) : undefined;
  if (shown && !prepared) void prepare(shown);
  const overlayCanvas = useOverlayCanvas(prepared?.overlay, [shown?.cell.id, prepared?.overlay]);

  const perform = (action: KeyAction, startedAt: number) => {
    const moves = () => {
      if (queue.snapshot().shown) pendingStart.current = startedAt;
    };
    switch (action.kind) {
      case "label":
        moves();
        queue.label(action.code);
        focusCell();
        break;
      case "accept":
        moves();
        if (!queue.accept()) {
          pendingStart.current = null;
          showError("This cell has no model suggestion to accept; choose a class.");
        }
        focusCell();
        break;
      case "undo":
        if (!queue.undo()) showInfo("Nothing to undo: no cell labelled in this session yet.");
        break;
      case "skip":
        if (queue.snapshot().correcting) {
          showInfo("Finish the correction first: press a class key, or Esc to keep the label.");
          break;
        }
        moves();
        queue.skip();
        focusCell();
        break;
      case "flag":
        if (!queue.flag()) showInfo("Nothing to flag here.");
        break;
      case "cancel":
        queue.cancel();
        break;
      case "outlines":
        setOutlines((o) => !o);
        break;
      case "zoom":
        setZoom((z) => zoomBy(z, action.step));
        break;
    }
  };

  useKeyActions(keymap, (action, e) => perform(action, e.timeStamp || performance.now()));

  // keypress -> next cell rendered: measured once the new image is on screen (painted).
  useLayoutEffect(() => {
    const start = pendingStart.current;
    if (start === null || !shown) return;
    pendingStart.current = null;
    const done = () =>
      requestAnimationFrame(() =>
        setTimeout(() => {
          const end = performance.now();
          performance.measure("wbc:key-to-cell", { start, end });
          window.__wbcLatencies?.push(end - start);
        }, 0),
      );
    const el = img.current;
    if (el && el.complete && el.naturalWidth) done();
    else el?.addEventListener("load", done, { once: true });
  }, [shown?.id, shown?.cell.id]);

  // A control that held the focus can vanish or be disabled (no cell yet): the focus
  // falls to the page's body, where Enter would do nothing useful; give it to the cell.
  useEffect(() => {
    const active = document.activeElement;
    if (!active || active === document.body) focusCell();
  }, [shown?.id]);

  if (keymap instanceof Error) {
    return <p class="message error" role="alert">The class keys cannot be used: {keymap.message}</p>;
  }

  const top = shown ? topClasses(shown, prepared?.detail ?? null, codes, 3) : [];
  const suggested = top[0]?.code;
  const left = counts ? counts.queued + counts.leased : null;
  const click = (action: KeyAction) => (e: MouseEvent) => {
    perform(action, e.timeStamp || performance.now());
    if (e.detail > 0) viewer.current?.focus({ preventScroll: true }); // keep Enter for "accept"
  };

  return (
    <section class="label-screen" aria-labelledby="label-title">
      <h1 id="label-title" class="visually-hidden">Label cells</h1>
      {caseId && (
        <p class="banner" role="status" data-testid="label-case-only">
          Only the open cells of one case. <a href={`#/cases/${caseId}`}>Back to the case</a> ·{" "}
          <a href="#/label">every queued cell</a>
        </p>
      )}
      <div class="counters" aria-live="polite" data-testid="counters">
        <span>
          Labelled this session: <strong data-testid="labelled-count">{snap.labelled}</strong>
        </span>
        <span>
          Left in the queue: <strong data-testid="left-count">{left ?? "…"}</strong>
        </span>
        <span class="muted">{snap.prefetched} ready{snap.busy ? ", saving…" : ""}</span>
      </div>

      <div class="label-layout">
        <div class="viewer-col">
          {snap.correcting && (
            <p class="banner correcting" role="status" data-testid="correcting">
              <strong>Undo:</strong> cell {snap.correcting.item.cell.id} was labelled{" "}
              <strong>{snap.correcting.code}</strong>. Press a class key to give it a new label, or{" "}
              <button type="button" class="link" onClick={click({ kind: "cancel" })}>
                keep {snap.correcting.code} <Kbd k="Esc" />
              </button>
              .
            </p>
          )}
          <CellViewer
            viewerRef={viewer}
            imgRef={img}
            canvasRef={overlayCanvas}
            src={shown?.cell.image_url ?? null}
            alt={shown ? `Cell ${shown.cell.id} from case ${shown.cell.case_accession}` : ""}
            label={shown ? `Cell ${shown.cell.id}: press a class key to label it` : "No cell"}
            testid="viewer"
            cellId={shown?.cell.id ?? null}
            itemId={shown?.id ?? null}
            zoom={zoom}
            setZoom={setZoom}
            outlines={outlines}
            placeholder={
              <p class="placeholder" data-testid={snap.empty ? "queue-empty" : "queue-loading"}>
                {snap.empty
                  ? "The queue has no cells for you right now. New cells appear here as they are scored."
                  : "Taking the next cell…"}
              </p>
            }
          />
          <ViewerTools
            outlines={outlines}
            zoom={zoom}
            note={prepared?.overlayNote ?? ""}
            hasOverlay={!!prepared?.overlay}
            click={click}
          />
        </div>

        <aside class="info-col" aria-label="About this cell">
          {shown && (
            <>
              <h2>
                Cell {shown.cell.id}{" "}
                <span class="muted">
                  case <a href={`#/cases/${shown.cell.case}`}>{shown.cell.case_accession}</a>
                </span>
              </h2>
              {shown.flagged && (
                <p class="flagged" data-testid="flagged">
                  ⚑ Flagged for discussion
                </p>
              )}
              <h3>Why it is here</h3>
              <ul class="reasons" data-testid="reasons">
                {shown.reasons.map((r) => (
                  <li key={r}>{reasonText(r, boot.queue_reasons)}</li>
                ))}
                {!shown.reasons.length && <li>No reason recorded</li>}
              </ul>
              <h3>Model suggestion <span class="muted">(calibrated confidence)</span></h3>
              <ol class="top3" data-testid="top3">
                {top.map((t) => (
                  <li key={t.code}>
                    <span class="code">{t.code}</span> {names.get(t.code) ?? t.code}
                    <span class="bar" aria-hidden="true">
                      <span style={{ width: `${Math.round(100 * t.p)}%` }} />
                    </span>
                    <span class="num">{formatPercent(t.p)}</span>
                  </li>
                ))}
                {!top.length && <li>No prediction yet</li>}
              </ol>
            </>
          )}
          <div class="actions" role="toolbar" aria-label="Labelling actions">
            <button type="button" class="primary" onClick={click({ kind: "accept" })} disabled={!shown || !suggested} aria-keyshortcuts="Enter">
              Accept {suggested ?? "suggestion"} <Kbd k="Enter" />
            </button>
            <button type="button" onClick={click({ kind: "undo" })} disabled={!snap.history.length} aria-keyshortcuts="Backspace">
              Undo last <Kbd k="⌫" />
            </button>
            <button type="button" onClick={click({ kind: "skip" })} disabled={!shown || !!snap.correcting} aria-keyshortcuts="S">
              Skip <Kbd k="s" />
            </button>
            <button type="button" onClick={click({ kind: "flag" })} disabled={!shown || !!snap.correcting} aria-pressed={!!shown?.flagged} aria-keyshortcuts="F">
              {shown?.flagged ? "Unflag" : "Flag"} <Kbd k="f" />
            </button>
          </div>
        </aside>
      </div>

      <Palette boot={boot} suggested={suggested} disabled={!shown} onPick={(code, e) => click({ kind: "label", code })(e)} />

      {snap.history.length > 0 && (
        <details class="history">
          <summary>Labelled in this session ({snap.history.length})</summary>
          <ol reversed>
            {snap.history.slice(-15).reverse().map((h) => (
              <li key={`${h.item.id}-${h.code}`}>
                cell {h.item.cell.id}: {h.code}
                {h.corrected ? ` (corrected from ${h.corrected})` : ""}
              </li>
            ))}
          </ol>
        </details>
      )}
    </section>
  );
}

export function Palette({
  boot,
  suggested,
  disabled,
  onPick,
  verb = "Label as",
}: {
  boot: Boot;
  suggested?: string;
  disabled?: boolean;
  onPick: (code: string, e: MouseEvent) => void;
  verb?: string;
}) {
  const groups: ["normal" | "abnormal", string][] = [
    ["normal", "Normal"],
    ["abnormal", "Abnormal"],
  ];
  return (
    <div class="palette" data-testid="palette">
      {groups.map(([group, title]) => (
        <fieldset key={group} class={`group-${group}`}>
          <legend>{title}</legend>
          {boot.taxonomy
            .filter((c) => c.group === group)
            .map((c) => (
              <button
                type="button"
                key={c.code}
                class={`cls${c.code === suggested ? " suggested" : ""}`}
                disabled={disabled}
                data-code={c.code}
                aria-keyshortcuts={c.key.toUpperCase()}
                aria-label={`${verb} ${c.name} (${c.code}), key ${c.key.toUpperCase()}${c.code === suggested ? ", the model's suggestion" : ""}`}
                onClick={(e) => onPick(c.code, e)}
              >
                <Kbd k={c.key} /> <span class="code">{c.code}</span> <span class="name">{c.name}</span>
                {c.code === suggested && <span class="sugg">★ suggested</span>}
              </button>
            ))}
        </fieldset>
      ))}
    </div>
  );
}
