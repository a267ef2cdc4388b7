// Load: a constant arrival rate with a realistic mix of calls over a large pool of clients:
// mostly tick and current, some foreground, background, end, report and batch. Thresholds on
// errors and on p95/p99 latency fail the run.
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=2000 -e DURATION=1m -e POOL=100000 deploy/k6/load.js
// RATE is calls per second, P95_MS and P99_MS the latency thresholds (default 20 and 50).
import { check } from 'k6';
import { clientFrom, post, steadyRate } from './lib.js';

const POOL = Number(__ENV.POOL || 100000);

export const options = {
  scenarios: { mix: steadyRate(1000, '1m', 200, 1000) },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.999'],
    http_req_duration: [`p(95)<${__ENV.P95_MS || 20}`, `p(99)<${__ENV.P99_MS || 50}`],
  },
};

// The share of each call, out of 100.
const MIX = [
  [55, 'tick'], [25, 'current'], [5, 'foreground'], [5, 'background'],
  [3, 'end'], [2, 'report'], [5, 'batch'],
];

function pick() {
  let roll = Math.random() * 100;
  for (const [share, call] of MIX) {
    if ((roll -= share) < 0) return call;
  }
  return 'tick';
}

export default function () {
  const client = clientFrom(POOL);
  const call = pick();
  let res;
  if (call === 'batch') {
    const operations = Array.from({ length: 10 }, () => ({ op: 'tick', client: clientFrom(POOL) }));
    res = post('/v1/sessions/batch', { operations }, 'batch');
  } else if (call === 'report') {
    // A report needs a session: the tick before it makes sure there is one.
    post('/v1/sessions/tick', { client }, 'tick');
    res = post('/v1/sessions/report', { client, errors: 1 }, 'report');
  } else if (call === 'end') {
    post('/v1/sessions/tick', { client }, 'tick');
    res = post('/v1/sessions/end', { client }, 'end');
  } else {
    res = post(`/v1/sessions/${call}`, { client, attributes: { release: 'k6-load' } }, call);
  }
  check(res, { [`${call}: 200`]: (r) => r.status === 200 });
}
