/**
 * @sessiond/browser/faro: every Grafana Faro item carries sessiond's session id, following its
 * rotations. Faro has no session-provider hook, so this sets Faro's session whenever sessiond's
 * changes, makes Faro's own rotations (inactivity, lifetime) draw sessiond's id, and stamps the
 * id on each item in a before-send hook. Items made while no session is known (before the first
 * answer, after an end) are held until the next answer; while the service cannot be reached
 * they go out with no session id, never an invented or ended one.
 */
import type { Client } from './index.js';

/** The parts of a Faro instance (initializeFaro's answer) that this uses. */
export interface FaroLike {
  api: { setSession(session?: { id?: string; attributes?: Record<string, string> }): void };
  config: { sessionTracking?: { generateSessionId?: () => string } };
  transports: {
    addBeforeSendHooks(...hooks: Array<(item: any) => any>): void;
    removeBeforeSendHooks(...hooks: Array<(item: any) => any>): void;
    execute(item: any): void;
  };
}

// Items held while an answer is awaited, at most.
const HOLD = 200;

/** Connects Faro to the client; returns a function that disconnects it. */
export function connectFaro(faro: FaroLike, client: Client): () => void {
  const tracking = faro.config.sessionTracking || {};
  const generate = tracking.generateSessionId;
  let held: any[] = [];
  let failing = false;
  let id: string | undefined;
  const settle = (ok: boolean) => {
    failing = !ok;
    const s = client.current;
    if (s && s.session_id != id) {
      id = s.session_id;
      tracking.generateSessionId = () => id!;
      faro.api.setSession({ id, attributes: { isSampled: 'true' } });
    }
    for (const item of held.splice(0)) {
      // Faro's own hook passes sampled items only, and took the mark off when it first did.
      const session = item.meta.session || (item.meta.session = {});
      session.attributes = { ...session.attributes, isSampled: 'true' };
      faro.transports.execute(item);
    }
  };
  const hook = (item: any) => {
    client.session().then((answer) => settle(answer.ok));
    const s = client.current;
    if (!s && !failing) {
      if (held.length < HOLD) held.push(item);
      return null;
    }
    const attributes = { ...(item.meta.session || {}).attributes };
    delete attributes.previousSession;
    if (s && s.previous_session_id) attributes.previousSession = s.previous_session_id;
    return { ...item, meta: { ...item.meta, session: { ...item.meta.session, id: s ? s.session_id : undefined, attributes } } };
  };
  faro.transports.addBeforeSendHooks(hook);
  const unsubscribe = client.onChange(() => settle(true));
  client.session().then((answer) => settle(answer.ok));
  return () => {
    unsubscribe();
    faro.transports.removeBeforeSendHooks(hook);
    tracking.generateSessionId = generate;
    settle(false);
  };
}
