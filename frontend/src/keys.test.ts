import { describe, expect, it } from "vitest";
import { buildKeyMap, COMMAND_KEYS, isTypingTarget, keyAction, KeyMapError } from "./keys";
import { realTaxonomy } from "./testing";

const { classes, reserved } = realTaxonomy();

describe("key mapping", () => {
  it("reads all 14 classes of the taxonomy, each with its own key", () => {
    expect(classes).toHaveLength(14);
    const map = buildKeyMap(classes);
    expect(map.byKey.size).toBe(14);
    for (const cls of classes) {
      expect(keyAction({ key: cls.key }, map)).toEqual({ kind: "label", code: cls.code });
      expect(map.byCode.get(cls.code)).toBe(cls.key);
    }
  });

  it("gives the keys the taxonomy reserves their commands", () => {
    const map = buildKeyMap(classes);
    expect(reserved.sort()).toEqual(["Backspace", "Enter", "Escape", "f", "s", "v"]);
    for (const key of reserved) expect(COMMAND_KEYS[key]).toBeDefined();
    expect(keyAction({ key: "Enter" }, map)).toEqual({ kind: "accept" });
    expect(keyAction({ key: "Backspace" }, map)).toEqual({ kind: "undo" });
    expect(keyAction({ key: "s" }, map)).toEqual({ kind: "skip" });
    expect(keyAction({ key: "f" }, map)).toEqual({ kind: "flag" });
    expect(keyAction({ key: "Escape" }, map)).toEqual({ kind: "cancel" });
  });

  it("ignores Shift and caps lock for letters but leaves browser shortcuts alone", () => {
    const map = buildKeyMap(classes);
    expect(keyAction({ key: "N" }, map)).toEqual({ kind: "label", code: "NE" });
    expect(keyAction({ key: "n", ctrlKey: true }, map)).toBeNull();
    expect(keyAction({ key: "r", metaKey: true }, map)).toBeNull();
    expect(keyAction({ key: "l", altKey: true }, map)).toBeNull();
    expect(keyAction({ key: "Tab" }, map)).toBeNull();
    expect(keyAction({ key: "q" }, map)).toBeNull();
  });

  it("refuses a taxonomy whose keys collide with each other or with a command", () => {
    const ne = classes[0];
    expect(() => buildKeyMap([ne, { ...classes[1], key: ne.key }])).toThrow(KeyMapError);
    expect(() => buildKeyMap([{ ...ne, key: "s" }])).toThrow(/reserves/);
    expect(() => buildKeyMap([{ ...ne, key: "v" }])).toThrow(/reserves/);
    expect(() => buildKeyMap([{ ...ne, key: "nn" }])).toThrow(/one character/);
  });

  it("treats text fields as typing, buttons and checkboxes not", () => {
    const el = (tagName: string, type?: string) => ({ tagName, type, isContentEditable: false }) as unknown as EventTarget;
    expect(isTypingTarget(el("INPUT", "text"))).toBe(true);
    expect(isTypingTarget(el("INPUT", "number"))).toBe(true);
    expect(isTypingTarget(el("TEXTAREA"))).toBe(true);
    expect(isTypingTarget(el("SELECT"))).toBe(true);
    expect(isTypingTarget(el("INPUT", "checkbox"))).toBe(false);
    expect(isTypingTarget(el("BUTTON"))).toBe(false);
    expect(isTypingTarget(null)).toBe(false);
  });
});
