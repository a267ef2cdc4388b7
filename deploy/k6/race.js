// Race: many virtual users calling for a few clients at once, as every instrument of a page
// does at start-up. Each client must get exactly one session: the run fails unless every
// client's sessions were created once, and every answer is that first session (index 1).
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e CLIENTS=5 -e VUS=200 -e DURATION=20s deploy/k6/race.js
// The namespace's idle_timeout must be longer than the run (the default 30m is).
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { post } from './lib.js';

const CLIENTS = Number(__ENV.CLIENTS || 5);
const created = new Counter('sessions_created');

const perClient = {};
for (let i = 0; i < CLIENTS; i++) {
  perClient[`sessions_created{client:c${i}}`] = ['count==1'];
}

export const options = {
  vus: Number(__ENV.VUS || 200),
  duration: __ENV.DURATION || '20s',
  thresholds: Object.assign(
    { checks: ['rate==1'], http_req_failed: ['rate==0'] },
    perClient,
  ),
};

// One run id for every virtual user (each VU has an init context of its own), so all of them
// race for the same few clients.
export function setup() {
  return { run: __ENV.RUN || `${Date.now()}` };
}

export default function (data) {
  const n = Math.floor(Math.random() * CLIENTS);
  const call = Math.random() < 0.5 ? 'current' : 'tick';
  const res = post(`/v1/sessions/${call}`, { client: `k6-race-${data.run}-${String(n).padStart(4, '0')}` }, call);
  check(res, {
    'answered 200': (r) => r.status === 200,
    'the first session, never a second one': (r) => r.status === 200 && r.json('index') === 1,
  });
  if (res.status === 200 && res.json('created') === true) {
    created.add(1, { client: `c${n}` });
  }
}
