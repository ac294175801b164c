// The node-postgres pool under the engine, with every wait bounded.
//
// A silent network partition (a dead NAT, a failed-over compute) keeps TCP
// connections open while no byte gets through. Without bounds, a query on such a
// connection waits forever, and the server keeps the session's transaction, and its
// locks, open just as long. So:
// - the server bounds statements, lock waits and idle transactions itself
//   (startup parameters; see sessionParameters);
// - a query that gets no answer within the query timeout has its connection
//   destroyed, and the pool's idle connections with it: they likely cross the same
//   dead path, and each would otherwise cost a caller the whole timeout;
// - connecting, and waiting for a free connection, are bounded too; a database that
//   refuses a connection for lack of slots (53300) is retried until that bound.

import os from 'node:os';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const pg = require('pg');

// URL parameters that Prisma reads itself; node-postgres must not see them.
const PRISMA_URL_PARAMS = ['schema', 'connection_limit', 'pool_timeout', 'pgbouncer', 'socket_timeout', 'statement_cache_size', 'connect_timeout'];

// Server-side limits, in seconds, from the environment; 0 leaves the server's own setting.
export const SESSION_TIMEOUTS = {
  statement_timeout: ['DATABASE_STATEMENT_TIMEOUT', 5],
  lock_timeout: ['DATABASE_LOCK_TIMEOUT', 4],
  idle_in_transaction_session_timeout: ['DATABASE_IDLE_IN_TRANSACTION_TIMEOUT', 10],
};

// SQLSTATEs for "no connection slot now": too many connections, and the server starting up or shutting down.
const RETRY_CONNECT_CODES = new Set(['53300', '57P03']);

