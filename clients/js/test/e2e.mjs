// End-to-end test of the browser client in headless Chromium, against the demo page of a
// running sessiond (scripts/browser-test.sh starts it with demo = true and a short idle
// timeout). It checks what a user of an instrumented page would see:
//   - five instruments starting in random order show one id, fetched by one request;
//   - three tabs of one browser profile show that same id;
//   - after the idle timeout, a click gives every instrument the new id;
//   - a page hidden for longer than the idle timeout gets a new id when it is shown again;
//   - a report whose answer is lost is retried with its report_id and counted once;
//   - with the service unreachable, the answer says so and carries no id;
//   - nothing the client does throws into the page.
// BASE_URL: the service; IDLE_MS: the namespace's idle timeout; SCREENSHOT: where to save a
// picture of the demo page; CHROMIUM: the browser (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.BASE_URL;
const IDLE_MS = Number(process.env.IDLE_MS || 2000);
const SCREENSHOT = process.env.SCREENSHOT || 'demo.png';
assert.ok(BASE, 'BASE_URL names the service');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // Chromium's own background connections fail on a closed network, so they are off.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

/** Waits until all five instruments show one id, other than `previous`; returns it. */
async function agreedId(page, previous = null) {
  const handle = await page.waitForFunction((previous) => {
    const rows = [...document.querySelectorAll('[data-instrument]')];
    const ids = rows.map((row) => row.getAttribute('data-session-id'));
    const agreed = rows.length === 5 && ids.every((id) => id && id === ids[0]);
    return agreed && ids[0] !== previous ? ids[0] : false;
  }, previous, { timeout: 10000 });
  return handle.jsonValue();
}

/** Makes the page hidden or visible as a browser would, for the client's visibilitychange. */
async function setVisibility(page, state) {
  await page.evaluate((state) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => state === 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  }, state);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let failed = false;
try {
  const profile = await browser.newContext(); // one browser profile: its tabs share storage
  const first = await profile.newPage();
  const pageErrors = [];
  profile.on('weberror', (e) => pageErrors.push(String(e.error())));
  const calls = [];
  first.on('request', (r) => r.url().includes('/v1/sessions/') && calls.push(r.url()));
  await first.goto(`${BASE}/demo`);
  const id = await agreedId(first);
  assert.match(id, /^[0-9a-f]{20}$/);
  const startup = calls.filter((url) => url.endsWith('/current'));
  assert.equal(startup.length, 1, `five instruments, one request: ${calls}`);
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await first.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(`five instruments agree on ${id} (one request); screenshot: ${SCREENSHOT}`);

  for (const n of [2, 3]) {
    const tab = await profile.newPage();
    await tab.goto(`${BASE}/demo`);
    assert.equal(await agreedId(tab), id, `tab ${n} shows the profile's session`);
  }
  console.log('three tabs of one profile show the same id');

  await first.bringToFront();
  await sleep(IDLE_MS + 700);
  await first.mouse.click(20, 20);
  const renewed = await agreedId(first, id);
  console.log(`after ${IDLE_MS} ms idle, a click gave every instrument ${renewed}`);

  await setVisibility(first, 'hidden');
  await sleep(IDLE_MS + 700);
  await setVisibility(first, 'visible');
  const returned = await agreedId(first, renewed);
  console.log(`hidden for longer than the idle timeout, the page came back with ${returned}`);

  // A report whose answer is lost on the way back is retried with the same report_id, and
  // the service applies it once.
  const reported = await first.evaluate(async () => {
    const realFetch = window.fetch;
    const bodies = [];
    window.fetch = function (url, init) {
      const sent = realFetch.call(this, url, init);
      if (!String(url).endsWith('/v1/sessions/report')) return sent;
      bodies.push(JSON.parse(init.body));
      return bodies.length === 1 ? sent.then(() => { throw new TypeError('answer lost'); }) : sent;
    };
    try {
      const answer = await Sessiond.get({ url: '', namespace: 'default' }).report({ errors: 2 });
      return { answer, bodies };
    } finally {
      window.fetch = realFetch;
    }
  });
  assert.equal(reported.bodies.length, 2, 'the lost answer was retried once');
  assert.equal(reported.bodies[0].report_id, reported.bodies[1].report_id);
  assert.match(reported.bodies[0].report_id, /^[0-9a-f]{32}$/);
  assert.equal(reported.bodies[0].session_id, returned);
  assert.ok(reported.answer.ok, JSON.stringify(reported.answer));
  assert.equal(reported.answer.session.errors, 2, 'applied once, not twice');
  assert.equal(reported.answer.session.status, 'errored');
  console.log(`a report retried after a lost answer counted ${reported.answer.session.errors} errors once`);

  const unreachable = await first.evaluate(() =>
    Sessiond.get({ url: 'http://127.0.0.1:9', namespace: 'default' }).session());
  assert.equal(unreachable.ok, false);
  assert.match(unreachable.error, /^unreachable/);
  assert.equal(unreachable.session, undefined, 'no id is invented');
  console.log(`with the service unreachable the answer says: ${unreachable.error}`);
  assert.deepEqual(pageErrors, [], 'nothing thrown into the pages');
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
