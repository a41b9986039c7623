// The labelling queue on the client: the cell on screen, the prefetched cells behind it,
// the session's labels (for undo) and the API calls, run one at a time in order.
//
// A key press changes what is on screen at once (the next cell is already leased and its
// image decoded); the submit and the refill run behind it. Labels are append-only on the
// server, so "undo" re-opens the last labelled cell: the next class key gives it a new
// label that supersedes the undone one (its history keeps both), Esc keeps the old one.
import type { Label, ReviewItem } from "./types";

export interface QueueApi {
  /** Lease up to `count` items: the caller's open leases first, then new ones. A server
   * without batch leases returns at most one (the current lease). */
  lease(count: number): Promise<ReviewItem[]>;
  submit(itemId: number, code: string): Promise<Label>;
  skip(itemId: number): Promise<void>;
  release(itemId: number): Promise<void>;
  /** Give back several leases in one call; ids the caller no longer holds are ignored. */
  releaseMany(itemIds: number[]): Promise<unknown>;
  flag(itemId: number, flagged: boolean): Promise<unknown>;
  relabel(cellId: number, code: string): Promise<Label>;
}

export interface SessionLabel {
  item: ReviewItem;
  code: string;
  /** the label the undo replaced, when this entry is a correction */
  corrected?: string;
}

export interface QueueSnapshot {
  /** the cell on screen: a correction target while undoing, else the current lease */
  shown: ReviewItem | null;
  correcting: SessionLabel | null;
  loading: boolean;
  empty: boolean;
  labelled: number;
  prefetched: number;
  busy: number;
  history: SessionLabel[];
}

export interface QueueOptions {
  /** how many cells to hold ready behind the one on screen */
  depth?: number;
  /** warm the browser's caches for an item (image, mask, detail); errors are ignored */
  prepare?: (item: ReviewItem) => Promise<unknown>;
  onChange?: () => void;
  onError?: (error: unknown, doing: string) => void;
}

export class LabelQueue {
  private current: ReviewItem | null = null;
  private buffer: ReviewItem[] = [];
  private closed = new Set<number>();
  private history: SessionLabel[] = [];
  private undoStack: SessionLabel[] = [];
  private labelledCells = new Set<number>();
  private chain: Promise<unknown> = Promise.resolve();
  private busy = 0;
  private refillQueued = false;
  private exhausted = false;
  private started = false;
  private left = false;
  readonly depth: number;

  constructor(
    private api: QueueApi,
    private options: QueueOptions = {},
  ) {
    this.depth = options.depth ?? 2;
  }

  /** Take the first cells. */
  start(): Promise<unknown> {
    this.started = true;
    this.refill();
    return this.idle();
  }

  /** Resolves once every queued API call has finished. */
  idle(): Promise<unknown> {
    return this.chain;
  }

  snapshot(): QueueSnapshot {
    const correcting = this.undoStack[this.undoStack.length - 1] ?? null;
    return {
      shown: correcting ? correcting.item : this.current,
      correcting,
      loading: this.started && !correcting && this.current === null && !this.exhausted,
      empty: !correcting && this.current === null && this.exhausted,
      labelled: this.labelledCells.size,
      prefetched: this.buffer.length,
      busy: this.busy,
      history: [...this.history],
    };
  }

  /** Label the cell on screen with a 14-Diff code and show the next one. */
  label(code: string): boolean {
    const target = this.undoStack.pop();
    if (target) {
      const entry: SessionLabel = { item: target.item, code, corrected: target.code };
      this.history.push(entry);
      this.changed();
      this.run(`correcting the label of cell ${target.item.cell.id}`, async () => {
        try {
          await this.api.relabel(target.item.cell.id, code);
        } catch (error) {
          entry.code = target.code; // the server kept the old label
          entry.corrected = undefined;
          throw error;
        }
      });
      return true;
    }
    const item = this.current;
    if (!item) return false;
    const entry: SessionLabel = { item, code };
    this.closed.add(item.id);
    this.history.push(entry);
    this.labelledCells.add(item.cell.id);
    this.advance();
    this.run(`labelling cell ${item.cell.id} as ${code}`, async () => {
      try {
        await this.api.submit(item.id, code);
      } catch (error) {
        this.history = this.history.filter((e) => e !== entry);
        this.labelledCells.delete(item.cell.id);
        throw error;
      }
    });
    this.refill();
    return true;
  }

  /** Enter: the model's top suggestion for the cell on screen. */
  accept(): string | null {
    const shown = this.snapshot().shown;
    const code = shown?.suggestion?.top_code ?? shown?.cell.prediction?.top_code ?? null;
    if (!code) return null;
    this.label(code);
    return code;
  }

