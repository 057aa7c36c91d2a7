// Who is online, joins and leaves, and typing, in headless Chromium: Alice (relays A then B), Bob
// (B then A) and Carol (A only) on a channel with presence (ttl 5s) and ephemeral messages.
// Replica A dies: Alice moves to B without a leave; Carol cannot reconnect and leaves within the
// ttl. Started by tests/tests/browser.rs (E2E=presence); skipped otherwise.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { launch, open } from "./browser.mjs";

const env = process.env;
const harness = Boolean(env.RELAY_A && env.RELAY_B && env.PB_URL) && env.E2E === "presence";

const onlineList = (page) => page.$$eval("#members li", (els) => els.map((e) => e.textContent));
const notes = (page) => page.$$eval("#messages li.event", (els) => els.map((e) => e.textContent.split(" · ")[1]));

/** Waits until `get()` returns `want` (compared as JSON). */
async function until(what, get, want, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await get();
    if (JSON.stringify(last) === JSON.stringify(want)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

test("who is online, joins and leaves, typing, and a replica dying", { skip: !harness }, async () => {
  const browser = await launch();
  try {
    const alice = await open(browser, [env.RELAY_A, env.RELAY_B], "ALICE");
    const bob = await open(browser, [env.RELAY_B, env.RELAY_A], "BOB");
    const carol = await open(browser, [env.RELAY_A], "CAROL");

    // Everyone sees everyone, whichever replica they are on.
    const all = ["alice", "carol", "you"];
    await until("Bob's list", () => onlineList(bob), all, 10_000);
    await until("Alice's list", () => onlineList(alice), ["bob", "carol", "you"], 10_000);
    await until("Bob saw Carol join", async () => (await notes(bob)).includes("carol joined"), true, 10_000);

    // Alice types: Bob, on the other replica, sees it; it is gone a few seconds after she stops.
    await alice.type("#text", "hel", { delay: 50 });
    await bob.waitForSelector('#typing:text-is("alice is typing…")', { timeout: 3_000 });
    await bob.waitForSelector('#typing:text-is("")', { timeout: 8_000 });
    assert.equal(await alice.textContent("#typing"), "", "nobody sees their own typing");

    // Replica A dies. Alice reconnects to B (a reconnect is no leave); Carol has only A and leaves
    // once her entry expires (ttl 5s).
    process.kill(Number(env.RELAY_A_PID), "SIGKILL");
    const killed = Date.now();
    await until("Carol gone from Bob's list", () => onlineList(bob), ["alice", "you"], 20_000);
    console.log(`# Carol left Bob's list ${Date.now() - killed} ms after her replica was killed (ttl 5 s)`);
    await alice.waitForSelector('#state[data-state="live"]', { timeout: 15_000 });
    assert.ok((await notes(bob)).includes("carol left"), "a leave line for Carol");
    assert.ok(!(await notes(bob)).includes("alice left"), `Alice never left: ${await notes(bob)}`);
    await until("Alice's list after her reconnect", () => onlineList(alice), ["bob", "you"], 10_000);
    await bob.type("#text", "still here", { delay: 20 });
    await alice.waitForSelector('#typing:text-is("bob is typing…")', { timeout: 3_000 });

    if (env.ARTIFACTS) {
      mkdirSync(env.ARTIFACTS, { recursive: true });
      await bob.screenshot({ path: `${env.ARTIFACTS}/presence-bob.png` });
    }
    void carol;
  } finally {
    await browser.close();
  }
});
