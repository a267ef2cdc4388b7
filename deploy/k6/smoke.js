// Smoke: every call of the API once, with checks on each answer; any failed check or
// unexpected status fails the run. k6 run -e BASE_URL=http://127.0.0.1:8080 deploy/k6/smoke.js
import { check } from 'k6';
import { BASE_URL, get, isSession, post } from './lib.js';

export const options = {
  vus: 1,
  iterations: 1,
  thresholds: {
    checks: ['rate==1'],
    http_req_failed: ['rate==0'],
  },
};

export default function () {
  const client = `k6-smoke-${Date.now()}-${Math.floor(Math.random() * 1e9)}`;
  const attrs = { release: 'k6-smoke', environment: 'test', platform: 'web' };

  const first = post('/v1/sessions/current', { client, attributes: attrs }, 'current');
  isSession(first, 'current');
  check(first, {
    'current: starts a session': (r) => r.json('created') === true && r.json('index') === 1,
  });
  const id = first.json('session_id');

  const ticked = post('/v1/sessions/tick', { client, attributes: { user_id: 'k6-user' } }, 'tick');
  isSession(ticked, 'tick');
  check(ticked, {
    'tick: same session': (r) => r.json('session_id') === id,
    'tick: binds the user late': (r) => r.json('attributes.user_id') === 'k6-user',
  });

  isSession(post('/v1/sessions/background', { client }, 'background'), 'background');
  isSession(post('/v1/sessions/foreground', { client }, 'foreground'), 'foreground');

  const reported = post('/v1/sessions/report', { client, errors: 2 }, 'report');
  isSession(reported, 'report');
  check(reported, { 'report: errored': (r) => r.json('status') === 'errored' && r.json('errors') === 2 });

  const batch = post('/v1/sessions/batch', {
    operations: [
      { op: 'tick', client },
      { op: 'current', client, create: false },
    ],
  }, 'batch');
  check(batch, {
    'batch: 200': (r) => r.status === 200,
    'batch: both answered with the session': (r) =>
      r.json('results').length === 2 && r.json('results').every((s) => s.session_id === id),
  });

  const ended = post('/v1/sessions/end', { client, status: 'exited' }, 'end');
  isSession(ended, 'end');
  check(ended, { 'end: final status': (r) => r.json('status') === 'errored' && r.json('ended_at') !== null });

  const next = post('/v1/sessions/tick', { client }, 'tick');
  check(next, {
    'after end: a new session, linked': (r) =>
      r.json('index') === 2 && r.json('previous_session_id') === id && r.json('reason') === 'ended',
  });

  const lookup = get(`/v1/sessions/${id}`, 'lookup');
  check(lookup, { 'lookup: the ended session': (r) => r.status === 200 && r.json('status') === 'errored' });

  const events = get('/v1/events?limit=1000', 'events');
  check(events, { 'events: 200 with a cursor': (r) => r.status === 200 && Array.isArray(r.json('events')) });

  const stats = get('/v1/stats', 'stats');
  check(stats, { 'stats: counts sessions': (r) => r.status === 200 && r.json('sessions') >= 2 });

  check(get('/healthz', 'healthz'), { 'healthz: 200': (r) => r.status === 200 });
  check(get('/readyz', 'readyz'), { 'readyz: 200': (r) => r.status === 200 });
  check(get('/metrics', 'metrics'), {
    'metrics: prometheus text': (r) => r.status === 200 && r.body.includes('sessiond_sessions_created_total'),
  });
  check(get('/openapi.yaml', 'openapi'), { 'openapi: served': (r) => r.status === 200 && r.body.startsWith('openapi:') });
  console.log(`smoke against ${BASE_URL}: done`);
}
