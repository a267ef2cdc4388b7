// The package as a user gets it: `npm pack`, installed into a fresh project beside the real
// instrument packages (the versions this package's lockfile pins), then
//   - every entry point imported in Node, as server-side rendering would: nothing throws,
//     every call answers {ok: false, error}, and no request is made;
//   - the instruments' test page type-checked against the installed declarations and the
//     real packages' own, and bundled by esbuild into OUT (default target/e2e/page) for
//     test/instruments.mjs.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { build } from 'esbuild';

const here = new URL('..', import.meta.url).pathname;
const out = resolve(process.env.OUT || join(here, '../../target/e2e/page'));
const project = mkdtempSync(join(tmpdir(), 'sessiond-browser-'));
const npm = (args, cwd) => execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], { cwd, encoding: 'utf8' });
try {
  const tarball = join(project, JSON.parse(npm(['pack', '--json', '--pack-destination', project], here))[0].filename);
  const own = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8'));
  const instruments = Object.fromEntries(Object.entries(own.devDependencies)
    .filter(([name]) => /^@(opentelemetry|grafana|sentry)\//.test(name)));
  writeFileSync(join(project, 'package.json'), JSON.stringify({
    name: 'fresh-project', private: true, type: 'module',
    dependencies: { '@sessiond/browser': `file:${tarball}`, ...instruments },
  }));
  npm(['install', '--prefer-offline'], project);
  console.log(`npm pack: ${tarball.split('/').pop()} installed into a fresh project`);

  // Server-side rendering: no window, no storage; fetch exists in Node and must not be called.
  writeFileSync(join(project, 'ssr.mjs'), `
    import assert from 'node:assert/strict';
    let requests = 0;
    globalThis.fetch = () => { requests++; throw new Error('no request expected'); };
    const { getClient } = await import('@sessiond/browser');
    const { sessionProvider } = await import('@sessiond/browser/otel');
    const { connectFaro } = await import('@sessiond/browser/faro');
    const { sessiondIntegration } = await import('@sessiond/browser/sentry');
    const client = getClient({ url: 'https://sessions.example.org', namespace: 'web', propagate: { origins: ['https://api.example.org'] } });
    assert.equal(client, getClient({ url: 'https://sessions.example.org', namespace: 'web' }), 'one client per service and namespace');
    for (const answer of [await client.session(), await client.end(), await client.setUser('u'), await client.report({ errors: 1 })]) {
      assert.equal(answer.ok, false);
      assert.match(answer.error, /^unsupported/);
      assert.equal(answer.session, undefined);
    }
    assert.equal(client.current, null);
    assert.equal(typeof client.onChange(() => {}), 'function');
    client.persist();
    assert.equal(sessionProvider(client).getSessionId(), null);
    const event = await sessiondIntegration(client).processEvent({ tags: { a: 1 } });
    assert.deepEqual(event, { tags: { a: 1 } });
    assert.equal(typeof connectFaro, 'function');
    assert.equal(requests, 0);
    console.log('server-side rendering: every entry point imports, every call answers ok: false, no request');
  `);
  execFileSync(process.execPath, ['ssr.mjs'], { cwd: project, stdio: 'inherit' });

  copyFileSync(join(here, 'test/page.ts'), join(project, 'page.ts'));
  writeFileSync(join(project, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext', lib: ['es2022', 'dom'], strict: true, noEmit: true, skipLibCheck: true },
    files: ['page.ts'],
  }));
  execFileSync(process.execPath, [join(here, 'node_modules/typescript/bin/tsc'), '-p', project], { stdio: 'inherit' });
  console.log('the test page type-checks against the installed declarations and the real packages');

  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  await build({ absWorkingDir: project, entryPoints: ['page.ts'], bundle: true, format: 'esm', target: 'es2020', outfile: join(out, 'page.js'), logLevel: 'warning' });
  writeFileSync(join(out, 'index.html'), '<!doctype html><meta charset="utf-8"><title>loading</title><script type="module" src="page.js"></script><p>sessiond instruments test page</p>');
  console.log(`test page bundled into ${out}`);
} finally {
  rmSync(project, { recursive: true, force: true });
}