  /** Backspace: re-open the last labelled cell of this session. */
  undo(): boolean {
    const last = this.history.pop();
    if (!last) return false;
    this.undoStack.push(last);
    this.changed();
    return true;
  }

  /** Esc while undoing: keep the label the cell had. */
  cancel(): boolean {
    const target = this.undoStack.pop();
    if (!target) return false;
    this.history.push(target);
    this.changed();
    return true;
  }

  /** S: back to the queue for someone else; show the next cell. */
  skip(): boolean {
    if (this.undoStack.length) return false;
    const item = this.current;
    if (!item) return false;
    this.closed.add(item.id);
    this.advance();
    this.run(`skipping cell ${item.cell.id}`, () => this.api.skip(item.id));
    this.refill();
    return true;
  }

  /** F: flag (or unflag) the cell on screen for discussion; it stays on screen. */
  flag(): boolean {
    if (this.undoStack.length) return false;
    const item = this.current;
    if (!item) return false;
    const flagged = !item.flagged;
    item.flagged = flagged;
    this.changed();
    this.run(`flagging cell ${item.cell.id}`, async () => {
      try {
        await this.api.flag(item.id, flagged);
      } catch (error) {
        item.flagged = !flagged;
        throw error;
      }
    });
    return true;
  }

  /** Look again (e.g. the websocket says new cells arrived while the queue was empty). */
  poke(): void {
    if (this.exhausted || this.buffer.length < this.depth) {
      this.exhausted = false;
      this.refill();
    }
  }

  /** Leases this page holds and has not finished: to release when the page is left. */
  heldItemIds(): number[] {
    return [this.current, ...this.buffer].filter((i): i is ReviewItem => i !== null).map((i) => i.id);
  }

  /** The screen is left: give back every lease it holds, in one call, retried while the
   * server is busy (on SQLite one writer at a time). No lease is taken after this, and
   * cells a lease request in flight brings back later are given back as they arrive,
   * so nothing stays "being labelled" for the lease time. Runs once; resolves when the
   * server has answered (or the retries are spent). */
  leave(retry: RetryOptions = {}): Promise<void> {
    if (this.left) return Promise.resolve();
    this.left = true;
    return this.giveBack(this.heldItemIds(), retry);
  }

  private async giveBack(ids: number[], retry: RetryOptions = {}): Promise<void> {
    if (!ids.length) return;
    try {
      await retryTransient(() => this.api.releaseMany(ids), retry);
    } catch (error) {
      this.options.onError?.(error, `giving back ${ids.length} cell(s) to the queue`);
    }
  }

  // --- internals ---------------------------------------------------------------------

  private advance(): void {
    this.current = this.buffer.shift() ?? null;
    this.changed();
  }

  private refill(): void {
    if (this.refillQueued || this.left) return;
    this.refillQueued = true;
    this.run("taking the next cells from the queue", async () => {
      this.refillQueued = false;
      if (this.left) return;
      const items = await this.api.lease(this.depth + 1);
      if (this.left) return this.giveBack(items.map((i) => i.id));
      this.merge(items);
    });
  }

  private merge(items: ReviewItem[]): void {
    let added = 0;
    for (const item of items) {
      if (this.closed.has(item.id)) continue;
      if (this.current?.id === item.id || this.buffer.some((b) => b.id === item.id)) continue;
      this.buffer.push(item);
      added += 1;
      this.options.prepare?.(item).catch(() => undefined);
    }
    if (this.current === null && this.buffer.length) this.current = this.buffer.shift() ?? null;
    this.exhausted = added === 0 && this.current === null;
    this.changed();
  }

  private run(doing: string, task: () => Promise<unknown>): void {
    this.busy += 1;
    this.chain = this.chain
      .then(task)
      .catch((error) => this.options.onError?.(error, doing))
      .finally(() => {
        this.busy -= 1;
        this.changed();
      });
  }

  private changed(): void {
    this.options.onChange?.();
  }
}

export interface RetryOptions {
  /** attempts in all, the first included */
  attempts?: number;
  /** the wait before the first retry, doubled before each next one */
  delayMs?: number;
  sleep?: (ms: number) => Promise<void>;
}

/** An error worth trying again: the network, a timeout, throttling or a busy server. */
export function isTransient(error: unknown): boolean {
  if (error instanceof TypeError) return true; // fetch: the request did not get an answer
  const status = (error as { status?: unknown })?.status;
  return typeof status === "number" && (status === 0 || status === 408 || status === 429 || status >= 500);
}

/** `call`, tried again with a growing delay while it fails with a transient error. */
export async function retryTransient<T>(call: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const attempts = Math.max(1, options.attempts ?? 5);
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  let delay = options.delayMs ?? 250;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await call();
    } catch (error) {
      if (attempt >= attempts || !isTransient(error)) throw error;
      await sleep(delay);
      delay *= 2;
    }
  }
}
