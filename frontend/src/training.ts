// Training jobs on the client: what the admin console's training tab shows of a job it
// reads from the list and hears about over the websocket.
import type { TrainingJob } from "./types";

const STATUS_ORDER: Record<string, number> = { queued: 0, running: 1, succeeded: 2, failed: 2, cancelled: 2 };

/** `b` over `a` unless it is older news. A job never goes back from running or done to
 * queued: the job's "queued" announcement can arrive after the worker's first report (in
 * the embedded default the worker is a thread of the web server and starts at once), and
 * the list read before a job finished must not undo the "succeeded" heard since. */
export function laterOf<T extends Partial<TrainingJob>>(a: T | undefined, b: Partial<TrainingJob> | undefined): T {
  if (!a) return b as T;
  if (!b?.status || STATUS_ORDER[b.status] < STATUS_ORDER[a.status ?? "queued"]) return a;
  return { ...a, ...b };
}
