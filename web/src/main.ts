// The chat page: log in with PocketBase, join channels, see history then live messages, send; who
// is online in the current channel, joins and leaves, and "alice is typing…" (ephemeral messages).
// Query parameters: ?relays=URL[,URL...] (default: this page's origin) and ?pb=URL (PocketBase,
// default: this host on port 8090).

import PocketBase from "pocketbase";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Message } from "./gen/relay/v1/relay_pb";
import { Connection, type State } from "./connection";
import "./style.css";

const params = new URLSearchParams(location.search);
const relays = (params.get("relays") ?? location.origin).split(",").map((s) => s.trim()).filter(Boolean);
const pb = new PocketBase(params.get("pb") ?? `${location.protocol}//${location.hostname}:8090`);

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const loginView = $<HTMLFormElement>("login");
const chatView = $<HTMLElement>("chat");
const stateBadge = $<HTMLElement>("state");
const list = $<HTMLOListElement>("messages");
const channelSelect = $<HTMLSelectElement>("channel");
let connection: Connection | undefined;
/** Per channel: who is online (user id -> name); absent where the channel keeps no presence. */
const online = new Map<string, Map<string, string>>();
/** Per channel: who is typing (user id -> [name, when it stops showing]). */
const typing = new Map<string, Map<string, [string, number]>>();
/** Channels that refused an ephemeral publish: no more typing indicators sent there. */
const noTyping = new Set<string>();
/** A typing indicator is sent at most this often while typing, and shown this long after the last. */
const TYPING_EVERY_MS = 2_000;
const TYPING_SHOWN_MS = 4_000;
let typedAt = 0;

loginView.addEventListener("submit", async (e) => {
  e.preventDefault();
  const error = $<HTMLElement>("login-error");
  error.textContent = "";
  try {
    await pb.collection("users").authWithPassword($<HTMLInputElement>("email").value, $<HTMLInputElement>("password").value);
    start();
  } catch (err) {
    error.textContent = `Login failed: ${(err as Error).message}`;
  }
});

$<HTMLButtonElement>("logout").addEventListener("click", () => {
  connection?.stop();
  pb.authStore.clear();
  location.reload();
});

$<HTMLFormElement>("join").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>("join-channel");
  const name = input.value.trim();
  if (name) join(name);
  input.value = "";
});

$<HTMLInputElement>("text").addEventListener("input", () => {
  const channel = channelSelect.value;
  if (!connection || noTyping.has(channel) || Date.now() - typedAt < TYPING_EVERY_MS) return;
  typedAt = Date.now();
  connection.publishEphemeral(channel, "typing").catch((err) => {
    // Not allowed here (or over the limit): stop announcing on this channel.
    if (ConnectError.from(err).code === Code.PermissionDenied) noTyping.add(channel);
  });
});

channelSelect.addEventListener("change", () => {
  showOnline();
  showTyping();
});

$<HTMLFormElement>("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $<HTMLInputElement>("text");
  const text = input.value;
  if (!text || !connection) return;
  input.value = "";
  try {
    await connection.publish(channelSelect.value, text);
  } catch (err) {
    input.value = text;
    showNotice(`Not sent: ${(err as Error).message}`);
  }
});

function start() {
  loginView.hidden = true;
  chatView.hidden = false;
  $<HTMLElement>("me").textContent = pb.authStore.record?.email ?? "";
  connection = new Connection(
    relays,
    () => pb.authStore.token,
    {
      message: render,
      state: (s) => {
        showState(s);
        // (Re)connected: the list may have changed while we were away.
        if (s.kind === "live") for (const o of channelSelect.options) void loadPresence(o.value);
      },
      join: (channel, userid, username) => {
        online.get(channel)?.set(userid, username);
        note(channel, `${nameOf(userid, username)} joined`);
        if (channel === channelSelect.value) showOnline();
      },
      leave: (channel, userid, username) => {
        online.get(channel)?.delete(userid);
        typing.get(channel)?.delete(userid);
        note(channel, `${nameOf(userid, username)} left`);
        if (channel === channelSelect.value) showOnline();
      },
      presenceChanged: (channel) => void loadPresence(channel),
      ephemeral: (m) => {
        if (m.text !== "typing" || m.userid === pb.authStore.record?.id) return;
        const who = typing.get(m.channelid) ?? new Map<string, [string, number]>();
        who.set(m.userid, [nameOf(m.userid, m.username), Date.now() + TYPING_SHOWN_MS]);
        typing.set(m.channelid, who);
        showTyping();
        setTimeout(showTyping, TYPING_SHOWN_MS + 50);
      },
      recovery: (channel, recovered, reason) => {
        if (!recovered) showNotice(`#${channel}: some messages may be missing (${reason || "no longer kept"})`);
      },
    },
    async () => (await pb.collection("users").authRefresh()).token,
  );
  for (const c of (params.get("channels") ?? "chat").split(",")) join(c.trim());
}

