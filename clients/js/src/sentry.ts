/**
 * @sessiond/browser/sentry: a Sentry integration putting sessiond's session on every error and
 * transaction event, as the tag session.id and the context session {id, index, previous_id},
 * and on every streamed span (Sentry's default trace lifecycle) as the attribute session.id.
 * Release health is sessiond's: leave Sentry's BrowserSession integration out.
 */
import type { Client } from './index.js';

/** The parts of a Sentry event this sets. */
export interface SentryEventLike {
  tags?: { [key: string]: unknown };
  contexts?: { [key: string]: unknown };
}

export function sessiondIntegration(client: Client) {
  return {
    name: 'Sessiond',
    // Waits for the first answer, so events of the page's first moments carry the id too.
    async processEvent<E extends SentryEventLike>(event: E): Promise<E> {
      await client.session();
      const s = client.current;
      if (s) {
        event.tags = { ...event.tags, 'session.id': s.session_id };
        event.contexts = { ...event.contexts, session: { id: s.session_id, index: s.index, previous_id: s.previous_session_id } };
      }
      return event;
    },
    // Streamed spans are handed over synchronously: they carry the cached id.
    processSpan(span: { attributes: { [key: string]: unknown } }) {
      client.session();
      const s = client.current;
      if (s) span.attributes['session.id'] = s.session_id;
    },
  };
}
