// The playground in a real browser: Debian's chromium, headless, driven by
// playwright-core, against a real ArBridge server on loopback (started by
// tests/test_playground.py, which passes the addresses in the environment).
//
//   ARBRIDGE_PAGE      the playground on the server's gRPC-Web port
//   ARBRIDGE_METRICS   the server's Prometheus endpoint
//   ARBRIDGE_TOKEN     the bearer token the server requires
//   ARBRIDGE_ALLOWED   the playground served from another origin the server allows
//   ARBRIDGE_REFUSED   the same files from an origin it does not allow
//   ARBRIDGE_SCENE     examples/scene.json
//   ARBRIDGE_SHOTS     where screenshots go (a CI artifact)

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const env = process.env;
const PAGE = env.ARBRIDGE_PAGE;
let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
});

async function open(url = PAGE, { token = env.ARBRIDGE_TOKEN } = {}) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(url);
  await page.waitForFunction(() => window.arbridgePlayground !== undefined);
  if (token) await page.fill("#token", token);
  page.scriptErrors = errors;
  return page;
}

// Click a button and wait for the reply to end (done, error or cancelled).
async function reply(page, button = "#describe") {
  // Cleared first, so the wait below sees this click's reply, never the last one's state.
  await page.evaluate(() => { document.body.dataset.reply = ""; });
  await page.click(button);
  await page.waitForFunction(() => document.body.dataset.reply !== "", null, { timeout: 5000 })
    .catch(() => assert.fail(`clicking ${button} started no reply`));
  await page.waitForFunction(() => document.body.dataset.reply !== "streaming");
  return {
    state: await page.evaluate(() => document.body.dataset.reply),
    text: await page.textContent("#reply"),
    error: await page.textContent("#error"),
    events: await page.evaluate(() => window.arbridgePlayground.state.events),
  };
}

// The sum of the server's /metrics samples whose line passes `keep`.
async function metricSum(keep) {
  const text = await (await fetch(env.ARBRIDGE_METRICS)).text();
  return text.split("\n").filter((l) => !l.startsWith("#") && keep(l))
    .reduce((sum, l) => sum + Number(l.split(" ").pop()), 0);
}

const activeRequests = () => metricSum((l) => l.startsWith("arbridge_active_requests "));
// Ask calls the server finished as CANCELLED (the client went away mid-reply).
const cancelledAsks = () => metricSum((l) => l.startsWith("arbridge_rpcs_total{") &&
  l.includes('code="CANCELLED"') && l.includes("Ask"));

test("a caption streams in chunks, with its grounding and timings", async () => {
  const page = await open();
  const r = await reply(page);
  assert.equal(r.state, "done", r.error);
  const chunks = r.events.filter((e) => e.kind === "chunk");
  const completion = r.events.findIndex((e) => e.kind === "completion");
  assert.ok(chunks.length >= 3, `only ${chunks.length} chunks`);
  assert.ok(completion > 3, "the completion came before several chunks");
  // Word by word: the chunks arrive over time, not in one read.
  const times = new Set(chunks.map((c) => Math.round(c.at / 5)));
  assert.ok(times.size >= 3, "the chunks arrived together");
  assert.ok(chunks[chunks.length - 1].at - chunks[0].at > 50, "all chunks arrived at once");
  // The chair (left of the camera) and the lamp are named and highlighted in both places.
  assert.match(r.text, /chair/i);
  const marked = await page.$$eval("#reply mark", (ms) => ms.map((m) => m.dataset.objectId));
  assert.ok(marked.includes("obj-1"), `marks: ${marked}`);
  assert.ok(await page.$('g.object.mentioned[data-id="obj-1"]'));
  assert.match(await page.textContent("#status"), /finish: (EOS|STOP_SEQUENCE|LENGTH) .* tok\/s/);
  await page.screenshot({ path: `${env.ARBRIDGE_SHOTS}/playground.png` });
  assert.deepEqual(page.scriptErrors, []);
  await page.close();
});

