// The chat page: log in with PocketBase, join channels, see history then live messages, send.
// Query parameters: ?relays=URL[,URL...] (default: this page's origin) and ?pb=URL (PocketBase,
// default: this host on port 8090).

import PocketBase from "pocketbase";
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
      state: showState,
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
