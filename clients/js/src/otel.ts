/**
 * @sessiond/browser/otel: sessiond's session as OpenTelemetry JS's SessionProvider and
 * SessionPublisher, for createSessionSpanProcessor and createSessionLogRecordProcessor of
 * @opentelemetry/web-common, so every span and log record carries session.id.
 */
import type { Client, Session } from './index.js';

/** A session as OpenTelemetry's web-common sees it; startTimestamp in ms since the epoch. */
export interface OtelSession {
  id: string;
  startTimestamp: number;
}

export interface SessionObserver {
  onSessionStarted(session: OtelSession, previous?: OtelSession): void;
  onSessionEnded(session: OtelSession): void;
}

export interface SessionProvider {
  getSessionId(): string | null;
}

export interface SessionPublisher {
  addObserver(observer: SessionObserver): void;
}

const otel = (s: Session): OtelSession => ({ id: s.session_id, startTimestamp: Date.parse(s.started_at) });

/** Answers from the client's cache, never blocking: a stale cache starts a refresh. Observers
 * hear a session end when it ends or is replaced, and start when a new one becomes current. */
export function sessionProvider(client: Client): SessionProvider & SessionPublisher {
  const observers: SessionObserver[] = [];
  let known = client.current ? otel(client.current) : undefined;
  let last = known;
  client.onChange((s) => {
    const ended = known;
    known = s ? otel(s) : undefined;
    for (const o of observers) {
      try {
        if (ended) o.onSessionEnded(ended);
        if (known) o.onSessionStarted(known, last);
      } catch {
        // An observer's error is its own.
      }
    }
    last = known || ended;
  });
  return {
    getSessionId() {
      client.session();
      const s = client.current;
      return s ? s.session_id : null;
    },
    addObserver(observer) {
      observers.push(observer);
    },
  };
}
