// The websocket /ws/events/: {"event", "data"} messages (queue.counts, training.progress,
// training.log for admins, model.activated). Reconnects with a growing delay.
export type Handler = (data: any) => void;
export type ConnectionState = "connecting" | "open" | "closed";

export class Events {
  private socket: WebSocket | null = null;
  private handlers = new Map<string, Set<Handler>>();
  private stateHandlers = new Set<(s: ConnectionState) => void>();
  private delay = 500;
  private stopped = false;
  state: ConnectionState = "closed";

  constructor(private url: string) {}

  connect(): void {
    this.stopped = false;
    this.setState("connecting");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      this.delay = 500;
      this.setState("open");
    };
    socket.onmessage = (message) => {
      let parsed: { event?: string; data?: unknown };
      try {
        parsed = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (!parsed.event) return;
      for (const handler of this.handlers.get(parsed.event) ?? []) handler(parsed.data);
      for (const handler of this.handlers.get("*") ?? []) handler(parsed);
    };
    socket.onclose = (event) => {
      this.setState("closed");
      if (this.stopped || event.code === 4401) return; // 4401: signed out
      setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 15000);
    };
  }

  close(): void {
    this.stopped = true;
    this.socket?.close();
  }

  on(event: string, handler: Handler): () => void {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event)!.add(handler);
    return () => this.handlers.get(event)?.delete(handler);
  }

  onState(handler: (s: ConnectionState) => void): () => void {
    this.stateHandlers.add(handler);
    return () => this.stateHandlers.delete(handler);
  }

  private setState(s: ConnectionState): void {
    this.state = s;
    for (const h of this.stateHandlers) h(s);
  }
}

export function eventsUrl(path: string): string {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
