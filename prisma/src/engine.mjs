// Hosts Prisma's WebAssembly query engine on a node-postgres pool.
//
// A panic inside the wasm module escapes as an uncaught `RuntimeError:
// unreachable` and leaves the instance unusable. `WasmEngine` keeps track of
// every call in flight so that, on a panic, each caller gets an error instead
// of waiting forever, and `restart()` then builds a fresh instance.

import fs from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

import { createPool, poolConfig } from './pool.mjs';

export { poolConfig };

const require = createRequire(import.meta.url);
const { PrismaPg } = require('@prisma/adapter-pg');
const { bindAdapter } = require('@prisma/driver-adapter-utils');

const wasmDir = new URL('./postgresql/', pathToFileURL(require.resolve('@prisma/query-engine-wasm/package.json')));
const wasmBytes = fs.readFileSync(new URL('query_engine_bg.wasm', wasmDir));
const wasmModule = new WebAssembly.Module(wasmBytes);

export class EnginePanic extends Error {}

/**
 * Whether `id` has the shape of the ids the engine issues (25-character cuids).
 * The engine answers an unknown id of that shape with "Transaction not found", but
 * panics on a shorter one, so anything else must never reach it.
 */
export function isTransactionIdShape(id) {
  return typeof id === 'string' && /^[a-z0-9]{25}$/.test(id);
}

/** Add `previewFeatures = ["driverAdapters"]`, without which every model action is unknown to the engine. */
export function withDriverAdapters(datamodel) {
  if (/previewFeatures\s*=\s*\[[^\]]*"driverAdapters"/.test(datamodel)) return datamodel;
  if (/previewFeatures\s*=\s*\[/.test(datamodel)) {
    return datamodel.replace(/previewFeatures\s*=\s*\[\s*/, (m) => `${m}"driverAdapters", `).replace(/, \]/, ']');
  }
  return datamodel.replace(/^(\s*generator\s+\w+\s*\{[^\n]*\n)/m, `$1  previewFeatures = ["driverAdapters"]\n`);
}

export class WasmEngine {
  constructor({ datamodel, url, logQueries = false, log = () => {} }) {
    this.datamodel = withDriverAdapters(datamodel);
    this.config = poolConfig(url);
    this.logQueries = logQueries;
    this.log = log;
    this.generation = 0;
    this.inFlight = new Set();
  }

  async start() {
    this.generation += 1;
    // A fresh copy of the glue module per instance: it caches views of the
    // wasm memory, which would point into a dead instance after a restart.
    const bg = await import(`${new URL('query_engine_bg.js', wasmDir)}?instance=${this.generation}`);
    const instance = await WebAssembly.instantiate(wasmModule, { './query_engine_bg.js': bg });
    bg.__wbg_set_wasm(instance.exports);
    this.pool = createPool(this.config, this.log);
    // An idle connection dropped by the server must not crash the process.
    this.pool.on('error', (err) => this.log({ level: 'warn', message: `idle database connection failed: ${err.message}` }));
    const adapter = new PrismaPg(this.pool, this.config.schema ? { schema: this.config.schema } : undefined);
    releaseLateTransactions(adapter, () => this.maxWaitMillis);
    this.engine = new bg.QueryEngine(
      { datamodel: this.datamodel, logLevel: 'info', logQueries: this.logQueries },
      (line) => this.log({ ...safeParse(line), fromPrisma: true }),
      (this.adapter = bindAdapter(adapter)),
    );
    await this.engine.connect('{}');
  }

  async stop() {
    const { engine, pool } = this;
    this.engine = undefined;
    this.pool = undefined;
    try {
      await engine?.disconnect('{}');
    } finally {
      await pool?.end();
    }
  }

  /** Fail every call in flight; called when the wasm instance has panicked. */
  poison(error) {
    const panic = new EnginePanic(`query engine panicked: ${error?.message ?? error}`);
    for (const call of this.inFlight) call.reject(panic);
    this.inFlight.clear();
    this.engine = undefined;
  }

  async restart() {
    // The dead instance never releases the connections it holds, so ending its pool
    // would wait forever, and an open transaction would keep its locks. Closing every
    // connection makes PostgreSQL roll those transactions back. (`_clients` is
    // node-postgres's list of a pool's connections; pg is pinned.)
    const pool = this.pool;
    this.pool = undefined;
    for (const client of pool?._clients ?? []) client.end().catch(() => {});
    pool?.end().catch(() => {});
    await this.start();
  }

  track(run) {
    if (!this.engine) return Promise.reject(new EnginePanic('query engine is restarting'));
    return new Promise((resolve, reject) => {
      const call = { reject };
      this.inFlight.add(call);
      const settle = (fn) => (value) => {
        if (this.inFlight.delete(call)) fn(value);
      };
      Promise.resolve()
        .then(() => run(this.engine))
        .then(settle(resolve), settle(reject));
    });
  }

  /**
   * The JavaScript error behind a "P2036 Error in external connector (id N)", removed from the
   * adapter's registry, which otherwise keeps every error for the life of the process.
   */
  takeConnectorError(id) {
    const registry = this.adapter?.errorRegistry;
    const entry = registry?.registeredErrors?.[id];
    if (entry) registry.registeredErrors[id] = undefined;
    return entry?.error;
  }

  query(body, txId) {
    return this.track((engine) => engine.query(body, '{}', txId));
  }

  async startTransaction(options) {
    this.maxWaitMillis = options.max_wait;
    return JSON.parse(await this.track((engine) => engine.startTransaction(JSON.stringify(options), '{}')));
  }

  async endTransaction(id, how) {
    const run = how === 'commit' ? 'commitTransaction' : 'rollbackTransaction';
    return JSON.parse(await this.track((engine) => engine[run](id, '{}')));
  }
}

/**
 * The engine stops waiting for a transaction's connection after max_wait, but the
 * adapter's checkout goes on; a connection it gets after that would never be
 * released, and the pool would shrink by one for good. So one that arrives that late
 * goes straight back to the pool, and the start fails.
 */
function releaseLateTransactions(adapter, maxWaitMillis) {
  const start = adapter.startTransaction.bind(adapter);
  adapter.startTransaction = async (...args) => {
    const began = Date.now();
    const result = await start(...args);
    const limit = maxWaitMillis();
    if (result.ok && limit > 0 && Date.now() - began >= limit - 50) {
      result.value.client.release();
      throw new Error(`no database connection within the transaction's max_wait (${limit} ms)`);
    }
    return result;
  };
}

function safeParse(line) {
  try {
    return JSON.parse(line);
  } catch {
    return { level: 'info', message: String(line) };
  }
}
