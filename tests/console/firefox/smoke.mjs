// The console in Firefox (Debian's firefox-esr, over WebDriver BiDi with puppeteer-core): sign in from a thread's
// deep link, read its messages and runs, then stream a playground answer. Driven by tests/console/test_firefox.py:
//   node smoke.mjs ORIGIN KEY THREAD_ID ASSISTANT_ID ARTIFACTS_DIR
// Prints one JSON line when the answer is partly on the page ({"partial": …}), waits, and one at the end.
import puppeteer from "puppeteer-core";

const [origin, key, threadId, assistantId, artifacts] = process.argv.slice(2);
const WAIT = { timeout: 60_000 };
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
  headless: true,
  extraPrefsFirefox: {
    // Nothing leaves this machine: no updates, telemetry, remote settings or captive-portal probes.
    "app.update.disabledForTesting": true,
    "network.captive-portal-service.enabled": false,
    "network.connectivity-service.enabled": false,
    "datareporting.policy.dataSubmissionEnabled": false,
    "toolkit.telemetry.enabled": false,
    "services.settings.server": "http://127.0.0.1:1/",
  },
});
const errors = [];
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(WAIT.timeout);
  await page.setViewport({ width: 1280, height: 800 });
  page.on("pageerror", (err) => errors.push(String(err)));
  const ready = (path) =>
    page.waitForFunction(
      (p) => location.pathname + location.search === p && document.querySelector("main[data-state=ready], main[data-state=error]"),
      WAIT,
      path,
    );

  // A deep link without a key: sign-in, then back to the thread.
  await page.goto(`${origin}/console/threads/${threadId}`);
  await page.waitForFunction(() => location.pathname === "/console/signin" && document.querySelector("main[data-state=ready] input[name=key]"), WAIT);
  const signinPath = await page.evaluate(() => location.pathname + location.search);
  await page.type("input[name=key]", key);
  await page.keyboard.press("Enter");
  await ready(`/console/threads/${threadId}`);
  await page.waitForSelector(`section.run[data-status=completed]`, WAIT);
  const thread = await page.evaluate(() => ({
    state: document.querySelector("main").dataset.state,
    project: document.getElementById("project").textContent,
    messages: [...document.querySelectorAll("#messages .message")].map((m) => [m.className, m.querySelector(".text")?.textContent ?? ""]),
    runs: [...document.querySelectorAll("section.run")].map((r) => [r.dataset.id, r.dataset.status, r.textContent.includes("completion =")]),
    calls: [...document.querySelectorAll("section.run .call.fn")].map((c) => [c.querySelector("pre.args")?.textContent ?? "", c.querySelector("pre.output")?.textContent ?? ""]),
  }));
  await page.screenshot({ path: `${artifacts}/firefox-thread.png`, fullPage: true });

  // The playground streams an answer: part of it shows first (the upstream holds until told), then all.
  await page.goto(`${origin}/console/playground?assistant=${assistantId}`);
  await ready(`/console/playground?assistant=${assistantId}`);
  await page.type("textarea[name=message]", "Say something in Firefox.");
  await page.click("form.composer button[type=submit]");
  await page.waitForFunction(() => (document.querySelector("#chat .message.role-assistant .text")?.textContent ?? "").length > 0, WAIT);
  const partial = await page.evaluate(() => ({
    text: document.querySelector("#chat .message.role-assistant .text").textContent,
    status: document.querySelector("#chat section.run")?.dataset.status,
  }));
  say({ partial });
  await page.waitForSelector("#chat section.run[data-status=completed]", WAIT);
  const answer = await page.evaluate(() => document.querySelector("#chat .message.role-assistant .text").textContent);
  await page.screenshot({ path: `${artifacts}/firefox-playground.png`, fullPage: true });
  say({ signinPath, thread, answer, userAgent: await browser.version(), errors });
} finally {
  await browser.close();
}