function seconds(value, fallback, name) {
  if (value === undefined || value === null || value === '') return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number of seconds, got ${JSON.stringify(value)}`);
  return n;
}

/** Startup parameters that make the server bound statements, lock waits and idle transactions (milliseconds). */
export function sessionParameters(env = process.env) {
  const params = {};
  for (const [param, [name, fallback]] of Object.entries(SESSION_TIMEOUTS)) {
    const value = seconds(env[name], fallback, name);
    if (value > 0) params[param] = Math.round(value * 1000);
  }
  return params;
}

/**
 * node-postgres pool settings from a Prisma PostgreSQL URL and the environment.
 *
 * Prisma's own URL parameters keep their meaning: `connection_limit` (pool size),
 * `connect_timeout` (s, default 5), `pool_timeout` (s to wait for a free connection,
 * default 10, as Prisma's) and `socket_timeout` (s a query may go unanswered, default
 * 10: above statement_timeout, so the server cancels a slow statement cleanly before
 * the connection is given up on).
 */
export function poolConfig(url, env = process.env) {
  const parsed = new URL(url);
  const params = parsed.searchParams;
  const limit = Number(params.get('connection_limit'));
  const connectTimeout = seconds(params.get('connect_timeout'), 5, 'connect_timeout');
  const poolTimeout = seconds(params.get('pool_timeout'), 10, 'pool_timeout');
  const queryTimeout = seconds(params.get('socket_timeout'), 10, 'socket_timeout');
  const schema = params.get('schema') ?? undefined;
  for (const name of PRISMA_URL_PARAMS) params.delete(name);
  return {
    pool: {
      connectionString: parsed.toString(),
      // Prisma's default pool size: twice the CPUs plus one.
      max: limit > 0 ? limit : os.availableParallelism() * 2 + 1,
      // pg-pool uses this for both a new connection and a wait for a free one.
      connectionTimeoutMillis: poolTimeout * 1000,
      idleTimeoutMillis: 30_000,
      // Finds dead peers of idle connections eventually; the query timeout is the real bound.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      ...sessionParameters(env),
    },
    connectTimeoutMillis: connectTimeout * 1000,
    queryTimeoutMillis: queryTimeout * 1000,
    poolTimeoutMillis: poolTimeout * 1000,
    schema,
  };
}

export class QueryTimeout extends Error {}

/** A pg.Pool whose connections give up on unanswered queries, and which waits out "too many connections". */
export function createPool(config, log = () => {}) {
  const { connectTimeoutMillis, queryTimeoutMillis, poolTimeoutMillis } = config;
  let pool;

  const flushIdle = () => {
    // `_idle` is pg-pool's list of idle connections (pg is pinned); destroying one makes the pool drop it.
    for (const item of pool?._idle ?? []) item.client.connection?.stream?.destroy();
  };

  // A pooler in front of the database (PgBouncer, Neon's pooled endpoint) refuses the server-side
  // limits as startup parameters. Once it has, connect without them; the role's settings apply.
  let withoutStartupLimits = false;
  const startupLimits = Object.keys(SESSION_TIMEOUTS).filter((name) => name in config.pool);

  class GuardedClient extends pg.Client {
    constructor(options) {
      const own = { ...options };
      if (withoutStartupLimits) for (const name of startupLimits) delete own[name];
      super({ ...own, connectionTimeoutMillis: connectTimeoutMillis || options.connectionTimeoutMillis });
      // A checked-out connection has no listener of the pool's: a server-side error between queries
      // (say, the idle-in-transaction timeout) would otherwise be thrown as an uncaught exception.
      this.on('error', (err) => log({ level: 'warn', message: `database connection failed: ${err.message}` }));
    }

    query(config, values, callback) {
      if (!queryTimeoutMillis || typeof config?.submit === 'function') return super.query(config, values, callback);
      const timer = setTimeout(() => {
        log({ level: 'warn', message: `a query got no answer in ${queryTimeoutMillis / 1000} s; dropping its connection and the idle ones` });
        this.connection?.stream?.destroy(new QueryTimeout('query timed out'));
        flushIdle();
      }, queryTimeoutMillis);
      const done = () => clearTimeout(timer);
      if (typeof values === 'function') return super.query(config, wrap(values, done));
      if (typeof callback === 'function') return super.query(config, values, wrap(callback, done));
      const result = super.query(config, values);
      result.then(done, done);
      return result;
    }
  }

  pool = new pg.Pool({ ...config.pool, Client: GuardedClient });
  const connect = pool.connect.bind(pool);
  const configuredMax = pool.options.max;
  let uncap;
  const noSlotLeft = () => {
    // The database has no slot for another connection (its own limit, or the role's): share the
    // connections this pool has, in pg-pool's queue, and try growing again later. (`_clients`
    // also holds connections still being opened; `_connected` marks the open ones. pg is pinned.)
    const open = pool._clients.filter((client) => client._connected && !client._ending).length;
    pool.options.max = Math.max(1, open);
    clearTimeout(uncap);
    uncap = setTimeout(() => {
      pool.options.max = configuredMax;
    }, 30_000);
    uncap.unref();
    return open;
  };
  // Whether `error` is that refusal; connections opened at the same moment all meet it, and each
  // retries once without the limits.
  const refusedLimits = (error) => {
    if (!startupLimits.length || !/unsupported startup parameter/i.test(error?.message ?? '')) return false;
    if (withoutStartupLimits) return true;
    withoutStartupLimits = true;
    log({
      level: 'warn',
      message: `the database endpoint (a pooler such as PgBouncer) refuses ${startupLimits.join(', ')} as connection parameters; connecting without them, so set them on the role instead (ALTER ROLE ... SET statement_timeout = '5s', ...)`,
    });
    return true;
  };
  pool.connect = (callback) => {
    const result = connectPatiently(connect, poolTimeoutMillis, noSlotLeft, refusedLimits);
    if (!callback) return result;
    result.then((client) => callback(undefined, client, client.release), (err) => callback(err, undefined, () => {}));
    return undefined;
  };
  return pool;
}

function wrap(callback, done) {
  return (err, res) => {
    done();
    callback(err, res);
  };
}

async function connectPatiently(connect, boundMillis, noSlotLeft, refusedLimits) {
  const deadline = Date.now() + (boundMillis || 0);
  let retriedWithoutLimits = false;
  for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
    try {
      return await connect();
    } catch (error) {
      if (!retriedWithoutLimits && refusedLimits(error)) {
        retriedWithoutLimits = true;
        continue; // at once, without the limits
      }
      if (!RETRY_CONNECT_CODES.has(error?.code) || Date.now() + delay > deadline) throw error;
      // With connections of its own, the pool is now full: queue for one of them at once.
      if (noSlotLeft() === 0) await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}
