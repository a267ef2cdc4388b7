/*! sessiond.js: the browser client of sessiond, the session authority. No dependencies.
 *
 *   <script src="sessiond.js"></script>
 *   const sessions = Sessiond.get({ url: 'https://sessions.example.org', namespace: 'web' });
 *   const answer = await sessions.session();   // never rejects
 *   if (answer.ok) use(answer.session.session_id); else report(answer.error);
 *   sessions.onChange((session) => use(session.session_id));
 *   sessions.report({ errors: 1 });             // retried safely: applied once
 *
 * Every instrument of a page that asks for the same service and namespace shares one client:
 * the first call's promise, so instruments starting together cause one request and get one id;
 * then the session cached until its expires_at. Real user activity (pointer, key, scroll)
 * sends a throttled tick; hiding the page sends background and showing it foreground; with
 * endOnPagehide the session is ended by a beacon when the page goes away. The client key lives
 * in localStorage (a cookie when that is unavailable), so every tab of a browser profile is
 * one client. When the service cannot be reached the answer says so: no id is ever invented.
 * Nothing here throws into the page.
 */
(function (global) {
  'use strict';

  var KEY = 'sessiond.client';
  // The pauses before a report's retries.
  var RETRY_MS = [300, 1500, 5000];
  var registry = {};

  function now() {
    return Date.now();
  }

  function randomKey() {
    var bytes = new Uint8Array(16);
    global.crypto.getRandomValues(bytes);
    var hex = '';
    for (var i = 0; i < bytes.length; i++) hex += (bytes[i] + 256).toString(16).slice(1);
    return hex;
  }

  function readCookie(name) {
    var match = global.document.cookie.match(new RegExp('(?:^|; )' + name + '=([^;]*)'));
    return match ? decodeURIComponent(match[1]) : null;
  }

  // The key of this browser profile: the stored one, else a new one stored for every tab.
  function clientKey() {
    try {
      var stored = global.localStorage.getItem(KEY);
      if (stored) return stored;
      global.localStorage.setItem(KEY, randomKey());
      // Read back: another tab may have written first, and all tabs must agree.
      return global.localStorage.getItem(KEY);
    } catch (e) {
      try {
        var cookie = readCookie('sessiond_client');
        if (cookie) return cookie;
        var key = randomKey();
        global.document.cookie =
          'sessiond_client=' + key + '; path=/; max-age=' + 400 * 24 * 3600 + '; SameSite=Lax';
        return readCookie('sessiond_client') || key;
      } catch (e2) {
        return null; // The service mints one for this page alone.
      }
    }
  }

  function Client(options) {
    this.url = String(options.url || '').replace(/\/+$/, '');
    this.namespace = options.namespace || 'default';
    this.attributes = options.attributes || undefined;
    this.tickEveryMs = options.tickEveryMs == null ? 10000 : options.tickEveryMs;
    this.endOnPagehide = !!options.endOnPagehide;
    this.client = clientKey();
    this.current = null; // the last session answered
    this.pending = null; // the one request in flight, shared by every caller
    this.lastTick = 0;
    this.listeners = [];
    this.watch();
  }

  Client.prototype.body = function (extra, op) {
    var body = { namespace: this.namespace };
    if (this.client) body.client = this.client;
    // A report carries no attributes: they were frozen when its session started.
    if (this.attributes && op !== 'report') body.attributes = this.attributes;
    for (var k in extra || {}) body[k] = extra[k];
    return JSON.stringify(body);
  };

  // One call; resolves { ok, session } or { ok: false, error, retry } (retry: worth trying
  // again). text/plain needs no preflight. `keep` false: the answer is not the current session.
  Client.prototype.call = function (op, extra, keep) {
    var self = this;
    var request;
    try {
      request = global.fetch(self.url + '/v1/sessions/' + op, {
        method: 'POST',
        headers: { 'content-type': 'text/plain' },
        body: self.body(extra, op),
        keepalive: op === 'background' || op === 'end',
        credentials: 'omit',
      });
    } catch (e) {
      return Promise.resolve({ ok: false, error: 'unreachable: ' + e.message });
    }
    return request
      .then(function (response) {
        return response.json().then(
          function (body) {
            if (!response.ok) {
              return {
                ok: false,
                error: (body && body.detail) || 'HTTP ' + response.status,
                retry: response.status >= 500 || response.status === 429,
              };
            }
            return { ok: true, session: keep === false ? body : self.remember(body) };
          },
          function () {
            return { ok: false, error: 'HTTP ' + response.status, retry: response.status >= 500 };
          }
        );
      })
      .catch(function (e) {
        return { ok: false, error: 'unreachable: ' + (e && e.message), retry: true };
      });
  };

  // Reports handled errors or a crash ({ errors, crashed, sessionId }: the current session when
  // no sessionId). It is retried while the service is unreachable or busy, always with the
  // report_id drawn here once, so the service applies it once even when an answer was lost.
  // Resolves like session(); the answer is the session reported on.
  Client.prototype.report = function (report) {
    var self = this;
    report = report || {};
    var body = { report_id: randomKey() };
    if (report.errors) body.errors = report.errors;
    if (report.crashed) body.crashed = true;
    var named = report.sessionId || (self.current && self.current.session_id);
    if (named) body.session_id = named;
    var attempt = function (n) {
      return self.call('report', body, false).then(function (answer) {
        if (answer.ok || !answer.retry || n >= RETRY_MS.length) return answer;
        return new Promise(function (resolve) {
          global.setTimeout(function () {
            resolve(attempt(n + 1));
          }, RETRY_MS[n]);
        });
      });
    };
    return attempt(0);
  };

  // Keeps the newest session, adopts a minted client key, and tells listeners of a new id.
  Client.prototype.remember = function (session) {
    if (session.client && !this.client) this.client = session.client;
    var before = this.current && this.current.session_id;
    this.current = session;
    if (before !== session.session_id) {
      for (var i = 0; i < this.listeners.length; i++) {
        try {
          this.listeners[i](session);
        } catch (e) {
          // A listener's error is its own.
        }
      }
    }
    return session;
  };

  Client.prototype.live = function () {
    var s = this.current;
    return !!s && !s.ended_at && Date.parse(s.expires_at) > now();
  };

  // The current session: cached while live, else one request shared by everyone asking.
  Client.prototype.session = function () {
    if (this.live()) return Promise.resolve({ ok: true, session: this.current });
    return this.request('current');
  };

  Client.prototype.request = function (op) {
    var self = this;
    if (!self.pending) {
      self.pending = self.call(op).then(function (answer) {
        self.pending = null;
        return answer;
      });
    }
    return self.pending;
  };

  Client.prototype.onChange = function (listener) {
    if (typeof listener === 'function') this.listeners.push(listener);
  };

  // Activity: a tick at most every tickEveryMs, and at once when the session is over.
  Client.prototype.activity = function () {
    if (this.live() && now() - this.lastTick < this.tickEveryMs) return;
    this.lastTick = now();
    this.request('tick');
  };

  Client.prototype.watch = function () {
    var self = this;
    var doc = global.document;
    var onActivity = function () {
      try {
        self.activity();
      } catch (e) {
        // Never into the page.
      }
    };
    ['pointerdown', 'keydown', 'scroll', 'touchstart'].forEach(function (type) {
      global.addEventListener(type, onActivity, { passive: true, capture: true });
    });
    doc.addEventListener('visibilitychange', function () {
      try {
        if (doc.visibilityState === 'hidden') {
          self.call('background');
        } else {
          self.lastTick = now();
          self.request('foreground');
        }
      } catch (e) {
        // Never into the page.
      }
    });
    global.addEventListener('pagehide', function () {
      try {
        if (!self.endOnPagehide || !self.current) return;
        var body = self.body({ session_id: self.current.session_id });
        if (!(global.navigator.sendBeacon && global.navigator.sendBeacon(self.url + '/v1/sessions/end', body))) {
          self.call('end', { session_id: self.current.session_id });
        }
      } catch (e) {
        // Never into the page.
      }
    });
  };

  var Sessiond = {
    // The page's one client for this service and namespace.
    get: function (options) {
      options = options || {};
      var id = (options.url || '') + '|' + (options.namespace || 'default');
      if (!registry[id]) {
        try {
          registry[id] = new Client(options);
        } catch (e) {
          // A page without fetch or storage still gets answers, never exceptions.
          return {
            session: function () {
              return Promise.resolve({ ok: false, error: 'unsupported: ' + e.message });
            },
            onChange: function () {},
            report: function () {
              return Promise.resolve({ ok: false, error: 'unsupported: ' + e.message });
            },
          };
        }
      }
      return registry[id];
    },
  };

  global.Sessiond = global.Sessiond || Sessiond;
})(typeof window !== 'undefined' ? window : this);
