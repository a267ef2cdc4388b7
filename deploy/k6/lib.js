// Shared by the k6 scripts: the service's address, JSON calls, and checks on their answers.
import http from 'k6/http';
import { check } from 'k6';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const ADMIN = __ENV.ADMIN_TOKEN ? { Authorization: `Bearer ${__ENV.ADMIN_TOKEN}` } : {};
const JSON_HEADERS = { 'Content-Type': 'application/json' };

/** POSTs a JSON body to a session call; `name` groups the metrics by call, not by URL. */
export function post(path, body, name) {
  return http.post(`${BASE_URL}${path}`, JSON.stringify(body), {
    headers: JSON_HEADERS,
    tags: { name: name || path },
  });
}

/** GETs a path, with the admin token when ADMIN_TOKEN is set. */
export function get(path, name) {
  return http.get(`${BASE_URL}${path}`, { headers: ADMIN, tags: { name: name || path } });
}

const SESSION_ID = /^[0-9a-f]{20}$/;

/** Checks that a response is a session: 200, an 80-bit hex id, an index. */
export function isSession(res, what) {
  return check(res, {
    [`${what}: 200`]: (r) => r.status === 200,
    [`${what}: a session id`]: (r) => r.status === 200 && SESSION_ID.test(r.json('session_id')),
    [`${what}: an index`]: (r) => r.status === 200 && r.json('index') >= 1,
  });
}

/** A constant-arrival-rate scenario: RATE calls per second for DURATION, as -e options say. */
export function steadyRate(rate, duration, vus, maxVus) {
  return {
    executor: 'constant-arrival-rate',
    rate: Number(__ENV.RATE || rate),
    timeUnit: '1s',
    duration: __ENV.DURATION || duration,
    preAllocatedVUs: Number(__ENV.VUS || vus),
    maxVUs: Number(__ENV.MAX_VUS || maxVus),
  };
}

/** A client key from a pool of `size` keys, so load revisits clients as instruments do. */
export function clientFrom(size) {
  return `k6-client-${String(Math.floor(Math.random() * size)).padStart(8, '0')}`;
}
