// The instruments' end-to-end test in headless Chromium: the test page (bundled by
// test/package.mjs from the packed tarball and the real OpenTelemetry, Faro and Sentry
// packages) against a sessiond binary on Redis, started here with a 2 s idle timeout. It checks:
//   - every span, log record, Faro item and Sentry event of two tabs carries the one id
//     sessiond holds for the client key the page stored;
//   - after the idle timeout, one click in one tab gives every instrument in both tabs the new
//     id, the other tab switching without a request of its own (the switch is measured);
//   - Faro's own inactivity and lifetime timers never give its items another id;
//   - a tab that ends the session: the other tab's next span carries no id until its next
//     activity, then a new one, never the ended one;
//   - storage 'session' gives two tabs two sessions; 'memory' then persist() keeps the id;
//   - activity ticks at most every tickEveryMs;
//   - baggage session.id=<id> reaches a listed origin, merged with the baggage already set,
//     and no other origin;
//   - nothing thrown into the pages.
// SESSIOND: the binary; REDIS_URL: its store; PAGE: the bundled page (default
// target/e2e/page); CHROMIUM: the browser (default /usr/bin/chromium).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const here = new URL('..', import.meta.url).pathname;
const PAGE = resolve(process.env.PAGE || join(here, '../../target/e2e/page'));
const IDLE_MS = 2000;
assert.ok(process.env.SESSIOND && process.env.REDIS_URL, 'SESSIOND and REDIS_URL name the binary and its store');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Serves `handler` on a free loopback port; answers its origin. */
async function serve(handler) {
  const server = createServer(handler);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  servers.push(server);
  return `http://127.0.0.1:${server.address().port}`;
}
const servers = [];
const page = await serve((request, response) => {
  const file = new URL(request.url, 'http://x').pathname.endsWith('.js') ? 'page.js' : 'index.html';
  response.writeHead(200, { 'content-type': file.endsWith('.js') ? 'text/javascript' : 'text/html' });
  response.end(readFileSync(join(PAGE, file)));
});
// Two backends of the page: the baggage each received.
const received = { listed: [], unlisted: [] };
const backend = (name) => (request, response) => {
  response.setHeader('access-control-allow-origin', page);
  response.setHeader('access-control-allow-headers', 'baggage, content-type');
  if (request.method == 'POST') received[name].push(request.headers.baggage ?? null);
  response.end();
};
const listed = await serve(backend('listed'));
const unlisted = await serve(backend('unlisted'));

const work = mkdtempSync(join(tmpdir(), 'sessiond-instruments-'));
writeFileSync(join(work, 'sessiond.toml'), `[namespaces.web]\nidle_timeout = "2s"\nallowed_origins = ["${page}", "${page.replace('127.0.0.1', 'a.sessiond.test')}", "${page.replace('127.0.0.1', 'b.sessiond.test')}"]\n`);
const sessiond = spawn(process.env.SESSIOND, ['--listen', '127.0.0.1:0', '--config', join(work, 'sessiond.toml'), '--redis-url', process.env.REDIS_URL], {
  env: { ...process.env, SESSIOND_LOG_FORMAT: 'json', SESSIOND_SECRET: 'instruments-e2e-secret-0123456789' },
  stdio: ['ignore', 'pipe', 'inherit'],
});
const service = await new Promise((resolve, reject) => {
  let log = '';
  sessiond.stdout.on('data', (chunk) => {
    log += chunk;
    const port = log.match(/"port":(\d+)/);
    if (port) resolve(`http://127.0.0.1:${port[1]}`);
  });
  sessiond.on('exit', (code) => reject(new Error(`sessiond exited (${code}): ${log}`)));
});