test("dragging an object changes the caption's direction words", async () => {
  const page = await open();
  const before = await reply(page);
  assert.match(before.text, /chair[^,.]*\bleft\b|\bleft: [^.]*chair/i);
  // Drag the chair from the camera's left (x = -1.2 m) to its right (x = +2 m).
  const box = await (await page.$('g.object[data-id="obj-1"] rect')).boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 + 3.2 * 48, box.y + box.height / 2, { steps: 8 });
  await page.mouse.up();
  const x = await page.evaluate(() => window.arbridgePlayground.state.scene.objects
    .find((o) => o.id === "obj-1").pose.position.x);
  assert.ok(x > 1.5, `the chair is at x = ${x}`);
  const afterDrag = await reply(page);
  assert.equal(afterDrag.state, "done", afterDrag.error);
  assert.match(afterDrag.text, /chair[^,.]*\bright\b|\bright: [^.]*chair/i);
  await page.close();
});

test("an invalid scene shows INVALID_ARGUMENT naming the field", async () => {
  const page = await open();
  await page.click('g.object[data-id="obj-2"] rect');
  await page.fill("#obj-label", "");
  await page.dispatchEvent("#obj-label", "change");
  const r = await reply(page);
  assert.equal(r.state, "error");
  assert.match(r.error, /^INVALID_ARGUMENT: scene\.objects\[1\]\.label/);
  await page.close();
});

test("examples/scene.json opens as is and is captioned", async () => {
  const page = await open();
  await page.setInputFiles("#load", env.ARBRIDGE_SCENE);
  // The file is read asynchronously after the change event.
  await page.waitForFunction(() =>
    window.arbridgePlayground.state.scene.locationHint === "a small kitchen");
  const ids = await page.evaluate(() => window.arbridgePlayground.state.scene.objects
    .map((o) => o.id));
  assert.deepEqual(ids, ["obj-1", "obj-2", "obj-3"]);
  assert.equal(await page.inputValue("#location"), "a small kitchen");
  // The whole file, as the server would read it: poses, extents, attributes, sampling.
  const sent = await page.evaluate(() => window.arbridgePlayground.requestJson());
  assert.deepEqual(sent.scene.objects[0].attributes, { color: "red", material: "wood" });
  assert.equal(sent.scene.objects[1].extents.x, 0.6);
  assert.equal(sent.scene.cameraPose.position.y, 1.6);
  assert.equal(sent.instruction, "");  // none: the server composes the caption
  assert.equal(sent.sampling.maxNewTokens, 60);
  const r = await reply(page);
  assert.equal(r.state, "done", r.error);
  assert.match(r.text, /table/i);
  await page.close();
});

test("cancelling mid-reply frees the server's slot", async () => {
  const page = await open();
  await page.fill("#max-tokens", "400");
  await page.fill("#scene-constraint", "0");
  await page.fill("#question", "Tell me a long story about this room and everything in it.");
  const cancelledBefore = await cancelledAsks();
  await page.click("#ask");
  await page.waitForFunction(() => window.arbridgePlayground.state.events.length >= 2);
  assert.equal(await activeRequests(), 1);
  await page.click("#cancel", { timeout: 5000 });
  await page.waitForFunction(() => document.body.dataset.reply === "cancelled");
  const deadline = Date.now() + 5000;
  let active = await activeRequests();
  while (active !== 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    active = await activeRequests();
  }
  assert.equal(active, 0, "the cancelled reply still holds a slot");
  // Freed by the cancel, not by the reply ending on its own.
  let cancelled = await cancelledAsks();
  while (cancelled === cancelledBefore && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    cancelled = await cancelledAsks();
  }
  assert.equal(cancelled, cancelledBefore + 1);
  await page.close();
});

test("a required token is enforced", async () => {
  const page = await open(PAGE, { token: "" });
  const r = await reply(page);
  assert.equal(r.state, "error");
  assert.match(r.error, /^UNAUTHENTICATED: /);
  await page.fill("#token", "not-the-token");
  const wrong = await reply(page);
  assert.match(wrong.error, /^UNAUTHENTICATED: /);
  await page.close();
});

test("another origin works only as the server's CORS setting allows", async () => {
  const allowed = await open(env.ARBRIDGE_ALLOWED);
  const ok = await reply(allowed);
  assert.equal(ok.state, "done", ok.error);
  assert.match(ok.text, /chair/i);
  await allowed.close();
  const refused = await open(env.ARBRIDGE_REFUSED);
  const r = await reply(refused);
  assert.equal(r.state, "error");
  // Refused by the browser (the preflight got 403), before any gRPC status.
  assert.match(r.error, /^UNKNOWN: .*fetch/i);
  await refused.close();
});
