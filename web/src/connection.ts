// One Subscribe stream for all joined channels, kept open: reconnects with exponential backoff and
// jitter, rotating through the configured relays, and resumes each channel from the last (epoch, seq)
// it showed, so a reconnect neither loses nor doubles a message. When the relay says a channel's
// history was lost (recovered=false with a new epoch) the page says so and counts from the new
// epoch. Queue messages are acked once shown. The stream's token is refreshed before it expires
// (RefreshToken), so a page left open for days keeps its stream. Live-only events (joins, leaves,
// ephemeral messages such as typing indicators) go to their handlers as they come; they are never
// replayed.

import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { RelayService, type Member, type Message } from "./gen/relay/v1/relay_pb";

export type State =
  | { kind: "connecting"; relay: string }
  | { kind: "live"; relay: string }
  | { kind: "retrying"; inMs: number; reason: string }
  | { kind: "stopped"; reason: string };

export interface Handlers {
  message(m: Message): void;
  state(s: State): void;
  /** recovered=false: messages may be missing here (history no longer reaches back, or was lost). */
  recovery(channel: string, recovered: boolean, reason: string): void;
  /** A user's first stream on the channel opened (channels with presence.joinLeave). */
  join?(channel: string, userid: string, username: string): void;
  /** Their last stream ended or expired. */
  leave?(channel: string, userid: string, username: string): void;
  /** Too many joins and leaves to list: ask `presence` again. */
  presenceChanged?(channel: string): void;
  /** An ephemeral message (never stored: seq 0). */
  ephemeral?(m: Message): void;
}

/** Where a channel stands on this page: the highest seq shown and the recent ones (perUser and
 * queue channels deliver a share, which may arrive slightly out of order). */
interface Position {
  epoch: string;
  seq: bigint;
  recent: Set<bigint>;
}
const RECENT = 1024;

/** Errors that retrying cannot fix. */
const FINAL = new Set([Code.Unauthenticated, Code.PermissionDenied, Code.InvalidArgument, Code.NotFound]);
/** No event (heartbeats included) for this long means the connection is dead. */
const SILENCE_MS = 45_000;
/** Refresh the stream's token this long before it expires. */
const REFRESH_BEFORE_MS = 5 * 60_000;

export function backoff(attempt: number, random = Math.random): number {
  const base = Math.min(30_000, 500 * 2 ** attempt);
  return Math.round(base * (0.5 + random() / 2));
}

export class Connection {
  private readonly clients: Client<typeof RelayService>[];
  private readonly last = new Map<string, Position>();
  private channels: string[] = [];
  private relay = 0;
  private abort?: AbortController;
  private stopped = false;
  private running = false;

  constructor(
    private readonly relays: string[],
    private readonly token: () => string,
    private readonly on: Handlers,
    /** Gets a fresh token (the PocketBase SDK's authRefresh); called before the stream's expires. */
    private readonly refreshToken: () => Promise<string> = async () => token(),
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

  /** An ephemeral publish (a typing indicator): to whoever is connected now, never stored, not retried. */
  async publishEphemeral(channelid: string, text: string): Promise<void> {
    await this.clients[this.relay].publish({ channelid, text, ephemeral: true }, { headers: this.headers() });
  }

  /** Who is on the channel; undefined where the channel keeps no presence. */
  async presence(channelid: string): Promise<Member[] | undefined> {
    try {
      return (await this.clients[this.relay].presence({ channelid }, { headers: this.headers() })).members;
    } catch (e) {
      if (ConnectError.from(e).code === Code.FailedPrecondition) return undefined;
      throw e;
    }
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
    const channels = this.channels.map((channelid) => {
      const at = this.last.get(channelid) ?? { epoch: "", seq: 0n, recent: new Set<bigint>() };
      return { channelid, cursor: { position: { case: "sinceSeq" as const, value: at.seq }, epoch: at.epoch } };
    });
    let streamId = "";
    let refresh: ReturnType<typeof setTimeout> | undefined;
    let watchdog = setTimeout(() => abort.abort(new SilenceError()), SILENCE_MS);
    try {
      for await (const res of client.subscribe({ channels }, { signal: abort.signal, headers: this.headers() })) {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => abort.abort(new SilenceError()), SILENCE_MS);
        switch (res.event.case) {
          case "started":
            streamId = res.event.value.streamId;
            refresh = this.scheduleRefresh(client, streamId, res.event.value.tokenExpires);
            break;
          case "recovery": {
            const r = res.event.value;
            live();
            const at = this.last.get(r.channelid);
            // A new epoch: the channel's history started again, and so do its seqs.
            if (r.epoch && at && at.epoch !== r.epoch) this.last.set(r.channelid, { epoch: r.epoch, seq: 0n, recent: new Set() });
            this.on.recovery(r.channelid, r.recovered, r.reason);
            break;
          }
          case "message": {
            const m = res.event.value;
            const at = this.last.get(m.channelid) ?? { epoch: m.epoch, seq: 0n, recent: new Set<bigint>() };
            if (m.epoch !== at.epoch && at.seq === 0n) at.epoch = m.epoch;
            const fresh = m.seq > at.seq || (m.seq + BigInt(RECENT) > at.seq && !at.recent.has(m.seq));
            if (m.epoch === at.epoch && fresh) {
              at.recent.add(m.seq);
              if (at.recent.size > RECENT) at.recent.delete(at.recent.values().next().value!);
              if (m.seq > at.seq) at.seq = m.seq;
              this.last.set(m.channelid, at);
              this.on.message(m);
            }
            // Shown (or shown before): the queue may hand out the next one.
            if (m.needsAck) void this.ack(client, streamId, m);
            break;
          }
          case "join":
            this.on.join?.(res.event.value.channelid, res.event.value.userid, res.event.value.username);
            break;
          case "leave":
            this.on.leave?.(res.event.value.channelid, res.event.value.userid, res.event.value.username);
            break;
          case "presenceChanged":
            this.on.presenceChanged?.(res.event.value.channelid);
            break;
          case "ephemeral":
            this.on.ephemeral?.(res.event.value);
            break;
          case "heartbeat":
            break;
        }
      }
    } finally {
      clearTimeout(watchdog);
      clearTimeout(refresh);
    }
  }

  private async ack(client: Client<typeof RelayService>, streamId: string, m: Message): Promise<void> {
    try {
      await client.ack({ streamId, channelid: m.channelid, epoch: m.epoch, seqs: [m.seq] }, { headers: this.headers() });
    } catch {
      // Not acked: the relay delivers it again after the channel's ack wait.
    }
  }

  /** Swaps the stream's token for a fresh one before it expires, again and again. */
  private scheduleRefresh(client: Client<typeof RelayService>, streamId: string, expires: bigint) {
    const inMs = Math.max(1_000, Number(expires) * 1000 - Date.now() - REFRESH_BEFORE_MS);
    // setTimeout holds at most ~24.8 days.
    return setTimeout(async () => {
      try {
        await this.refreshToken();
        const reply = await client.refreshToken({ streamId }, { headers: this.headers() });
        this.scheduleRefresh(client, streamId, reply.tokenExpires);
      } catch {
        // The stream ends when its token expires; the reconnect opens one with a fresh token.
      }
    }, Math.min(inMs, 2 ** 31 - 1));
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
