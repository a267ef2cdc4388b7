/**
 * @sessiond/browser: the page's one client of sessiond, the session authority, shared by every
 * instrument of the page and kept coherent across the tabs of a browser profile.
 *
 *   const sessions = getClient({ url: 'https://sessions.example.org', namespace: 'web' });
 *   const answer = await sessions.session(); // never rejects
 *   if (answer.ok) use(answer.session.session_id); else report(answer.error);
 *   sessions.onChange((session, previousId) => use(session && session.session_id));
 *
 * Instruments starting together share one request; the answer is cached until its expires_at.
 * Real activity (pointer, key, scroll) sends a throttled tick, hiding the page sends background
 * and showing it foreground. When an answer shows the session was created, rotated or ended,
 * the other tabs hear it at once (BroadcastChannel, else the storage event), so no tab keeps an
 * id another tab knows is gone. No id is ever invented, and nothing here throws into the page:
 * where there is no browser (server-side rendering), every call answers {ok: false, error}.
 */

/** What a session carries from its start; user_id may be bound later, once. */
export interface Attributes {
  release?: string;
  environment?: string;
  platform?: string;
  user_id?: string;
}

/** A session as sessiond answers it. */
export interface Session {
  session_id: string;
  namespace: string;
  client?: string;
  index: number;
  previous_session_id: string | null;
  started_at: string;
  last_activity_at: string;
  expires_at: string;
  ended_at?: string | null;
  created: boolean;
  reason?: string;
  status: string;
  errors?: number;
  provisional?: boolean;
  attributes?: Attributes;
}

/** What every call resolves to; it never rejects. */
export type Answer = { ok: true; session: Session } | { ok: false; error: string };

export interface Options {
  /** sessiond's base URL, e.g. https://sessions.example.org ('' for the page's own origin). */
  url: string;
  namespace?: string;
  /** Sent with every call; frozen by the service when a session starts. */
  attributes?: Attributes;
  /** Where the client key lives: 'local' (every tab one client), 'session' (one per tab), or
   * 'memory' (nothing stored until persist()). */
  storage?: 'local' | 'session' | 'memory';
  /** Keep the client key in a cookie on this domain (e.g. '.example.com') for subdomains. */
  cookieDomain?: string;
  /** A client key handed over, by a native app to its webview or by a server-rendered page. */
  client?: string;
  /** End the session with a beacon when the page goes away. */
  endOnPagehide?: boolean;
  /** Add the baggage entry session.id=<id> to fetch and XMLHttpRequest calls to these exact
   * origins (scheme://host[:port]). */
  propagate?: { origins: string[] };
  /** The least time between two activity ticks; 10 s by default. */
  tickEveryMs?: number;
}

/** A handled-errors or crash report; sessionId names a session other than the current one. */
export interface Report {
  errors?: number;
  crashed?: boolean;
  sessionId?: string;
}

export type Listener = (session: Session | null, previousId: string | null) => void;

export interface Client {
  /** The cached session: null before the first answer, once it ended or was replaced, and once
   * it expired with no refresh under way. */
  readonly current: Session | null;
  /** The current session: the cached one while live, else one request shared by every caller. */
  session(): Promise<Answer>;
  /** Called when the current session changes, here or in another tab; returns unsubscribe. */
  onChange(listener: Listener): () => void;
  /** Binds the user to the current session (once; section 8 of the contract). */
  setUser(userId: string): Promise<Answer>;
  /** Ends the current session; the next call starts a new one. */
  end(status?: 'exited' | 'crashed' | 'abnormal'): Promise<Answer>;
  /** With storage 'memory': stores the client key where 'local' reads it (after consent). */
  persist(): void;
  /** Reports errors or a crash, retried with one report_id, so it is counted once. */
  report(report?: Report): Promise<Answer>;
}

const KEY = 'sessiond.client';
// The pauses before a report's retries.
const RETRY_MS = [300, 1500, 5000];
// After a failed refresh, how long session() answers that failure instead of asking again.
const BACKOFF_MS = 1000;
const registry: Record<string, Client> = {};
const w: any = typeof window != 'undefined' ? window : undefined;

const randomKey = () => {
  let hex = '';
  for (const b of w.crypto.getRandomValues(new Uint8Array(16))) hex += (b + 256).toString(16).slice(1);
  return hex;
};

// Never lets a failure (storage full or denied, a listener's error) into the page.
const quietly = <T>(f: () => T): T | undefined => {
  try {
    return f();
  } catch {
    return undefined;
  }
};

const cookie = () => quietly(() => (w.document.cookie.match(/(?:^|; )sessiond_client=([^;]*)/) || [])[1]);

class SessiondClient implements Client {
  url: string;
  ns: string;
  attributes?: Attributes;
  o: Options;
  key?: string;
  off?: string;
  cur: Session | null = null;
  pending: Promise<Answer> | null = null;
  failed?: [number, Answer];
  ended?: string;
  lastTick = 0;
  dead = new Set<string>();
  listeners: Listener[] = [];
  channel?: any;

