// The cell viewer's pieces shared by the labelling and the adjudication screens: the
// segmentation outline overlay on a canvas, zoom steps, and the image toolbar.
import type { ComponentChildren, Ref } from "preact";
import { useLayoutEffect, useRef } from "preact/hooks";
import type { KeyAction } from "../keys";
import { outlineOverlay } from "../outline";
import { Kbd } from "../ui";

/** The outline overlay (yellow cell, cyan nucleus) of a segmentation mask, for a canvas. */
export async function loadOverlay(url: string): Promise<ImageData> {
  const mask = new Image();
  mask.src = url;
  await mask.decode();
  const canvas = document.createElement("canvas");
  canvas.width = mask.naturalWidth;
  canvas.height = mask.naturalHeight;
  const ctx = canvas.getContext("2d", { willReadFrequently: true })!;
  ctx.drawImage(mask, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  return new ImageData(outlineOverlay(pixels.data, canvas.width, canvas.height), canvas.width, canvas.height);
}

/** A canvas ref painted with `overlay` (cleared when there is none) whenever `deps` change. */
export function useOverlayCanvas(overlay: ImageData | null | undefined, deps: unknown[]) {
  const canvas = useRef<HTMLCanvasElement>(null);
  useLayoutEffect(() => {
    const el = canvas.current;
    if (!el) return;
    if (!overlay) {
      el.width = 0;
      return;
    }
    el.width = overlay.width;
    el.height = overlay.height;
    el.getContext("2d")!.putImageData(overlay, 0, 0);
  }, deps);
  return canvas;
}

/** Zoom after a zoom key or button (0 fits), from 1x to 4x. */
export const zoomBy = (zoom: number, step: 1 | -1 | 0) => (step === 0 ? 1 : Math.min(4, Math.max(1, zoom + step * 0.5)));

/** Zoom after a mouse-wheel turn. */
export const zoomWheel = (zoom: number, deltaY: number) => Math.min(4, Math.max(1, zoom + (deltaY < 0 ? 0.25 : -0.25)));

export function ViewerTools({
  outlines,
  zoom,
  note,
  hasOverlay,
  click,
}: {
  outlines: boolean;
  zoom: number;
  note: string;
  hasOverlay: boolean;
  click: (action: KeyAction) => (e: MouseEvent) => void;
}) {
  return (
    <div class="viewer-tools" role="toolbar" aria-label="Image">
      <button type="button" aria-pressed={outlines} onClick={click({ kind: "outlines" })} aria-keyshortcuts="V">
        Outlines {outlines ? "on" : "off"} <Kbd k="v" />
      </button>
      <button type="button" onClick={click({ kind: "zoom", step: 1 })} aria-label="Zoom in" aria-keyshortcuts="+">
        Zoom + <Kbd k="+" />
      </button>
      <button type="button" onClick={click({ kind: "zoom", step: -1 })} aria-label="Zoom out" aria-keyshortcuts="-">
        Zoom − <Kbd k="-" />
      </button>
      <button type="button" onClick={click({ kind: "zoom", step: 0 })} aria-keyshortcuts="0">
        Fit <Kbd k="0" />
      </button>
      <span class="muted">
        {Math.round(zoom * 100)} %{outlines && note ? ` · ${note}` : ""}
        {outlines && hasOverlay ? " · yellow: cell, cyan: nucleus" : ""}
      </span>
    </div>
  );
}

/** The cell large, zoomable (wheel, keys), with the outline canvas over it; `placeholder`
 * when there is no cell. */
export function CellViewer({
  viewerRef,
  imgRef,
  canvasRef,
  src,
  alt,
  label,
  testid,
  cellId,
  itemId,
  zoom,
  setZoom,
  outlines,
  placeholder,
}: {
  viewerRef: Ref<HTMLDivElement>;
  imgRef?: Ref<HTMLImageElement>;
  canvasRef: Ref<HTMLCanvasElement>;
  src: string | null;
  alt: string;
  label: string;
  testid: string;
  cellId: number | null;
  itemId: number | null;
  zoom: number;
  setZoom: (update: (z: number) => number) => void;
  outlines: boolean;
  placeholder: ComponentChildren;
}) {
  return (
    <div
      class="viewer"
      ref={viewerRef}
      tabIndex={0}
      role="group"
      aria-label={label}
      data-testid={testid}
      data-cell-id={cellId ?? ""}
      data-item-id={itemId ?? ""}
      onWheel={(e) => {
        if (!src) return;
        e.preventDefault();
        setZoom((z) => zoomWheel(z, e.deltaY));
      }}
    >
      {src ? (
        <div class="stage" style={{ height: `${zoom * 100}%` }}>
          <img ref={imgRef} src={src} alt={alt} data-testid="cell-image" draggable={false} />
          <canvas ref={canvasRef} class="overlay" hidden={!outlines} aria-hidden="true" />
        </div>
      ) : (
        placeholder
      )}
    </div>
  );
}
