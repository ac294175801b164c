// `scripts/prisma version`: which engines actually run, read from the installed packages.
// (Prisma 6.19's own `version` would report the download-stopping placeholder as its
// query engine.) CLIENT_VERSION is Prisma Client Python's, passed in by scripts/prisma.
import { readFileSync } from 'node:fs';

const modules = new URL('../node_modules/', import.meta.url);
const pkg = (path) => JSON.parse(readFileSync(new URL(`${path}/package.json`, modules)));
const version = (name) => pkg(name).version;
const engineHash = pkg('prisma6/node_modules/@prisma/engines-version').prisma.enginesVersion;
const native = process.env.PRISMA_ENGINE === 'native';

const rows = [
  ['Schema commands', `prisma ${version('prisma6')} CLI (prisma/prisma.config.mjs)`],
  [
    'Schema engine',
    native
      ? 'native schema-engine, downloaded by the CLI (PRISMA_ENGINE=native)'
      : `WebAssembly (schema-engine-wasm ${engineHash}, in the prisma ${version('prisma6')} CLI),` +
        ` through @prisma/adapter-pg ${version('adapter-pg6')}`,
  ],
  ['generate', `Prisma Client Python ${process.env.CLIENT_VERSION} (prisma ${version('prisma')} CLI)`],
  [
    'Query engine',
    native
      ? 'native query-engine, downloaded by the CLI (PRISMA_ENGINE=native)'
      : `WebAssembly, @prisma/query-engine-wasm ${version('@prisma/query-engine-wasm')}` +
        ' behind prisma/query-engine.mjs',
  ],
  ['Node.js', process.version],
];
for (const [name, value] of rows) console.log(`${name.padEnd(16)}: ${value}`);