  constructor(o: Options) {
    this.o = o;
    this.url = String(o.url || '').replace(/\/+$/, '');
    this.ns = o.namespace || 'default';
    this.attributes = o.attributes;
    if (!w || !w.fetch || !w.crypto) {
      this.off = 'unsupported: no browser here';
      return;
    }
    // 'memory' reads where 'local' keeps the key, so a key persisted earlier is found.
    const store = o.storage == 'session' ? w.sessionStorage : w.localStorage;
    const stored = quietly(() => store.getItem(KEY));
    const kept = (o.cookieDomain && cookie()) || (stored === undefined ? cookie() : stored);
    this.key = o.client || kept || randomKey();
    if (o.storage != 'memory' && this.key != kept) this.keep(store);
    this.listen();
    if (o.propagate) propagate(this, o.propagate.origins);
  }

  // Stores the key: in the cookie when asked to, or when the storage refuses it.
  keep(store: any) {
    if (this.o.cookieDomain || !quietly(() => (store.setItem(KEY, this.key), 1))) {
      const domain = this.o.cookieDomain ? `; domain=${this.o.cookieDomain}` : '';
      quietly(() => (w.document.cookie = `sessiond_client=${this.key}${domain}; path=/; max-age=34560000; SameSite=Lax`));
    }
  }

  persist() {
    if (this.key) this.keep(w.localStorage);
  }

  get current() {
    return this.cur && (this.pending || Date.parse(this.cur.expires_at) > Date.now()) ? this.cur : null;
  }

  body(extra: object, op: string) {
    // A report carries no attributes: they were frozen when its session started.
    return JSON.stringify({
      namespace: this.ns,
      client: this.key,
      attributes: op == 'report' ? undefined : this.attributes,
      ...extra,
    });
  }

  // One call. text/plain needs no preflight. `keep` false: the answer is not the current session.
  async call(op: string, extra: object = {}, keep = true): Promise<Answer & { retry?: boolean }> {
    if (this.off) return { ok: false, error: this.off };
    let response: any;
    try {
      response = await w.fetch(`${this.url}/v1/sessions/${op}`, {
        method: 'POST',
        headers: { 'content-type': 'text/plain' },
        body: this.body(extra, op),
        keepalive: op == 'background' || op == 'end',
        credentials: 'omit',
      });
    } catch (e: any) {
      return { ok: false, error: 'unreachable: ' + (e && e.message), retry: true };
    }
    const retry = response.status >= 500 || response.status == 429;
    const body = await response.json().catch(() => null);
    if (!response.ok || !body || typeof body.session_id != 'string') {
      return { ok: false, error: (body && body.detail) || 'HTTP ' + response.status, retry };
    }
    if (!keep) return { ok: true, session: body };
    if (body.ended_at) {
      this.gone(body.session_id, true);
      return { ok: true, session: body };
    }
    // An answer another tab already knows is outdated gives way to what that tab knows.
    this.adopt(body, true);
    return this.cur ? { ok: true, session: this.cur } : { ok: false, error: 'the session ended meanwhile', retry: true };
  }

  // A session this tab or another learned of: kept unless it is known to be gone or older.
  adopt(s: Session, own?: boolean) {
    const before = this.cur;
    if (this.dead.has(s.session_id) || (before && before.session_id != s.session_id && s.index < before.index)) return;
    this.cur = s;
    if (before && before.session_id == s.session_id) return;
    if (before) this.dead.add(before.session_id);
    if (own) this.tell({ s });
    this.fire(s, before ? before.session_id : this.ended || null);
  }

  // The session ended: nothing is current until the next answer.
  gone(id: string, own?: boolean) {
    this.dead.add(id);
    if (own) this.tell({ e: id });
    if (this.cur && this.cur.session_id == id) {
      this.cur = null;
      this.ended = id;
      this.fire(null, id);
    }
  }

  fire(s: Session | null, previousId: string | null) {
    for (const listener of this.listeners.slice()) quietly(() => listener(s, previousId));
  }

  // Tabs sharing this service, namespace and client key hear each other's changes; without
  // BroadcastChannel through localStorage, which 'memory' leaves alone.
  tell(message: object) {
    const m = { ...message, k: this.key };
    quietly(() =>
      this.channel
        ? this.channel.postMessage(m)
        : this.o.storage != 'memory' && w.localStorage.setItem(this.name(), JSON.stringify({ ...m, t: Math.random() }))
    );
  }

  name() {
    return `sessiond|${this.url}|${this.ns}`;
  }

  hear(m: any) {
    if (!m || m.k != this.key) return;
    if (m.s) this.adopt(m.s);
    if (m.e) this.gone(m.e);
  }

  session(): Promise<Answer> {
    if (this.cur && Date.parse(this.cur.expires_at) > Date.now()) return Promise.resolve({ ok: true, session: this.cur });
    if (!this.pending && this.failed && Date.now() - this.failed[0] < BACKOFF_MS) return Promise.resolve(this.failed[1]);
    return this.request('current');
  }