function join(channel: string) {
  if (![...channelSelect.options].some((o) => o.value === channel)) {
    channelSelect.add(new Option(`#${channel}`, channel, false, true));
  }
  connection?.join(channel);
  showOnline();
  showTyping();
}

function render(m: Message) {
  const mine = m.userid === pb.authStore.record?.id;
  const li = document.createElement("li");
  li.className = mine ? "mine" : "";
  li.dataset.channel = m.channelid;
  li.dataset.seq = String(m.seq);
  const when = new Date(Number(m.ts / 1_000_000n));
  const meta = document.createElement("span");
  meta.className = "meta";
  const who = mine ? "you" : m.username || `user ${m.userid.slice(0, 6)}`;
  meta.textContent = `#${m.channelid} · ${who} · ${when.toLocaleTimeString()}`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = m.text;
  li.append(meta, text);
  // Messages arrive in seq order per channel; across channels keep time order.
  const after = [...list.children].reverse().find((el) => BigInt((el as HTMLElement).dataset.ts ?? "0") <= m.ts);
  li.dataset.ts = String(m.ts);
  if (after) after.after(li);
  else list.prepend(li);
  li.scrollIntoView({ block: "nearest" });
}

function nameOf(userid: string, username: string): string {
  return userid === pb.authStore.record?.id ? "you" : username || `user ${userid.slice(0, 6)}`;
}

/** A join or leave line among the messages (never stored: seen only by who was there). */
function note(channel: string, text: string) {
  const li = document.createElement("li");
  li.className = "event";
  li.dataset.channel = channel;
  const ts = BigInt(Date.now()) * 1_000_000n;
  li.dataset.ts = String(ts);
  li.textContent = `#${channel} · ${text}`;
  list.append(li);
  li.scrollIntoView({ block: "nearest" });
}

async function loadPresence(channel: string) {
  try {
    const members = await connection?.presence(channel);
    if (members === undefined) online.delete(channel);
    else online.set(channel, new Map(members.map((m) => [m.userid, m.username])));
  } catch {
    return; // Unavailable for now: the next reconnect or join asks again.
  }
  if (channel === channelSelect.value) showOnline();
}

function showOnline() {
  const members = online.get(channelSelect.value);
  const panel = $<HTMLElement>("online");
  panel.hidden = members === undefined;
  if (!members) return;
  const names = [...members].map(([id, name]) => nameOf(id, name)).sort();
  $<HTMLElement>("online-count").textContent = `(${names.length})`;
  $<HTMLElement>("members").replaceChildren(
    ...names.map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      return li;
    }),
  );
}

function showTyping() {
  const now = Date.now();
  const who = [...(typing.get(channelSelect.value) ?? new Map()).values()].filter(([, until]) => until > now).map(([n]) => n);
  $<HTMLElement>("typing").textContent =
    who.length === 0 ? "" : who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
}

function showState(s: State) {
  stateBadge.dataset.state = s.kind;
  stateBadge.textContent =
    s.kind === "live"
      ? `live · ${new URL(s.relay).host}`
      : s.kind === "connecting"
        ? `connecting to ${new URL(s.relay).host}…`
        : s.kind === "retrying"
          ? `reconnecting in ${(s.inMs / 1000).toFixed(1)}s (${s.reason})`
          : `stopped: ${s.reason}`;
}

function showNotice(text: string) {
  const n = $<HTMLElement>("notice");
  n.textContent = text;
  n.hidden = false;
}

if (pb.authStore.isValid) start();
