// The size budget (CONTRACT 9): each entry point of dist/ minified by esbuild and gzipped at
// level 9. The core at most 3,072 bytes; each adapter at most 1,024 bytes of its own code
// (the adapters import only types from the core, so all of their code is their own).
// Fails over budget; prints the figures the README gives.
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const here = new URL('..', import.meta.url).pathname;
const budgets = { index: 3072, otel: 1024, faro: 1024, sentry: 1024 };
let over = false;
for (const [entry, budget] of Object.entries(budgets)) {
  const result = await build({
    absWorkingDir: here,
    entryPoints: [`dist/${entry}.js`],
    bundle: true,
    format: 'esm',
    minify: true,
    write: false,
    // Code an adapter shares with the core is the core's.
    external: ['./index.js'],
  });
  const minified = result.outputFiles[0].contents;
  const gzipped = gzipSync(minified, { level: 9 }).length;
  const fits = gzipped <= budget;
  over ||= !fits;
  console.log(`${entry}: ${minified.length} B minified, ${gzipped} B gzipped (budget ${budget})${fits ? '' : '  OVER BUDGET'}`);
}
process.exit(over ? 1 : 0);
