#!/usr/bin/env node
// Stands in for Prisma's native schema engine, which cannot be downloaded here: the
// WebAssembly engine does the work, but `migrate resolve` still spawns the native binary for
// `cli --datasource URL can-connect-to-database`. This answers that one call with a real
// connection; anything else fails with a line saying what runs instead.
import { createRequire } from 'node:module';
import { pgConfig } from './pg-url.mjs';

const args = process.argv.slice(2);
if (args[0] === '--version') {
  console.log('schema-engine-cli stub (scripts/prisma runs the WebAssembly schema engine)');
  process.exit(0);
}
const datasource = args[args.indexOf('--datasource') + 1];
if (args[0] !== 'cli' || args.at(-1) !== 'can-connect-to-database' || !datasource) {
  console.error('Not Prisma\'s native schema engine: run schema commands through scripts/prisma.');
  process.exit(1);
}
const pg = createRequire(import.meta.url)('pg');
const client = new pg.Client({ ...pgConfig(datasource).config, connectionTimeoutMillis: 10000 });
try {
  await client.connect();
  await client.end();
} catch (error) {
  // The CLI skips the first stderr line and reads the schema engine's JSON log lines.
  const fields = { error_code: 'P1001', message: `Can't reach database server: ${error.message}` };
  console.error('schema-engine-cli stub');
  console.error(JSON.stringify({ level: 'ERROR', target: 'schema_engine::logger', fields }));
  process.exit(1);
}
