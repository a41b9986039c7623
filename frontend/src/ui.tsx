// Shared UI pieces: the boot data, the message area (errors are shown, never swallowed),
// a confirmation dialog, and small hooks.
import { useEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { describeError } from "./api";
import type { Boot } from "./types";

export function readBoot(): Boot {
  const el = document.getElementById("wbc-boot");
  if (!el?.textContent) throw new Error("The page has no boot data (wbc-boot); reload it.");
  return JSON.parse(el.textContent) as Boot;
}

export const roles = {
  isAdmin: (b: Boot) => b.user.roles.includes("admin"),
  canLabel: (b: Boot) =>
    b.user.roles.includes("admin") ||
    b.user.roles.includes("hematologist") ||
    b.user.roles.includes("senior_hematologist"),
  /** Settles disagreements between independent reads (the API's ADJUDICATORS). */
  canAdjudicate: (b: Boot) => b.user.roles.includes("admin") || b.user.roles.includes("senior_hematologist"),
};

// --- messages ------------------------------------------------------------------------

export interface Message {
  id: number;
  kind: "error" | "info";
  text: string;
}

let messages: Message[] = [];
let nextId = 1;
const listeners = new Set<() => void>();

function emit(): void {
  for (const l of listeners) l();
}

export function showError(error: unknown, doing?: string): void {
  const text = describeError(error);
  messages = [...messages.slice(-4), { id: nextId++, kind: "error", text: doing ? `Error while ${doing}: ${text}` : text }];
  console.error(doing ?? "error", error);
  emit();
}

export function showInfo(text: string): void {
  messages = [...messages.slice(-4), { id: nextId++, kind: "info", text }];
  emit();
}

export function dismiss(id: number): void {
  messages = messages.filter((m) => m.id !== id);
  emit();
}

export function Messages() {
  const [, force] = useState(0);
  useEffect(() => {
    const l = () => force((n) => n + 1);
    listeners.add(l);
    return () => listeners.delete(l);
  }, []);
  return (
    <div class="messages">
      <div role="alert" aria-live="assertive">
        {messages.filter((m) => m.kind === "error").map((m) => (
          <p class="message error" key={m.id} data-testid="error">
            <span class="tag">Error</span> {m.text}{" "}
            <button type="button" class="link" onClick={() => dismiss(m.id)} aria-label="Dismiss this message">
              Dismiss
            </button>
          </p>
        ))}
      </div>
      <div role="status" aria-live="polite">
        {messages.filter((m) => m.kind === "info").map((m) => (
          <p class="message info" key={m.id}>
            {m.text}{" "}
            <button type="button" class="link" onClick={() => dismiss(m.id)} aria-label="Dismiss this message">
              Dismiss
            </button>
          </p>
        ))}
      </div>
    </div>
  );
}

// --- confirmation ---------------------------------------------------------------------

interface ConfirmRequest {
  title: string;
  body: ComponentChildren;
  confirm: string;
  danger?: boolean;
  resolve: (ok: boolean) => void;
}

let pendingConfirm: ConfirmRequest | null = null;
const confirmListeners = new Set<() => void>();

/** An accessible modal (the native <dialog>); resolves true when confirmed. */
export function confirmAction(title: string, body: ComponentChildren, confirm: string, danger = false): Promise<boolean> {
  return new Promise((resolve) => {
    pendingConfirm = { title, body, confirm, danger, resolve };
    for (const l of confirmListeners) l();
  });
}

export function ConfirmDialog() {
  const ref = useRef<HTMLDialogElement>(null);
  const [, force] = useState(0);
  useEffect(() => {
    const l = () => force((n) => n + 1);
    confirmListeners.add(l);
    return () => confirmListeners.delete(l);
  }, []);
  useEffect(() => {
    const d = ref.current;
    if (d && pendingConfirm && !d.open) d.showModal();
  });
  const close = (ok: boolean) => {
    const req = pendingConfirm;
    pendingConfirm = null;
    ref.current?.close();
    force((n) => n + 1);
    req?.resolve(ok);
  };
  const req = pendingConfirm;
  return (
    <dialog ref={ref} class="confirm" aria-labelledby="confirm-title" onCancel={(e) => { e.preventDefault(); close(false); }}>
      {req && (
        <form method="dialog" onSubmit={(e) => { e.preventDefault(); close(true); }}>
          <h2 id="confirm-title">{req.title}</h2>
          <div>{req.body}</div>
          <div class="actions">
            <button type="button" onClick={() => close(false)}>Cancel</button>
            <button type="submit" class={req.danger ? "danger" : "primary"} autofocus>
              {req.confirm}
            </button>
          </div>
        </form>
      )}
    </dialog>
  );
}

export function dialogOpen(): boolean {
  return pendingConfirm !== null;
}

// --- hooks -----------------------------------------------------------------------------

/** Load data once (and again when `deps` change); errors go to the message area. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[], doing: string): [T | null, () => void, boolean] {
  const [data, setData] = useState<T | null>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let live = true;
    setLoading(true);
    load()
      .then((d) => live && setData(d))
      .catch((e) => live && showError(e, doing))
      .finally(() => live && setLoading(false));
    return () => {
      live = false;
    };
  }, [...deps, tick]);
  return [data, () => setTick((t) => t + 1), loading];
}

export function Kbd({ k }: { k: string }) {
  return <kbd>{k.length === 1 ? k.toUpperCase() : k}</kbd>;
}
