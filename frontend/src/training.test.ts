import { describe, expect, it } from "vitest";
import { laterOf } from "./training";

describe("a training job heard about from several sources", () => {
  it("takes the newer state: progress while running, then the end", () => {
    const queued = { id: 1, status: "queued" as const, progress: {} };
    const running = laterOf(queued, { status: "running", progress: { stage: "training", percent: 40 } });
    expect(running).toMatchObject({ id: 1, status: "running", progress: { percent: 40 } });
    expect(laterOf(running, { status: "succeeded", progress: { percent: 100 } }).status).toBe("succeeded");
  });

  it("never goes back to queued after the job ran or ended", () => {
    const done = { id: 1, status: "succeeded" as const, progress: { percent: 100 } };
    expect(laterOf(done, { status: "queued", progress: {} })).toBe(done);
    const running = { id: 1, status: "running" as const, progress: { percent: 5 } };
    expect(laterOf(running, { status: "queued", progress: {} })).toBe(running);
    expect(laterOf(running, undefined)).toBe(running);
  });
});
