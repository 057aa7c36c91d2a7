// One Subscribe stream for all joined channels, kept open: reconnects with exponential backoff and
// jitter, rotating through the configured relays, and resumes each channel from the last seq it
// showed, so a reconnect neither loses nor doubles a message.

import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { RelayService, type Message } from "./gen/relay/v1/relay_pb";

export type State =
  | { kind: "connecting"; relay: string }
  | { kind: "live"; relay: string }
  | { kind: "retrying"; inMs: number; reason: string }
  | { kind: "stopped"; reason: string };

export interface Handlers {
  message(m: Message): void;
  state(s: State): void;
  /** recovered=false: history no longer reaches back to where this page left off. */
  recovery(channel: string, recovered: boolean): void;
}

/** Errors that retrying cannot fix. */
const FINAL = new Set([Code.Unauthenticated, Code.PermissionDenied, Code.InvalidArgument, Code.NotFound]);
/** No event (heartbeats included) for this long means the connection is dead. */
const SILENCE_MS = 45_000;

export function backoff(attempt: number, random = Math.random): number {
  const base = Math.min(30_000, 500 * 2 ** attempt);
  return Math.round(base * (0.5 + random() / 2));
}

export class Connection {
  private readonly clients: Client<typeof RelayService>[];
  private readonly last = new Map<string, bigint>();
  private channels: string[] = [];
  private relay = 0;
  private abort?: AbortController;
  private stopped = false;
  private running = false;

  constructor(
    private readonly relays: string[],
    private readonly token: () => string,
    private readonly on: Handlers,
  ) {
    this.clients = relays.map((baseUrl) => createClient(RelayService, createGrpcWebTransport({ baseUrl })));
  }

  /** Adds a channel; the stream is reopened with it (resuming the others). */
  join(channel: string): void {
    if (this.channels.includes(channel)) return;
    this.channels.push(channel);
    this.abort?.abort();
    if (!this.running) void this.run();
  }

  stop(): void {
    this.stopped = true;
    this.abort?.abort();
  }

  /** Publishes, retrying on another relay with the same idempotency key when one is unavailable. */
  async publish(channelid: string, text: string): Promise<Message> {
    const idempotencyKey = crypto.randomUUID();
    let lastError: unknown;
    for (let i = 0; i < this.clients.length * 2; i++) {
      const client = this.clients[(this.relay + i) % this.clients.length];
      try {
        const reply = await client.publish({ channelid, text, idempotencyKey }, { headers: this.headers() });
        return reply.message!;
      } catch (e) {
        lastError = e;
        const err = ConnectError.from(e);
        if (err.code !== Code.Unavailable && err.code !== Code.Unknown) throw err;
        await sleep(backoff(i));
      }
    }
    throw lastError;
  }

  private headers(): HeadersInit {
    return { authorization: `Bearer ${this.token()}` };
  }

  private async run(): Promise<void> {
    this.running = true;
    let attempt = 0;
    while (!this.stopped) {
      const abort = new AbortController();
      this.abort = abort;
      const url = this.relays[this.relay];
      let reason = "stream ended";
      try {
        this.on.state({ kind: "connecting", relay: url });
        await this.stream(this.clients[this.relay], abort, () => {
          attempt = 0;
          this.on.state({ kind: "live", relay: url });
        });
      } catch (e) {
        if (abort.signal.aborted && !this.stopped && !(abort.signal.reason instanceof SilenceError)) continue; // rejoin
        const err = ConnectError.from(e);
        if (FINAL.has(err.code)) {
          this.on.state({ kind: "stopped", reason: err.rawMessage });
          break;
        }
        reason = err.rawMessage || String(e);
      }
      if (this.stopped) break;
      // Try the next relay: the one we were on may be gone.
      this.relay = (this.relay + 1) % this.relays.length;
      const inMs = backoff(attempt++);
      this.on.state({ kind: "retrying", inMs, reason });
      await sleep(inMs);
    }
    this.running = false;
  }

  private async stream(client: Client<typeof RelayService>, abort: AbortController, live: () => void): Promise<void> {
    const channels = this.channels.map((channelid) => ({
      channelid,
      cursor: { position: { case: "sinceSeq" as const, value: this.last.get(channelid) ?? 0n } },
    }));
    let watchdog = setTimeout(() => abort.abort(new SilenceError()), SILENCE_MS);
    try {
      for await (const res of client.subscribe({ channels }, { signal: abort.signal, headers: this.headers() })) {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => abort.abort(new SilenceError()), SILENCE_MS);
        switch (res.event.case) {
          case "recovery":
            live();
            this.on.recovery(res.event.value.channelid, res.event.value.recovered);
            break;
          case "message": {
            const m = res.event.value;
            if (m.seq > (this.last.get(m.channelid) ?? 0n)) {
              this.last.set(m.channelid, m.seq);
              this.on.message(m);
            }
            break;
          }
          case "heartbeat":
            break;
        }
      }
    } finally {
      clearTimeout(watchdog);
    }
  }
}

class SilenceError extends Error {
  constructor() {
    super("no heartbeat: connection presumed dead");
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
