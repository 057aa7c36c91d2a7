// What the browser tests share: Chromium as the harness runs it, and a page logged in as one of
// the users the harness made (`<WHO>_EMAIL`, `<WHO>_PASSWORD`). Not a test file itself.
import { chromium } from "playwright-core";

const env = process.env;

export function launch() {
  return chromium.launch({
    executablePath: env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
}

/** A page of its own, logged in as `who`, on `relays` (the first one serves the page). */
export async function open(browser, relays, who) {
  const context = await browser.newContext({ viewport: { width: 800, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${who}] page error:`, e));
  await page.goto(`${relays[0]}/?relays=${relays.join(",")}&pb=${env.PB_URL}`);
  await page.fill("#email", env[`${who}_EMAIL`]);
  await page.fill("#password", env[`${who}_PASSWORD`]);
  await page.click("#login button");
  await page.waitForSelector('#state[data-state="live"]', { timeout: 10_000 });
  return page;
}
