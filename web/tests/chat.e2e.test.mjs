// Alice and Bob in two browser contexts, each on a different relay replica, in headless Chromium.
// Started by tests/tests/browser.rs, which runs the real stack and passes its addresses in the
// environment; skipped when run without it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { launch, open } from "./browser.mjs";

const env = process.env;
const harness = Boolean(env.RELAY_A && env.RELAY_B && env.PB_URL) && env.E2E === "chat";

async function send(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

const texts = (page) => page.$$eval("#messages li .text", (els) => els.map((e) => e.textContent));

test("two people chat across replicas, reload, and survive a replica dying", { skip: !harness }, async () => {
  const browser = await launch();
  try {
    const alice = await open(browser, [env.RELAY_A, env.RELAY_B], "ALICE");
    const bob = await open(browser, [env.RELAY_B, env.RELAY_A], "BOB");

    // Bob sends; Alice, on the other replica, sees it within a second.
    await send(bob, "hi alice, it's bob");
    const started = Date.now();
    await alice.waitForSelector('#messages li .text:text-is("hi alice, it\'s bob")', { timeout: 1000 });
    console.log(`# delivered to the other replica's browser in ${Date.now() - started} ms (including the click)`);
    await send(alice, "hello bob");
    await bob.waitForSelector('#messages li .text:text-is("hello bob")', { timeout: 1000 });

    // Alice reloads: still logged in, and the conversation comes back from history.
    await alice.reload();
    await alice.waitForSelector('#state[data-state="live"]');
    await alice.waitForSelector('#messages li .text:text-is("hello bob")');
    assert.deepEqual(await texts(alice), ["hi alice, it's bob", "hello bob"]);

    // Alice's replica dies. Bob keeps talking; Alice's page reconnects to the other replica and
    // shows what was sent meanwhile, once each.
    process.kill(Number(env.RELAY_A_PID), "SIGKILL");
    await alice.waitForSelector('#state:not([data-state="live"])', { timeout: 10_000 });
    for (let i = 1; i <= 3; i++) await send(bob, `while you were away ${i}`);
    await alice.waitForSelector('#messages li .text:text-is("while you were away 3")', { timeout: 15_000 });
    await alice.waitForSelector('#state[data-state="live"]');
    const seen = await texts(alice);
    assert.deepEqual(seen, ["hi alice, it's bob", "hello bob", "while you were away 1", "while you were away 2", "while you were away 3"]);
    const seqs = await alice.$$eval("#messages li", (els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5], "in order, none lost, none doubled");
    const senders = await alice.$$eval("#messages li .meta", (els) => els.map((e) => e.textContent.split(" · ")[1]));
    assert.deepEqual(senders, ["bob", "you", "bob", "bob", "bob"], "who sent what");

    if (env.ARTIFACTS) {
      mkdirSync(env.ARTIFACTS, { recursive: true });
      await alice.screenshot({ path: `${env.ARTIFACTS}/chat-alice.png` });
      await bob.screenshot({ path: `${env.ARTIFACTS}/chat-bob.png` });
    }
  } finally {
    await browser.close();
  }
});
