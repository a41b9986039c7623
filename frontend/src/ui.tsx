// Shared UI pieces: the boot data, the message area (errors are shown, never swallowed),
// a confirmation dialog, and small hooks.
import { useEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { describeError } from "./api";
import { failedRequest, requestSucceeded } from "./api/http";
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
  /** Exports the labelled dataset (the API's EXPORTERS). */
  canExport: (b: Boot) => b.user.roles.includes("admin") || b.user.roles.includes("data_scientist"),
};

/** The screen a user lands on: hematologists the labelling screen; everyone else (admins
 * included, who may label but mostly do not) the cases, so that nobody leases cells from
 * the queue without having opened the labelling screen. */
export function landingScreen(b: Boot): "label" | "cases" {
  return roles.canLabel(b) && !roles.isAdmin(b) ? "label" : "cases";
}

// --- messages ------------------------------------------------------------------------
//
// One message area for the whole page. An error names the action it came from (`doing`,
// e.g. "saving the routing settings"); the same action failing again replaces it, and
// the same action succeeding later clears it: the same API call answering without an
// error (api/http.ts requestKey), showInfo(text, doing), actionDone(doing), or a useLoad
// that loads again. Errors stay until then or until dismissed.
// Success messages do not pile up: a new one replaces the last, and each expires.

/** How long a success message stays on screen. */
export const INFO_TTL_MS = 6000;
/** At most this many errors are shown; older ones give way. */
export const MAX_ERRORS = 4;

export interface Message {
  id: number;
  kind: "error" | "info";
  text: string;
  /** the action the message is about (the `doing` of showError) */
  action?: string;
  /** the API call that failed (http.ts requestKey), when the error came from one */
  request?: string;
}

/** The message list, with no DOM: the rules above, testable on their own. */
export class MessageStore {
  messages: Message[] = [];
  private nextId = 1;
  private timers = new Map<number, ReturnType<typeof setTimeout>>();

  constructor(
    private onChange: () => void = () => undefined,
    private ttlMs: number = INFO_TTL_MS,
  ) {}

  error(text: string, action?: string, request?: string): Message {
    const same = (m: Message) => m.kind === "error" && (action ? m.action === action : !m.action && m.text === text);
    const errors = this.messages.filter((m) => m.kind === "error" && !same(m));
    const message: Message = { id: this.nextId++, kind: "error", text, action, request };
    const kept = [...errors.slice(-(MAX_ERRORS - 1)), message];
    this.messages = [...kept, ...this.messages.filter((m) => m.kind === "info")];
    this.onChange();
    return message;
  }

  info(text: string, action?: string): Message {
    for (const m of this.messages) if (m.kind === "info") this.clearTimer(m.id);
    const message: Message = { id: this.nextId++, kind: "info", text, action };
    this.messages = [...this.messages.filter((m) => m.kind === "error" && !(action && m.action === action)), message];
    this.timers.set(
      message.id,
      setTimeout(() => this.dismiss(message.id), this.ttlMs),
    );
    this.onChange();
    return message;
  }

  /** `action` succeeded: its error, if one is shown, is out of date. */
  done(action: string): void {
    this.drop((m) => m.action === action);
  }

  /** The API call `request` (http.ts requestKey) succeeded: so did the action that failed
   * with it, e.g. saving the same settings again, now with valid values. */
  requestDone(request: string): void {
    this.drop((m) => m.request === request);
  }

  private drop(stale: (m: Message) => boolean): void {
    if (!this.messages.some((m) => m.kind === "error" && stale(m))) return;
    this.messages = this.messages.filter((m) => !(m.kind === "error" && stale(m)));
    this.onChange();
  }

  dismiss(id: number): void {
    this.clearTimer(id);
    if (!this.messages.some((m) => m.id === id)) return;
    this.messages = this.messages.filter((m) => m.id !== id);
    this.onChange();
  }

  private clearTimer(id: number): void {
    const timer = this.timers.get(id);
    if (timer !== undefined) clearTimeout(timer);
    this.timers.delete(id);
  }
}

const listeners = new Set<() => void>();
const store = new MessageStore(() => {
  for (const l of listeners) l();
});
requestSucceeded.add((key) => store.requestDone(key));

export function showError(error: unknown, doing?: string): void {
  const text = describeError(error);
  store.error(doing ? `Error while ${doing}: ${text}` : text, doing, failedRequest(error));
  console.error(doing ?? "error", error);
}

/** A success message; with `doing`, it also clears that action's earlier error. */
export function showInfo(text: string, doing?: string): void {
  store.info(text, doing);
}

/** `doing` succeeded without anything to say (a reload, a retried call). */
export function actionDone(doing: string): void {
  store.done(doing);
}

export function dismiss(id: number): void {
  store.dismiss(id);
}

export function Messages() {
  const [, force] = useState(0);
  useEffect(() => {
    const l = () => force((n) => n + 1);
    listeners.add(l);
    return () => listeners.delete(l);
  }, []);
  const messages = store.messages;
  return (
    <div class="messages" data-testid="messages">
      <div role="alert" aria-live="assertive">
        {messages.filter((m) => m.kind === "error").map((m) => (
          <p class="message error" key={m.id} data-testid="error" data-action={m.action ?? ""}>
            <span class="tag">Error</span> {m.text}{" "}
            <button type="button" class="link" onClick={() => dismiss(m.id)} aria-label="Dismiss this message">
              Dismiss
            </button>
          </p>
        ))}
      </div>
      <div role="status" aria-live="polite">
        {messages.filter((m) => m.kind === "info").map((m) => (
          <p class="message info" key={m.id} data-testid="info">
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
      .then((d) => {
        actionDone(doing); // loaded this time: an earlier failure to load is out of date
        if (live) setData(d);
      })
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
