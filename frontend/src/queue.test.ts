import { describe, expect, it } from "vitest";
import { ApiError } from "./api";
import { LabelQueue, retryTransient, type QueueApi } from "./queue";
import { fakeItem } from "./testing";
import type { Label, ReviewItem } from "./types";

/** The server's review queue for one user, with or without batch leases. */
class FakeServer implements QueueApi {
  queued: ReviewItem[];
  leased: ReviewItem[] = [];
  labels: { cell: number; code: string }[] = [];
  skipped: number[] = [];
  calls: string[] = [];
  gate: Promise<void> | null = null;
  failSubmit = false;

  constructor(n: number, readonly batch: boolean) {
    this.queued = Array.from({ length: n }, () => fakeItem());
  }

  async lease(count: number): Promise<ReviewItem[]> {
    this.calls.push(`lease ${count}`);
    const want = this.batch ? count : 1;
    while (this.leased.length < want && this.queued.length) this.leased.push(this.queued.shift()!);
    return this.leased.slice(0, want).map((i) => ({ ...i }));
  }

  private take(itemId: number): ReviewItem {
    const item = this.leased.find((i) => i.id === itemId);
    if (!item) throw new ApiError(`Review item ${itemId} is not leased to you`, 409, "lease_lost");
    this.leased = this.leased.filter((i) => i !== item);
    return item;
  }

  async submit(itemId: number, code: string): Promise<Label> {
    this.calls.push(`submit ${itemId} ${code}`);
    if (this.gate) await this.gate;
    if (this.failSubmit) throw new ApiError("Review item is done and leased to someone else", 409, "lease_lost");
    const item = this.take(itemId);
    this.labels.push({ cell: item.cell.id, code });
    return { id: this.labels.length, cell: item.cell.id, code } as Label;
  }

  async skip(itemId: number): Promise<void> {
    this.calls.push(`skip ${itemId}`);
    this.skipped.push(this.take(itemId).id);
  }

  async release(itemId: number): Promise<void> {
    this.queued.unshift(this.take(itemId));
  }

  /** fail this many releaseMany calls with a 503 before answering */
  busyReleases = 0;

  async releaseMany(itemIds: number[]): Promise<unknown> {
    this.calls.push(`releaseMany ${itemIds.join(",")}`);
    if (this.busyReleases > 0) {
      this.busyReleases -= 1;
      throw new ApiError("The database is busy. Try again in a moment.", 503, "database_unavailable");
    }
    const released = this.leased.filter((i) => itemIds.includes(i.id));
    this.leased = this.leased.filter((i) => !itemIds.includes(i.id));
    this.queued.unshift(...released);
    return { released: released.map((i) => i.id) };
  }

  async flag(itemId: number, flagged: boolean): Promise<unknown> {
    this.calls.push(`flag ${itemId} ${flagged}`);
    return {};
  }

  async relabel(cellId: number, code: string): Promise<Label> {
    this.calls.push(`relabel ${cellId} ${code}`);
    this.labels.push({ cell: cellId, code });
    return { id: this.labels.length, cell: cellId, code } as Label;
  }
}

function setup(n: number, batch = true, depth = 2) {
  const server = new FakeServer(n, batch);
  const prepared: number[] = [];
  const errors: string[] = [];
  const queue = new LabelQueue(server, {
    depth,
    prepare: async (item) => prepared.push(item.id),
    onError: (e, doing) => errors.push(`${doing}: ${(e as Error).message}`),
  });
  return { server, queue, prepared, errors };
}