/** What sessiond holds for a client key: the current session's id, or null. */
async function held(client) {
  const response = await fetch(`${service}/v1/sessions/current`, {
    method: 'POST',
    body: JSON.stringify({ namespace: 'web', client, create: false }),
  });
  return response.status == 404 ? null : (await response.json()).session_id;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // The subdomains of cookieDomain's test resolve to this machine.
  args: ['--host-resolver-rules=MAP *.sessiond.test 127.0.0.1', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const pageErrors = [];
const baggageToSessiond = [];

/** A tab of `profile` on the test page, ready once its client has its first answer. */
async function open(profile, { storage = 'local', lifecycle = 'stream', host = '127.0.0.1', sessiond = service, ...more } = {}) {
  const tab = await profile.newPage();
  tab.sessionCalls = [];
  tab.on('pageerror', (e) => pageErrors.push(String(e)));
  tab.on('request', (r) => {
    if (!r.url().startsWith(`${service}/v1/sessions/`)) return;
    tab.sessionCalls.push(r.url());
    if (r.headers().baggage) baggageToSessiond.push(r.headers().baggage);
  });
  // sessiond's own origin is listed too: its calls must never carry the baggage.
  const query = new URLSearchParams([['sessiond', sessiond], ['storage', storage], ['listed', listed],
    ['listed', service], ['lifecycle', lifecycle], ...Object.entries(more)]);
  tab.instruments = lifecycle == 'static' ? 7 : 6;
  await tab.goto(`${page.replace('127.0.0.1', host)}/?${query}`);
  await tab.waitForFunction(() => document.title == 'ready');
  const answer = await tab.evaluate(() => e2e.ready());
  assert.equal(answer.ok, sessiond == service, JSON.stringify(answer));
  return tab;
}

/** Every instrument of `tab` emits once under `label`; answers the ids they carried. */
async function emitted(tab, label) {
  await tab.evaluate((label) => e2e.emit(label), label);
  const seen = await tab.waitForFunction(([label, count]) => {
    const ids = e2e.seen()[label];
    return ids && Object.keys(ids).length == count ? ids : false;
  }, [label, tab.instruments], { timeout: 10000 }).catch(async (e) => {
    throw new Error(`${label}: not every instrument emitted: ${JSON.stringify(await tab.evaluate((label) => e2e.seen()[label], label))}`, { cause: e });
  });
  return seen.jsonValue();
}

/** Asserts that every instrument carried `id` (and the Sentry context its index and link). */
function allCarry(ids, session, where) {
  for (const [instrument, id] of Object.entries(ids)) {
    const expected = instrument.endsWith('context')
      ? `${session.session_id}/${session.index}/${session.previous_session_id}` : session.session_id;
    assert.equal(id, expected, `${where}: ${instrument}`);
  }
}

/** After the idle timeout, a click in tab `a`: both tabs, every instrument, show the new id,
 * `b` without a request of its own. Answers the new session; records b's switch. */
async function rotate(a, b, session, key, label) {
  const before = session.session_id;
  await sleep(IDLE_MS + 700);
  b.sessionCalls.length = 0;
  await a.bringToFront();
  await a.mouse.click(5, 5);
  await a.waitForFunction((before) => e2e.current() && e2e.current().session_id != before, before);
  await b.waitForFunction((before) => e2e.current() && e2e.current().session_id != before, before, { timeout: 1000 });
  session = await a.evaluate(() => e2e.current());
  assert.equal((await b.evaluate(() => e2e.current())).session_id, session.session_id);
  assert.deepEqual(b.sessionCalls, [], 'the other tab adopted the change without a request');
  assert.equal(session.previous_session_id, before);
  assert.equal(await held(key), session.session_id);
  const atA = (await a.evaluate(() => e2e.changes)).at(-1);
  const atB = (await b.evaluate(() => e2e.changes)).at(-1);
  assert.equal(atB.id, session.session_id);
  assert.equal(atB.previousId, before);
  switches.push(atB.at - atA.at);
  allCarry(await emitted(a, `a-${label}`), session, `tab a after ${label}`);
  allCarry(await emitted(b, `b-${label}`), session, `tab b after ${label}`);
  return session;
}

const switches = [];
let failed = false;
try {
  const profile = await browser.newContext();
  const a = await open(profile);
  const b = await open(profile, { lifecycle: 'static' });
  const key = await a.evaluate(() => e2e.key());
  assert.equal(await b.evaluate(() => e2e.key()), key, 'two tabs, one client key');
  let session = await a.evaluate(() => e2e.current());
  assert.equal(await held(key), session.session_id, 'the page shows what sessiond holds');
  allCarry(await emitted(a, 'a1'), session, 'tab a');
  allCarry(await emitted(b, 'b1'), session, 'tab b');
  for (const tab of [a, b]) {
    const every = await tab.evaluate(() => e2e.everyId());
    assert.ok(every.faro.length > 0);
    for (const [instrument, ids] of Object.entries(every)) assert.deepEqual(ids, [session.session_id], `all of ${instrument}`);
  }
  console.log(`two tabs: every span, log record, Faro item and Sentry event carries ${session.session_id}, sessiond's id for the client`);

  // Faro's own timers: its stored session aged past its inactivity and lifetime limits.
  const faroOwn = await a.evaluate(() => e2e.ageFaroSession());
  await sleep(1200); // past Faro's throttle of its session checks (STORAGE_UPDATE_DELAY, 1 s)
  // On a slow machine sessiond's own 2 s idle timeout may run out by now: the items must carry
  // the id sessiond holds when they are made, whichever that is, and never one of Faro's. Should
  // sessiond rotate while they are being made, they are made once more.
  for (let attempt = 1; ; attempt++) {
    const before = await held(key);
    const ids = await emitted(a, `a-faro${attempt}`);
    const now = await a.evaluate(() => e2e.current());
    if (before != now?.session_id && attempt < 3) continue;
    assert.equal(await held(key), now.session_id, 'the page shows what sessiond holds');
    allCarry(ids, now, 'after Faro rotated by its own timers');
    session = now;
    break;
  }
  const faroNew = await a.evaluate(() => JSON.parse(sessionStorage.getItem('com.grafana.faro.session')));
  assert.ok(faroNew.started > faroOwn.started, 'Faro started a session of its own by its timers');
  assert.equal(await a.evaluate(() => e2e.faroSessionId()), session.session_id, "Faro's session follows sessiond's");
  console.log(`Faro's inactivity and lifetime timers ran out (Faro started a session of its own); its items still carry sessiond's id`);

  for (let round = 1; round <= 3; round++) session = await rotate(a, b, session, key, `idle${round}`);
  console.log(`after the idle timeout, a click in one tab gave every instrument in both tabs the new id, 3 times`);

  const observed = await b.evaluate(() => e2e.observed);
  assert.match(observed.join('\n'), new RegExp(`ended [0-9a-f]{20}\\nstarted ${session.session_id} after [0-9a-f]{20}$`), 'the OpenTelemetry observers heard the rotation in the other tab');

  // One tab ends the session; the other tab never carries the ended id again.
  // A late answer: sessiond answers a tick of tab b before the end, but the answer reaches b
  // only after b heard of the end; b must not take the ended session back.
  const ended = session.session_id;
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  const answered = new Promise((resolve) => b.route(`${service}/v1/sessions/tick`, async (route) => {
    const response = await route.fetch();
    resolve((await response.json()).session_id);
    await gate;
    await route.fulfill({ response });
  }));
  await b.bringToFront();
  await b.mouse.click(5, 5);
  assert.equal(await answered, ended, "sessiond answered b's tick with the session about to end");
  const end = await a.evaluate(() => e2e.client.end());
  assert.ok(end.ok && end.session.ended_at, JSON.stringify(end));
  // The other tab hears the end (onChange with null), whatever its instruments ask next.
  const heard = await b.waitForFunction((ended) => e2e.changes.find((c) => c.id === null && c.previousId == ended),
    ended, { timeout: 1000 });
  const endA = (await a.evaluate(() => e2e.changes)).find((c) => c.id === null);
  switches.push((await heard.jsonValue()).at - endA.at);
  release();
  await b.waitForFunction(() => !e2e.client.pending);
  await b.unroute(`${service}/v1/sessions/tick`);
  assert.ok(!(await b.evaluate(() => e2e.current()))?.session_id?.startsWith(ended), 'the late answer was not taken back');
  const between = await emitted(b, 'b-after-end');
  for (const [instrument, id] of Object.entries(between)) {
    assert.ok(!String(id).startsWith(ended), `${instrument} carried the ended id`);
  }
  await b.bringToFront();
  await b.mouse.click(5, 5);
  await b.waitForFunction(() => e2e.current() !== null);
  await b.waitForFunction(() => !e2e.client.pending);
  session = await b.evaluate(() => e2e.current());
  assert.notEqual(session.session_id, ended);
  assert.equal(session.previous_session_id, ended);
  allCarry(await emitted(b, 'b-new'), session, 'tab b after the end');
  await a.waitForFunction((id) => e2e.current() && e2e.current().session_id == id, session.session_id, { timeout: 1000 });
  allCarry(await emitted(a, 'a-new'), session, 'tab a after the end');
  console.log(`a tab ended ${ended}: the other tab's spans never carried it again, and its next activity gave both tabs ${session.session_id}`);

  // Baggage: fetch and XMLHttpRequest to the listed origin, merged with baggage already set.
  for (const how of ['fetch', 'xhr']) {
    await a.evaluate(([url, how]) => e2e.call(url, how, 'tenant=acme'), [listed, how]);
    await a.evaluate(([url, how]) => e2e.call(url, how), [listed, how]);
    await a.evaluate(([url, how]) => e2e.call(url, how, 'tenant=acme'), [unlisted, how]);
  }
  const sid = `session.id=${session.session_id}`;
  assert.deepEqual(received.listed, [`tenant=acme,${sid}`, sid, `tenant=acme,${sid}`, sid]);
  assert.deepEqual(received.unlisted, ['tenant=acme', 'tenant=acme']);
  assert.deepEqual(baggageToSessiond, [], "sessiond's own calls carry no baggage, even when its origin is listed");
  console.log(`baggage ${sid} reached the listed origin (fetch and XMLHttpRequest, merged), and not the other, nor sessiond`);
  await profile.close();

  // storage 'session': one client per tab.
  const perTab = await browser.newContext();
  const [c, d] = [await open(perTab, { storage: 'session' }), await open(perTab, { storage: 'session' })];
  const [sc, sd] = [await c.evaluate(() => e2e.current()), await d.evaluate(() => e2e.current())];
  assert.notEqual(sc.session_id, sd.session_id, "storage 'session': two tabs, two sessions");
  assert.notEqual(await c.evaluate(() => e2e.key()), await d.evaluate(() => e2e.key()));
  await perTab.close();

  // storage 'memory': nothing stored until persist(); then a later load finds the key and session.
  const consent = await browser.newContext();
  const m = await open(consent, { storage: 'memory' });
  const remembered = await m.evaluate(() => e2e.current());
  assert.equal(await m.evaluate(() => localStorage.getItem('sessiond.client')), null, "storage 'memory' stores nothing");
  await m.evaluate(() => e2e.client.persist());
  const later = await open(consent);
  assert.equal((await later.evaluate(() => e2e.current())).session_id, remembered.session_id, 'persist() kept the client and its session');
  console.log("storage 'session' gave two tabs two sessions; 'memory' stored nothing until persist(), which kept the id");
  await consent.close();

  // cookieDomain: subdomains share the client key, so they show one session.
  const subdomains = await browser.newContext();
  const [x, y] = [await open(subdomains, { host: 'a.sessiond.test', cookieDomain: '.sessiond.test' }),
    await open(subdomains, { host: 'b.sessiond.test', cookieDomain: '.sessiond.test' })];
  const cookieKey = await x.evaluate(() => document.cookie.match(/sessiond_client=([^;]*)/)[1]);
  assert.equal(await y.evaluate(() => document.cookie.match(/sessiond_client=([^;]*)/)[1]), cookieKey);
  const sx = await x.evaluate(() => e2e.current());
  assert.equal((await y.evaluate(() => e2e.current())).session_id, sx.session_id, 'two subdomains, one session');
  assert.equal(await held(cookieKey), sx.session_id);
  await subdomains.close();

  // client: a key handed over (a native app's, to its webview) is the page's; setUser binds late.
  const webview = await browser.newContext();
  const handed = 'native-app-key-0123456789abcdef';
  const v = await open(webview, { client: handed });
  const sv = await v.evaluate(() => e2e.current());
  assert.equal(await held(handed), sv.session_id, 'the page uses the key handed over');
  const bound = await v.evaluate(() => e2e.client.setUser('user-42'));
  assert.equal(bound.session.session_id, sv.session_id, 'binding a user late keeps the session');
  assert.equal(bound.session.attributes.user_id, 'user-42');
  console.log("cookieDomain: two subdomains showed one session; a key handed over was adopted, and setUser bound the user to its session");
  await webview.close();

  // Activity ticks at most every tickEveryMs.
  const leaving = await browser.newContext();
  const THROTTLE_MS = 1500;
  const l = await open(leaving, { tickEveryMs: String(THROTTLE_MS) });
  await l.evaluate(() => {
    // Every tick the client sends, when: the client calls fetch as the page has it.
    window.ticks = [];
    const fetch = window.fetch;
    window.fetch = function (url, init) {
      if (String(url).endsWith('/v1/sessions/tick')) window.ticks.push(Date.now());
      return fetch.call(this, url, init);
    };
  });
  // The page's first answer, or its coming to the foreground, counts as the last tick.
  await l.waitForFunction((ms) => Date.now() - e2e.client.lastTick >= ms, THROTTLE_MS);
  for (let n = 0; n < 4; n++) await l.mouse.click(5, 5);
  assert.equal(await l.evaluate(() => window.ticks.length), 1, 'four clicks in a row, one tick');
  await l.waitForFunction((ms) => Date.now() - window.ticks[0] >= ms, THROTTLE_MS);
  await l.mouse.click(5, 5);
  assert.equal(await l.evaluate(() => window.ticks.length), 2, 'a click once tickEveryMs has passed ticks again');
  console.log(`tickEveryMs: four clicks sent one tick, and one after ${THROTTLE_MS} ms another`);
  await leaving.close();

  // Without BroadcastChannel, the storage event carries the change.
  const older = await browser.newContext();
  await older.addInitScript(() => delete window.BroadcastChannel);
  const [a2, b2] = [await open(older), await open(older)];
  await rotate(a2, b2, await a2.evaluate(() => e2e.current()), await a2.evaluate(() => e2e.key()), 'fallback');
  console.log('without BroadcastChannel, the storage event gave the other tab the new id');
  await older.close();
  const unconsented = await browser.newContext();
  await unconsented.addInitScript(() => delete window.BroadcastChannel);
  const quiet = await open(unconsented, { storage: 'memory' });
  assert.equal(await quiet.evaluate(() => localStorage.length), 0, "'memory' stores nothing, also without BroadcastChannel");
  await unconsented.close();

  // The service unreachable from the start: no instrument carries an id, none is invented.
  const offline = await browser.newContext();
  const o = await open(offline, { sessiond: 'http://127.0.0.1:9' });
  const none = await emitted(o, 'offline');
  assert.deepEqual(Object.values(none), Array(6).fill(null), `no id while unreachable: ${JSON.stringify(none)}`);
  // Answers that are not sessions, and a storage that refuses every write.
  const hostile = await browser.newContext();
  await hostile.addInitScript(() => {
    Storage.prototype.setItem = () => { throw new DOMException('full', 'QuotaExceededError'); };
  });
  const h = await open(hostile);
  assert.equal(await h.evaluate(() => localStorage.getItem('sessiond.client')), null);
  const cached = await h.evaluate(() => e2e.current());
  assert.ok(cached, 'with storage full the page still gets its session');
  const kept = await h.evaluate(() => document.cookie.match(/sessiond_client=([^;]*)/)[1]);
  assert.equal(await held(kept), cached.session_id, 'the key refused by the storage is kept in a cookie');
  for (const body of ['{"session_id": 42}', 'not json', '']) {
    await h.route(`${service}/v1/sessions/**`, (route) => route.fulfill({ status: 200, contentType: 'application/json', body }));
    const answer = await h.evaluate(() => e2e.client.end());
    assert.equal(answer.ok, false, `a malformed answer (${body}) is an error: ${JSON.stringify(answer)}`);
    assert.equal(answer.session, undefined);
    await h.unroute(`${service}/v1/sessions/**`);
  }
  assert.equal((await h.evaluate(() => e2e.current())).session_id, cached.session_id, 'a malformed answer changes nothing');
  // Unreachable once the cache went stale: the cached id while the refresh is under way, then none.
  await h.route(`${service}/v1/sessions/**`, (route) => route.abort());
  await sleep(IDLE_MS + 700);
  await emitted(h, 'stale');
  await h.waitForFunction(() => !e2e.client.pending);
  const stale = await emitted(h, 'stale-unreachable');
  assert.deepEqual(Object.values(stale), Array(6).fill(null), `no id once the refresh failed: ${JSON.stringify(stale)}`);
  console.log('unreachable, malformed answers, storage full: no instrument carried an invented or stale id');
  await offline.close();
  await hostile.close();

  assert.deepEqual(pageErrors, [], 'nothing thrown into the pages');
  const sorted = [...switches].sort((x, y) => x - y);
  console.log(`the other tab's switch, over ${sorted.length} changes: median ${sorted[sorted.length >> 1].toFixed(1)} ms, max ${sorted.at(-1).toFixed(1)} ms`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
  sessiond.kill();
  for (const server of servers) server.close();
}
process.exit(failed ? 1 : 0);