  request(op: string, extra?: object): Promise<Answer> {
    return (this.pending ||= this.call(op, extra).then((answer) => {
      this.pending = null;
      this.failed = answer.ok ? undefined : [Date.now(), answer];
      return answer;
    }));
  }

  onChange(listener: Listener) {
    this.listeners.push(listener);
    return () => {
      this.listeners = this.listeners.filter((l) => l !== listener);
    };
  }

  setUser(userId: string) {
    this.attributes = { ...this.attributes, user_id: userId };
    return this.call('current');
  }

  end(status?: string) {
    return this.call('end', { session_id: this.cur ? this.cur.session_id : undefined, status });
  }

  async report(report: Report = {}): Promise<Answer> {
    const body = {
      report_id: this.off ? '' : randomKey(),
      errors: report.errors || undefined,
      crashed: report.crashed || undefined,
      session_id: report.sessionId || (this.cur ? this.cur.session_id : undefined),
    };
    for (let n = 0; ; n++) {
      const answer = await this.call('report', body, false);
      if (answer.ok || !answer.retry || n >= RETRY_MS.length) return answer;
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS[n]));
    }
  }

  // Activity: a tick at most every tickEveryMs, and at once when the session is over.
  activity() {
    const now = Date.now();
    if (this.current && now - this.lastTick < (this.o.tickEveryMs ?? 10000)) return;
    this.lastTick = now;
    this.request('tick');
  }

  listen() {
    const on = (target: any, type: string, f: (e: any) => void) =>
      target.addEventListener(type, (e: any) => quietly(() => f(e)), { passive: true, capture: true });
    if (w.BroadcastChannel) {
      this.channel = new w.BroadcastChannel(this.name());
      this.channel.onmessage = (e: any) => quietly(() => this.hear(e.data));
    } else on(w, 'storage', (e) => e.key == this.name() && this.hear(JSON.parse(e.newValue)));
    for (const type of ['pointerdown', 'keydown', 'scroll', 'touchstart']) on(w, type, () => this.activity());
    const doc = w.document;
    on(doc, 'visibilitychange', () => {
      if (doc.visibilityState == 'hidden') return this.call('background');
      this.lastTick = Date.now();
      this.request('foreground');
    });
    on(w, 'pagehide', () => {
      if (!this.o.endOnPagehide || !this.cur) return;
      const extra = { session_id: this.cur.session_id };
      if (!(w.navigator.sendBeacon && w.navigator.sendBeacon(this.url + '/v1/sessions/end', this.body(extra, 'end')))) this.call('end', extra);
    });
  }
}

// Tags fetch and XMLHttpRequest calls to the listed origins with baggage session.id=<id>,
// merged with any baggage already set, so backend spans join the session.
function propagate(client: SessiondClient, origins: string[]) {
  const own = quietly(() => new URL(client.url || '/', w.location.href).origin);
  const idFor = (url: any) => {
    const s = client.current;
    const origin = quietly(() => new URL(url, w.location.href).origin);
    return s && origin != own && origins.includes(origin!) ? s.session_id : null;
  };
  const merge = (baggage: string | null, id: string) =>
    (baggage || '')
      .split(',')
      .filter((entry) => entry.trim() && entry.split('=')[0].trim() != 'session.id')
      .concat('session.id=' + id)
      .join(',');
  const fetch = w.fetch;
  w.fetch = function (this: any, input: any, init?: any) {
    const id = idFor(input instanceof w.Request ? input.url : input);
    if (id) {
      quietly(() => {
        const headers = new w.Headers((init && init.headers) || (input instanceof w.Request ? input.headers : undefined));
        headers.set('baggage', merge(headers.get('baggage'), id));
        init = { ...init, headers };
      });
    }
    return fetch.call(this, input, init);
  };
  const xhr = w.XMLHttpRequest && w.XMLHttpRequest.prototype;
  if (!xhr) return;
  const { open, send, setRequestHeader } = xhr;
  xhr.open = function (this: any, _method: string, url: any) {
    this.sdUrl = url;
    this.sdBaggage = null;
    return open.apply(this, arguments);
  };
  xhr.setRequestHeader = function (this: any, name: string, value: string) {
    if (name.toLowerCase() != 'baggage') return setRequestHeader.call(this, name, value);
    this.sdBaggage = this.sdBaggage ? this.sdBaggage + ',' + value : value;
  };
  xhr.send = function (this: any) {
    const id = idFor(this.sdUrl);
    const baggage = id ? merge(this.sdBaggage, id) : this.sdBaggage;
    if (baggage) quietly(() => setRequestHeader.call(this, 'baggage', baggage));
    return send.apply(this, arguments);
  };
}

/** The page's one client for this service and namespace: every instrument gets the same. */
export function getClient(options: Options): Client {
  const id = `${options.url || ''}|${options.namespace || 'default'}`;
  return (registry[id] ||= new SessiondClient(options));
}