describe("labelling queue with prefetch", () => {
  it("holds the next cells leased and prepared behind the one on screen", async () => {
    const { server, queue, prepared } = setup(10);
    await queue.start();
    const first = queue.snapshot();
    expect(first.shown?.id).toBe(server.leased[0].id);
    expect(first.prefetched).toBe(2);
    expect(prepared).toHaveLength(3);
    expect(server.calls).toEqual(["lease 3"]);
  });

  it("shows the next cell at once, before the server has answered the submit", async () => {
    const { server, queue } = setup(10);
    await queue.start();
    const [a, b] = server.leased;
    let open!: () => void;
    server.gate = new Promise((r) => (open = r));
    expect(queue.label("LY")).toBe(true);
    expect(queue.snapshot().shown?.id).toBe(b.id); // synchronous
    expect(server.labels).toEqual([]);
    open();
    server.gate = null;
    await queue.idle();
    expect(server.labels).toEqual([{ cell: a.cell.id, code: "LY" }]);
    expect(queue.snapshot().prefetched).toBe(2); // refilled
    expect(queue.snapshot().labelled).toBe(1);
  });

  it("labels, skips and flags in the order the keys were pressed", async () => {
    const { server, queue } = setup(10);
    await queue.start();
    const ids = server.leased.map((i) => i.id);
    queue.flag();
    queue.label("NE");
    queue.skip();
    queue.accept(); // the model's suggestion: NE
    await queue.idle();
    expect(server.calls.filter((c) => !c.startsWith("lease"))).toEqual([
      `flag ${ids[0]} true`,
      `submit ${ids[0]} NE`,
      `skip ${ids[1]}`,
      `submit ${ids[2]} NE`,
    ]);
    expect(server.skipped).toEqual([ids[1]]);
    expect(queue.snapshot().labelled).toBe(2);
  });

  it("undo re-opens the last labelled cell; the next key supersedes its label", async () => {
    const { server, queue } = setup(10);
    await queue.start();
    const a = queue.snapshot().shown!;
    queue.label("NE");
    const b = queue.snapshot().shown!;
    expect(queue.undo()).toBe(true);
    let s = queue.snapshot();
    expect(s.shown?.id).toBe(a.id);
    expect(s.correcting?.code).toBe("NE");
    queue.skip(); // not while undoing
    queue.label("LY");
    s = queue.snapshot();
    expect(s.shown?.id).toBe(b.id); // back where we were
    await queue.idle();
    expect(server.labels).toEqual([
      { cell: a.cell.id, code: "NE" },
      { cell: a.cell.id, code: "LY" },
    ]);
    expect(s.history.map((h) => [h.item.id, h.code, h.corrected])).toEqual([[a.id, "LY", "NE"]]);
    expect(s.labelled).toBe(1);
  });

  it("undo steps back several labels; Esc keeps a label as it was", async () => {
    const { server, queue } = setup(10);
    await queue.start();
    const a = queue.snapshot().shown!;
    queue.label("NE");
    const b = queue.snapshot().shown!;
    queue.label("MO");
    queue.undo();
    queue.undo();
    expect(queue.snapshot().shown?.id).toBe(a.id);
    expect(queue.cancel()).toBe(true); // keep a = NE
    expect(queue.snapshot().shown?.id).toBe(b.id);
    queue.label("EO"); // correct b
    await queue.idle();
    expect(server.calls.filter((c) => c.startsWith("relabel"))).toEqual([`relabel ${b.cell.id} EO`]);
    expect(queue.undo()).toBe(true);
    expect(queue.undo()).toBe(true);
    expect(queue.undo()).toBe(false); // nothing left to undo
  });

  it("works against a server without batch leases, one cell at a time", async () => {
    const { server, queue } = setup(3, false);
    await queue.start();
    expect(queue.snapshot().prefetched).toBe(0);
    queue.label("NE");
    expect(queue.snapshot().loading).toBe(true);
    await queue.idle();
    expect(queue.snapshot().shown).not.toBeNull();
    queue.label("LY");
    await queue.idle();
    queue.label("MO");
    await queue.idle();
    expect(server.labels.map((l) => l.code)).toEqual(["NE", "LY", "MO"]);
    expect(queue.snapshot().empty).toBe(true);
  });

  it("says when the queue is empty and looks again when poked", async () => {
    const { server, queue } = setup(0);
    await queue.start();
    expect(queue.snapshot().empty).toBe(true);
    server.queued.push(fakeItem());
    queue.poke();
    await queue.idle();
    expect(queue.snapshot().shown).not.toBeNull();
  });

  it("reports a failed submit and does not count the label", async () => {
    const { server, queue, errors } = setup(5);
    await queue.start();
    server.failSubmit = true;
    queue.label("NE");
    await queue.idle();
    expect(errors[0]).toMatch(/^labelling cell \d+ as NE: Review item is done/);
    expect(queue.snapshot().labelled).toBe(0);
    expect(queue.snapshot().history).toEqual([]);
  });

  it("knows which leases to give back when the page is left", async () => {
    const { server, queue } = setup(10);
    await queue.start();
    expect(queue.heldItemIds()).toEqual(server.leased.map((i) => i.id));
  });

  it("gives back every lease in one call when the screen is left, once", async () => {
    const { server, queue } = setup(10);
    await queue.start();
    queue.label("NE");
    await queue.idle();
    const held = queue.heldItemIds();
    expect(held.length).toBe(3);
    await queue.leave();
    await queue.leave(); // pagehide and unmount both leave: one call
    expect(server.calls.filter((c) => c.startsWith("releaseMany"))).toEqual([`releaseMany ${held.join(",")}`]);
    expect(server.leased).toEqual([]);
  });

  it("retries the give-back while the server is busy, and reports when it gives up", async () => {
    const { server, queue, errors } = setup(10);
    await queue.start();
    server.busyReleases = 2;
    await queue.leave({ sleep: async () => undefined });
    expect(server.calls.filter((c) => c.startsWith("releaseMany")).length).toBe(3);
    expect(server.leased).toEqual([]);
    expect(errors).toEqual([]);

    const other = setup(10);
    await other.queue.start();
    other.server.busyReleases = 9;
    await other.queue.leave({ attempts: 3, sleep: async () => undefined });
    expect(other.server.calls.filter((c) => c.startsWith("releaseMany")).length).toBe(3);
    expect(other.errors[0]).toMatch(/^giving back 3 cell\(s\) to the queue: The database is busy/);
  });

  it("gives back the cells a lease in flight brings after the screen was left", async () => {
    const { server, queue } = setup(10);
    await queue.start();
    let open!: () => void;
    server.gate = new Promise<void>((resolve) => (open = resolve));
    queue.label("NE"); // the submit waits at the gate; the refill lease runs after it
    const leaving = queue.leave();
    open();
    await leaving;
    await queue.idle();
    expect(server.leased).toEqual([]);
    expect(server.calls.filter((c) => c.startsWith("lease")).length).toBe(1); // none after leaving
  });

  it("does not retry an answer that will not change (a refused call)", async () => {
    let calls = 0;
    const refused = new ApiError("Your role may not do this.", 403, "permission_denied");
    await expect(
      retryTransient(async () => {
        calls += 1;
        throw refused;
      }, { sleep: async () => undefined }),
    ).rejects.toBe(refused);
    expect(calls).toBe(1);
  });
});
