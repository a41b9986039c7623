// Keyboard mapping for the labelling and review screens. Class keys come from the server
// (mlworker/taxonomy.py through the page's boot JSON); this module only adds the
// commands and refuses a taxonomy whose keys would collide with them.
import { useEffect, useRef } from "preact/hooks";
import type { CellClass } from "./types";
import { dialogOpen } from "./ui";

export type KeyAction =
  | { kind: "label"; code: string }
  | { kind: "accept" }
  | { kind: "undo" }
  | { kind: "skip" }
  | { kind: "flag" }
  | { kind: "cancel" }
  | { kind: "outlines" }
  | { kind: "zoom"; step: 1 | -1 | 0 };

/** Commands of the labelling screen besides the class keys. Enter, Backspace, s and f
 * are the ones the taxonomy reserves; the rest are not letters a class can take, except
 * "v" (checked against the taxonomy in buildKeyMap). */
export const COMMAND_KEYS: Record<string, KeyAction> = {
  Enter: { kind: "accept" },
  Backspace: { kind: "undo" },
  s: { kind: "skip" },
  f: { kind: "flag" },
  Escape: { kind: "cancel" },
  v: { kind: "outlines" },
  "+": { kind: "zoom", step: 1 },
  "=": { kind: "zoom", step: 1 },
  "-": { kind: "zoom", step: -1 },
  "0": { kind: "zoom", step: 0 },
};

export interface KeyMap {
  /** key (lower case) -> 14-Diff code */
  byKey: Map<string, string>;
  /** 14-Diff code -> key */
  byCode: Map<string, string>;
}

export class KeyMapError extends Error {}

export function buildKeyMap(classes: CellClass[]): KeyMap {
  const byKey = new Map<string, string>();
  const byCode = new Map<string, string>();
  for (const cls of classes) {
    const key = cls.key.toLowerCase();
    if (key.length !== 1) {
      throw new KeyMapError(`Class ${cls.code} has key ${JSON.stringify(cls.key)}; keys must be one character.`);
    }
    if (key in COMMAND_KEYS) {
      throw new KeyMapError(`Class ${cls.code} uses key "${key}", which the labelling screen reserves for a command.`);
    }
    const taken = byKey.get(key);
    if (taken !== undefined) {
      throw new KeyMapError(`Classes ${taken} and ${cls.code} share the key "${key}".`);
    }
    byKey.set(key, cls.code);
    byCode.set(cls.code, key);
  }
  return { byKey, byCode };
}

export interface KeyInput {
  key: string;
  ctrlKey?: boolean;
  metaKey?: boolean;
  altKey?: boolean;
}

/** What a key press means, or null when the screen should leave it alone (modifier
 * shortcuts of the browser, keys nobody uses). Caps lock and Shift do not matter for
 * letters. */
export function keyAction(event: KeyInput, map: KeyMap): KeyAction | null {
  if (event.ctrlKey || event.metaKey || event.altKey) return null;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const code = map.byKey.get(key);
  if (code !== undefined) return { kind: "label", code };
  return COMMAND_KEYS[key] ?? null;
}

/** True when the key press belongs to a form field (typing a filter, a threshold). */
export function isTypingTarget(target: EventTarget | null): boolean {
  if (!target || typeof (target as Element).tagName !== "string") return false;
  const el = target as HTMLElement;
  const tag = el.tagName.toLowerCase();
  if (tag === "textarea" || tag === "select" || el.isContentEditable) return true;
  if (tag !== "input") return false;
  const type = ((el as HTMLInputElement).type || "text").toLowerCase();
  return !["button", "checkbox", "radio", "submit", "reset", "file", "range"].includes(type);
}

/** A screen's keyboard: while it is mounted, a key press that means one of `kinds` (all
 * of them when omitted) goes to `perform`, the latest one rendered. Left alone: presses
 * while a dialog is open or in a form field, and Enter on a focused control, which
 * activates it. */
export function useKeyActions(
  keymap: KeyMap | Error,
  perform: (action: KeyAction, event: KeyboardEvent) => void,
  kinds?: readonly KeyAction["kind"][],
): void {
  const latest = useRef(perform);
  latest.current = perform;
  useEffect(() => {
    if (keymap instanceof Error) return;
    const onKey = (e: KeyboardEvent) => {
      if (dialogOpen() || isTypingTarget(e.target)) return;
      const action = keyAction(e, keymap);
      if (!action || (kinds && !kinds.includes(action.kind))) return;
      const onControl = (e.target as HTMLElement | null)?.closest?.("button, a, summary, select");
      if (action.kind === "accept" && onControl) return;
      e.preventDefault();
      latest.current(action, e);
    };
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, []);
}

/** The key shown on screen for a key name. */
export function keyLabel(key: string): string {
  const names: Record<string, string> = { Enter: "Enter", Backspace: "⌫ Backspace", Escape: "Esc" };
  return names[key] ?? key.toUpperCase();
}
