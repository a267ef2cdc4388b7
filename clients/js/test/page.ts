// The instruments' test page: sessiond's browser package, installed from its packed tarball,
// wired to the real OpenTelemetry, Faro and Sentry packages, as the README's web section says.
// What each instrument would send is captured here (an in-memory span and log exporter, Faro's
// and Sentry's transports replaced by capture); test/instruments.mjs drives it in Chromium.
// Query: sessiond= the service; storage= local | session | memory; listed= an origin to
// propagate baggage to; cookieDomain= and client= the options; lifecycle= Sentry's traceLifecycle, 'stream' (its default: spans
// streamed) or 'static' (transaction events).
import { getClient, type Session } from '@sessiond/browser';
import { sessionProvider } from '@sessiond/browser/otel';
import { connectFaro } from '@sessiond/browser/faro';
import { sessiondIntegration } from '@sessiond/browser/sentry';
import { logs } from '@opentelemetry/api-logs';
import { LoggerProvider, SimpleLogRecordProcessor, InMemoryLogRecordExporter } from '@opentelemetry/sdk-logs';
import { InMemorySpanExporter, SimpleSpanProcessor, WebTracerProvider } from '@opentelemetry/sdk-trace-web';
import { createSessionLogRecordProcessor, createSessionSpanProcessor } from '@opentelemetry/web-common';
import { BaseTransport, initializeFaro, type TransportItem } from '@grafana/faro-web-sdk';
import * as Sentry from '@sentry/browser';

const query = new URLSearchParams(location.search);
const storage = (query.get('storage') || 'local') as 'local' | 'session' | 'memory';
const lifecycle = (query.get('lifecycle') || 'stream') as 'stream' | 'static';
const client = getClient({
  url: query.get('sessiond')!,
  namespace: 'web',
  storage,
  attributes: { release: '1.0.0', environment: 'e2e' },
  propagate: { origins: query.getAll('listed') },
  cookieDomain: query.get('cookieDomain') || undefined,
  client: query.get('client') || undefined,
  tickEveryMs: Number(query.get('tickEveryMs')) || undefined,
});

// When this tab saw each session change, for the tab-switch latency.
const changes: Array<{ id: string | null; previousId: string | null; at: number }> = [];
client.onChange((session, previousId) =>
  changes.push({ id: session && session.session_id, previousId, at: performance.timeOrigin + performance.now() }));

const otelSessions = sessionProvider(client);
const observed: string[] = [];
otelSessions.addObserver({
  onSessionStarted: (session, previous) => observed.push(`started ${session.id} after ${previous ? previous.id : '-'}`),
  onSessionEnded: (session) => observed.push(`ended ${session.id}`),
});
const spanExporter = new InMemorySpanExporter();
const tracer = new WebTracerProvider({
  spanProcessors: [createSessionSpanProcessor(otelSessions), new SimpleSpanProcessor(spanExporter)],
}).getTracer('e2e');
const logExporter = new InMemoryLogRecordExporter();
const loggerProvider = new LoggerProvider({
  processors: [createSessionLogRecordProcessor(otelSessions), new SimpleLogRecordProcessor({ exporter: logExporter })],
});
logs.setGlobalLoggerProvider(loggerProvider);
const logger = logs.getLogger('e2e');

const faroItems: TransportItem[] = [];
class CaptureTransport extends BaseTransport {
  readonly name = 'capture';
  readonly version = '1.0.0';
  send(items: TransportItem | TransportItem[]) {
    faroItems.push(...(Array.isArray(items) ? items : [items]));
  }
  // Batched, as Faro's own FetchTransport is.
  isBatched() {
    return true;
  }
}
// Faro's default sessionTracking: its own inactivity and lifetime timers and sampling.
const faro = initializeFaro({ app: { name: 'e2e' }, transports: [new CaptureTransport()] });
connectFaro(faro, client);

