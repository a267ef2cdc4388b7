// Soak: a long steady rate of ticks and current over a large client pool; the run fails on
// more than 0.1% errors. Pair it with restarts of the store to see recovery, and watch
// sessiond's memory before and after.
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=500 -e DURATION=10m deploy/k6/soak.js
import { check } from 'k6';
import { clientFrom, post, steadyRate } from './lib.js';

const POOL = Number(__ENV.POOL || 100000);

export const options = {
  scenarios: { steady: steadyRate(500, '10m', 100, 500) },
  thresholds: {
    http_req_failed: ['rate<0.001'],
  },
};

export default function () {
  const call = Math.random() < 0.7 ? 'tick' : 'current';
  const res = post(`/v1/sessions/${call}`, { client: clientFrom(POOL) }, call);
  check(res, { [`${call}: 200`]: (r) => r.status === 200 });
}
