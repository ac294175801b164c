// Prisma 6.19's CLI config: its WebAssembly schema engine, which needs no download,
// talks to PostgreSQL through adapter-pg. Run it through scripts/prisma (README, "Prisma
// commands"). Each block below works around one 6.19 bug on PostgreSQL; without them
// db push and migrate fail or leave things behind.
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parseEnv } from 'node:util';
import { PrismaPg } from 'adapter-pg6';
import { ident, pgConfig, withDatabase } from './cli/pg-url.mjs';

const require = createRequire(import.meta.url);
const pg = require('pg');
const root = new URL('..', import.meta.url);

// A config file turns off the CLI's own .env loading; load it as Prisma (and the app) would:
// without overriding what the environment already sets.
const dotenv = new URL('.env', root);
if (existsSync(dotenv)) {
  for (const [key, value] of Object.entries(parseEnv(readFileSync(dotenv, 'utf8')))) {
    process.env[key] ??= value;
  }
}

// prisma/orm#27403: adapter-pg throws on the `name` and `"char"` columns of the engine's
// catalog queries ("Column type 'name' could not be deserialized"). pg has decoded them as
// strings already, so tag them as text (arrays too).
const Result = require('pg/lib/result.js');
const RETAG = new Map([[18, 25], [19, 25], [1003, 1009]]);
const addFields = Result.prototype.addFields;
Result.prototype.addFields = function (fields) {
  for (const field of fields) field.dataTypeID = RETAG.get(field.dataTypeID) ?? field.dataTypeID;
  return addFields.call(this, fields);
};

// The engine arms a 10 s advisory-lock timer it never clears, so Node would idle 10 s after
// the work is done. Timers that long only guard work that keeps the process alive anyway.
const setTimeoutOriginal = globalThis.setTimeout;
globalThis.setTimeout = function (callback, delay, ...rest) {
  const timer = setTimeoutOriginal(callback, delay, ...rest);
  if (delay >= 10000) timer.unref?.();
  return timer;
};

// The CLI frees the schema engine twice; wasm-bindgen's second free passes a null pointer and
// `migrate dev` exits 1 ("null pointer passed to rust") after doing its work. Make it a no-op.
const Instance = WebAssembly.Instance;
WebAssembly.Instance = class extends Instance {
  constructor(module, imports) {
    super(module, imports);
    if (!imports?.['./schema_engine_bg.js']) return;
    const exports = { ...super.exports };
    const free = exports.__wbg_schemaengine_free;
    exports.__wbg_schemaengine_free = (pointer, ...rest) => (pointer === 0 ? undefined : free(pointer, ...rest));
    Object.defineProperty(this, 'exports', { value: Object.freeze(exports) });
  }
};

class ProjectPg extends PrismaPg {
  constructor(url) {
    const { config, schema } = pgConfig(url);
    super(config, { schema });
    this.url = url;
    this.schemaName = schema;
  }

  async connect() {
    const adapter = await super.connect();
    // Run a migration script whole, as one query: the stock adapter splits it on every `;`
    // (breaking on one in a comment) and a failing script is left half-applied.
    adapter.executeScript = async (script) => {
      try {
        await adapter.client.query(script);
      } catch (error) {
        adapter.onError(error);
      }
    };
    // The native engine creates the `?schema=` schema; the WebAssembly one expects it. Checked
    // first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when it exists.
    let found;
    try {
      found = await adapter.client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [this.schemaName]);
    } catch (error) {
      // The CLI itself only says "External error id#0".
      const { host, pathname } = new URL(this.url);
      console.error(`Can't reach database ${pathname.slice(1)} at ${host}: ${error.message}`);
      if (/unsupported startup parameter/i.test(error.message)) {
        // A pooler (PgBouncer, Neon's -pooler host): Prisma's schema commands need a session of their own.
        console.error('That is a connection pooler. Schema commands need a direct connection: set DIRECT_URL to the unpooled host (on Neon, the host without "-pooler").');
      }
      throw error;
    }
    if (found.rowCount === 0) await adapter.executeScript(`CREATE SCHEMA IF NOT EXISTS ${ident(this.schemaName)}`);
    return adapter;
  }

  // The stock shadow database reuses pg's config, where `connectionString` wins over
  // `database`: the "shadow" was the main database. It is also dropped without FORCE while the
  // engine's pool still holds it, so it was left behind.
  async connectToShadowDb() {
    const explicit = process.env.SHADOW_DATABASE_URL;
    if (explicit) return resetShadow(explicit);
    const name = `prisma_migrate_shadow_db_${randomUUID()}`;
    const admin = new pg.Client(pgConfig(this.url).config);
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${ident(name)}`);
    } finally {
      await admin.end();
    }
    const shadowUrl = withDatabase(this.url, name);
    const adapter = await new ProjectPg(shadowUrl).connect();
    const dispose = adapter.dispose.bind(adapter);
    adapter.dispose = async () => {
      await dispose();
      const dropper = new pg.Client(pgConfig(this.url).config);
      await dropper.connect();
      try {
        await dropper.query(`DROP DATABASE IF EXISTS ${ident(name)} WITH (FORCE)`);
      } finally {
        await dropper.end();
      }
    };
    return adapter;
  }
}

/** An explicit shadow database, emptied on every use as Prisma does: every user schema dropped. */
async function resetShadow(url) {
  const shadow = new ProjectPg(url);
  const adapter = await shadow.connect();
  const { rows } = await adapter.client.query(
    `SELECT nspname FROM pg_namespace
     WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'`,
  );
  const drops = rows.map((row) => `DROP SCHEMA ${ident(row.nspname)} CASCADE;`).join('\n');
  await adapter.executeScript(`${drops}\nCREATE SCHEMA IF NOT EXISTS ${ident(shadow.schemaName)};`);
  return adapter;
}

// Schema commands use Neon's direct URL when there is one (Prisma's `directUrl`).
const databaseUrl = () => {
  const url = process.env.DIRECT_URL || process.env.DATABASE_URL;
  if (!url) throw new Error('DATABASE_URL is not set: point it at the PostgreSQL database to manage');
  return url;
};

const native = process.env.PRISMA_ENGINE === 'native';

export default {
  schema: new URL('schema.prisma', root).pathname,
  // Relative to this file, so the migrations live in prisma/ while schema.prisma stays on top.
  migrations: { path: process.env.PRISMA_MIGRATIONS_DIR || new URL('migrations', import.meta.url).pathname },
  ...(native
    ? {
        // Opt-in, not exercised by CI here: Prisma's native schema engine, downloaded by the CLI.
        engine: 'classic',
        datasource: {
          url: process.env.DATABASE_URL ?? '',
          directUrl: process.env.DIRECT_URL,
          shadowDatabaseUrl: process.env.SHADOW_DATABASE_URL,
        },
      }
    : {
        experimental: { adapter: true },
        engine: 'js',
        adapter: async () => new ProjectPg(databaseUrl()),
      }),
};