const sentryEvents: any[] = [];
const sentrySpans: any[] = [];
Sentry.init({
  dsn: 'https://public@sentry.invalid/1',
  release: '1.0.0',
  tracesSampleRate: 1,
  traceLifecycle: lifecycle,
  integrations: (defaults) => [...defaults.filter((i) => i.name !== 'BrowserSession'), sessiondIntegration(client)],
  transport: (options) =>
    Sentry.createTransport(options, async (request) => {
      // An envelope: a header line, then a header and a payload line per item.
      const lines = String(request.body).split('\n');
      for (let i = 1; i + 1 < lines.length; i += 2) {
        const { type } = JSON.parse(lines[i]);
        const payload = JSON.parse(lines[i + 1]);
        if (type == 'event' || type == 'transaction') sentryEvents.push(payload);
        if (type == 'span') sentrySpans.push(...payload.items);
      }
      return { statusCode: 200 };
    }),
});

// One of everything each instrument makes, labelled.
async function emit(label: string) {
  tracer.startSpan(`span ${label}`).end();
  logger.emit({ body: `log ${label}` });
  faro.api.pushEvent(`event ${label}`);
  Sentry.captureException(new Error(`error ${label}`));
  Sentry.startSpan({ name: `transaction ${label}`, forceTransaction: true }, () => undefined);
  await loggerProvider.forceFlush();
  await Sentry.flush(2000);
}

// The session id each instrument put on what it made, by label.
function seen() {
  const out: Record<string, Record<string, unknown>> = {};
  const put = (instrument: string, label: string, id: unknown) => ((out[label] ||= {})[instrument] = id ?? null);
  for (const span of spanExporter.getFinishedSpans()) put('span', span.name.slice(5), span.attributes['session.id']);
  for (const log of logExporter.getFinishedLogRecords()) put('log', String(log.body).slice(4), log.attributes['session.id']);
  for (const item of faroItems) {
    const name = (item.payload as any).name;
    if (typeof name == 'string' && name.startsWith('event ')) put('faro', name.slice(6), item.meta.session && item.meta.session.id);
  }
  for (const event of sentryEvents) {
    const label = event.type == 'transaction' ? event.transaction.slice(12) : event.exception.values[0].value.slice(6);
    const context = event.contexts && event.contexts.session;
    put(event.type == 'transaction' ? 'sentry transaction' : 'sentry error', label, event.tags && event.tags['session.id']);
    put(event.type == 'transaction' ? 'sentry transaction context' : 'sentry error context', label, context && `${context.id}/${context.index}/${context.previous_id}`);
  }
  for (const span of sentrySpans) {
    if (span.name.startsWith('transaction ')) put('sentry span', span.name.slice(12), span.attributes['session.id']?.value);
  }
  return out;
}

// Faro's own timers, as if 16 minutes had passed without activity: its next item rotates
// Faro's session by Faro's rules.
function ageFaroSession() {
  const stored = JSON.parse(sessionStorage.getItem('com.grafana.faro.session')!);
  stored.lastActivity -= 16 * 60 * 1000;
  stored.started -= 5 * 60 * 60 * 1000;
  sessionStorage.setItem('com.grafana.faro.session', JSON.stringify(stored));
  return stored;
}

async function call(url: string, how: 'fetch' | 'xhr', baggage?: string) {
  if (how == 'fetch') {
    await fetch(url, { method: 'POST', headers: baggage ? { baggage } : {}, body: 'x' });
    return;
  }
  await new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open('POST', url);
    if (baggage) request.setRequestHeader('baggage', baggage);
    request.onloadend = resolve;
    request.send('x');
  });
}

// The distinct session ids on everything each instrument sent, labelled or not (Faro's own
// session and page events among them, some made before sessiond's first answer).
function everyId() {
  const ids = (values: unknown[]) => [...new Set(values.map((v) => v ?? null))];
  return {
    spans: ids(spanExporter.getFinishedSpans().map((s) => s.attributes['session.id'])),
    logs: ids(logExporter.getFinishedLogRecords().map((l) => l.attributes['session.id'])),
    faro: ids(faroItems.map((item) => item.meta.session && item.meta.session.id)),
    sentry: ids(sentryEvents.map((event) => event.tags && event.tags['session.id'])),
  };
}

const e2e = {
  everyId,
  client,
  changes,
  observed,
  emit,
  seen,
  ageFaroSession,
  call,
  faroSessionId: () => faro.api.getSession()?.id ?? null,
  key: () => localStorage.getItem('sessiond.client') || sessionStorage.getItem('sessiond.client'),
  current: (): Session | null => client.current,
  ready: () => client.session(),
};
(window as any).e2e = e2e;
document.title = 'ready';
