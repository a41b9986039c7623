import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { requestKey } from "./api/http";
import { INFO_TTL_MS, MAX_ERRORS, MessageStore, landingScreen } from "./ui";
import { realTaxonomy } from "./testing";
import type { Boot } from "./types";

const texts = (s: MessageStore, kind: "error" | "info") => s.messages.filter((m) => m.kind === kind).map((m) => m.text);

describe("the message area", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("clears an action's error when the same action later succeeds, and only that one", () => {
    const s = new MessageStore();
    s.error("Error while saving the routing settings: out of range", "saving the routing settings");
    s.error("Error while importing: not an image", "importing");
    s.info("Routing settings saved.", "saving the routing settings");
    expect(texts(s, "error")).toEqual(["Error while importing: not an image"]);
    expect(texts(s, "info")).toEqual(["Routing settings saved."]);
    s.done("importing");
    expect(texts(s, "error")).toEqual([]);
  });

  it("clears an error when the API call that failed later succeeds", () => {
    const s = new MessageStore();
    s.error("Error while saving: 7 is out of range", "saving", requestKey("PATCH", "/api/routing-config/"));
    s.error("Error while reading the counts: offline", "reading the counts", requestKey("GET", "/api/queue/counts/"));
    s.requestDone(requestKey("PATCH", "http://127.0.0.1:8000/api/routing-config/?x=1"));
    expect(texts(s, "error")).toEqual(["Error while reading the counts: offline"]);
  });

  it("replaces an action's earlier error instead of piling errors up", () => {
    const s = new MessageStore();
    s.error("Error while saving: 7", "saving");
    s.error("Error while saving: 8", "saving");
    s.error("Choose a file first.");
    s.error("Choose a file first.");
    expect(texts(s, "error")).toEqual(["Error while saving: 8", "Choose a file first."]);
    for (let i = 0; i < 10; i++) s.error(`problem ${i}`, `action ${i}`);
    expect(texts(s, "error")).toHaveLength(MAX_ERRORS);
    expect(texts(s, "error").at(-1)).toBe("problem 9");
  });

  it("shows one success message at a time, and each one expires", () => {
    const changes = vi.fn();
    const s = new MessageStore(changes);
    s.info("Job 1 queued.");
    vi.advanceTimersByTime(INFO_TTL_MS / 2);
    s.info("Job 2 queued.");
    expect(texts(s, "info")).toEqual(["Job 2 queued."]);
    vi.advanceTimersByTime(INFO_TTL_MS / 2 + 1);
    expect(texts(s, "info")).toEqual(["Job 2 queued."]); // the first one's timer is gone
    vi.advanceTimersByTime(INFO_TTL_MS / 2);
    expect(s.messages).toEqual([]);
    expect(changes).toHaveBeenCalled();
  });

  it("keeps errors until dismissed: they do not expire", () => {
    const s = new MessageStore();
    const m = s.error("The server could not be reached.", "loading");
    vi.advanceTimersByTime(10 * INFO_TTL_MS);
    expect(texts(s, "error")).toHaveLength(1);
    s.dismiss(m.id);
    expect(s.messages).toEqual([]);
  });
});

describe("requestKey", () => {
  it("names a call by its method and path, without host or query", () => {
    expect(requestKey("get", "/api/cases/?limit=500")).toBe("GET /api/cases/");
    expect(requestKey("POST", "https://lab.example/api/queue/next/")).toBe("POST /api/queue/next/");
  });
});

describe("landing screen", () => {
  const boot = (roles: string[]): Boot =>
    ({ user: { username: "u", roles }, taxonomy: realTaxonomy().classes }) as unknown as Boot;

  it("puts hematologists on the labelling screen and admins, who also may label, on the cases", () => {
    expect(landingScreen(boot(["hematologist"]))).toBe("label");
    expect(landingScreen(boot(["senior_hematologist"]))).toBe("label");
    expect(landingScreen(boot(["admin"]))).toBe("cases");
    expect(landingScreen(boot(["admin", "hematologist"]))).toBe("cases");
    expect(landingScreen(boot(["data_scientist"]))).toBe("cases");
    expect(landingScreen(boot([]))).toBe("cases");
  });
});
