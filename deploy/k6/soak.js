// Soak: a long steady rate of ticks and current over a large client pool; the run fails on
// more errors than MAX_ERROR_RATE (default 0.1%). Every session the service says it created
// is counted in `sessions_created`, tagged with its id, so a CSV output (--out csv=FILE) lists
// every id issued. bench/soak.py runs it while restarting Redis twice and reports recovery,
// memory and duplicate ids.
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=500 -e DURATION=10m deploy/k6/soak.js
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { clientFrom, post, steadyRate } from './lib.js';

const POOL = Number(__ENV.POOL || 100000);
const created = new Counter('sessions_created');

export const options = {
  scenarios: { steady: steadyRate(500, '10m', 100, 500) },
  thresholds: {
    http_req_failed: [`rate<${Number(__ENV.MAX_ERROR_RATE || 0.001)}`],
  },
};

export default function () {
  const call = Math.random() < 0.7 ? 'tick' : 'current';
  const res = post(`/v1/sessions/${call}`, { client: clientFrom(POOL) }, call);
  check(res, { [`${call}: 200`]: (r) => r.status === 200 });
  if (res.status === 200 && res.json('created') === true) {
    created.add(1, { session_id: res.json('session_id') });
  }
}
