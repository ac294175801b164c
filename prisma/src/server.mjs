// The native query engine's HTTP interface, as Prisma Client Python uses it,
// served by the WebAssembly engine.

import { timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';

import { EnginePanic, WasmEngine, isTransactionIdShape } from './engine.mjs';
import { GraphQLSyntaxError } from './graphql.mjs';
import { Schema, TranslationError, engineError, stringify, translateQuery, translateResult } from './translate.mjs';
import { logLine } from './log.mjs';

const require = createRequire(import.meta.url);
const schemaWasm = require('@prisma/prisma-schema-wasm');

const LEVELS = { trace: 0, debug: 1, info: 2, warn: 3, error: 4 };
const MAX_BODY = 64 * 1024 * 1024;

// The engine listens on loopback, where any local user could connect. Its own client
// proves itself with a per-process secret: the parent puts it in the engine's
// environment and sends it in this header on every request (prisma_engines/auth.py).
export const TOKEN_ENV = 'QUERY_ENGINE_TOKEN';
export const TOKEN_HEADER = 'x-query-engine-token';

/** A constant-time check of a request's token header against `token`. */
export function tokenChecker(token) {
  const expected = Buffer.from(token, 'utf8');
  return (header) => {
    if (typeof header !== 'string') return false;
    const given = Buffer.from(header, 'utf8');
    return given.length === expected.length && timingSafeEqual(given, expected);
  };
}

/** The datasource URL: OVERWRITE_DATASOURCES first, as the client sets it, then the schema's `url`. */
export function datasourceUrl(datamodel, env) {
  if (env.OVERWRITE_DATASOURCES) {
    const [first] = JSON.parse(env.OVERWRITE_DATASOURCES);
    if (first?.url) return first.url;
  }
  const block = /datasource\s+\w+\s*\{([^}]*)\}/.exec(datamodel)?.[1] ?? '';
  const fromEnv = /^\s*url\s*=\s*env\(\s*"([^"]+)"\s*\)/m.exec(block);
  if (fromEnv) {
    const value = env[fromEnv[1]];
    if (!value) throw new Error(`environment variable ${fromEnv[1]} is not set`);
    return value;
  }
  const literal = /^\s*url\s*=\s*"([^"]+)"/m.exec(block);
  if (literal) return literal[1];
  throw new Error('the datamodel has no datasource url');
}

class Metrics {
  constructor() {
    this.counters = { prisma_client_queries_total: 0, prisma_client_queries_failed_total: 0, prisma_engine_panics_total: 0 };
  }

  json(labels) {
    const counters = Object.entries(this.counters).map(([key, value]) => ({ key, labels: labels ?? {}, value, description: '' }));
    return { counters, gauges: [], histograms: [] };
  }

  prometheus(labels) {
    const suffix = labels ? `{${Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',')}}` : '';
    return Object.entries(this.counters).map(([key, value]) => `# TYPE ${key} counter\n${key}${suffix} ${value}\n`).join('');
  }
}

export async function startServer({ port, env = process.env }) {
  const datamodelPath = env.PRISMA_DML_PATH;
  if (!datamodelPath) throw new Error('PRISMA_DML_PATH is not set');
  const token = env[TOKEN_ENV];
  if (!token || token.length < 16) throw new Error(`${TOKEN_ENV} is not set (at least 16 characters): the engine serves only a client that sends it in ${TOKEN_HEADER}`);
  delete env[TOKEN_ENV]; // nothing this process starts needs it
  const authorized = tokenChecker(token);
  const datamodel = fs.readFileSync(datamodelPath, 'utf8');
  const schema = new Schema(JSON.parse(schemaWasm.get_dmmf(JSON.stringify({ prismaSchema: datamodel }))));
  const threshold = LEVELS[String(env.RUST_LOG ?? 'error').toLowerCase()] ?? LEVELS.error;
  // RUST_LOG (Prisma Client Python sets `error`) filters the wasm engine's own events; this
  // process's warnings (a pooler refusing the timeouts, dropped connections) always show.
  const log = ({ fromPrisma, ...event }) => {
    const level = LEVELS[String(event.level ?? 'info').toLowerCase()] ?? LEVELS.info;
    const floor = fromPrisma ? threshold : Math.min(threshold, LEVELS.warn);
    if (level >= floor || (env.LOG_QUERIES && event.query)) process.stderr.write(`${logLine(event)}\n`);
  };
  const engine = new WasmEngine({ datamodel, url: datasourceUrl(datamodel, env), logQueries: Boolean(env.LOG_QUERIES), log });
  const metrics = new Metrics();
  await engine.start();

  let restarting = null;
  const onPanic = (error) => {
    metrics.counters.prisma_engine_panics_total += 1;
    log({ level: 'error', message: `query engine panicked, restarting it: ${error?.stack ?? error}` });
    engine.poison(error);
    restarting ??= engine
      .restart()
      .catch((err) => {
        log({ level: 'error', message: `could not restart the query engine: ${err.message}` });
        process.exit(1);
      })
      .finally(() => {
        restarting = null;
      });
  };
  process.on('uncaughtException', onPanic);
  process.on('unhandledRejection', onPanic);

  // Queries are translated before any reaches the engine: a query it can't run is an
  // error answer, never a request that might make the wasm instance panic.
  const translateAll = (queries) => {
    try {
      return { translated: queries.map((query) => translateQuery(schema, query)) };
    } catch (error) {
      if (error instanceof TranslationError || error instanceof GraphQLSyntaxError) {
        return { errors: [engineError(`the offline query engine cannot run this query: ${error.message}`)] };
      }
      throw error;
    }
  };

  const runOne = async (query, txId) => {
    const { translated, errors } = translateAll([query]);
    if (errors) return { errors };
    const answer = JSON.parse(await engine.query(stringify(translated[0].request), txId));
    return translateResult(answer, translated[0]);
  };

  const handlers = {
    'GET /status': async () => ({ status: 'ok' }),
    'POST /': async (body, headers) => {
      const txId = headers['x-transaction-id'];
      if (txId !== undefined && !isTransactionIdShape(txId)) return transactionNotFound(txId);
      metrics.counters.prisma_client_queries_total += 1;
      if (Array.isArray(body.batch)) return runBatch(body, txId);
      if (typeof body.query !== 'string') return { errors: [engineError('the request has no query')] };
      return runOne(body.query, txId);
    },
    'POST /transaction/start': async (body) => {
      const answer = await engine.startTransaction({
        max_wait: body.max_wait ?? 2000,
        timeout: body.timeout ?? 5000,
        isolation_level: body.isolation_level ?? null,
      });
      // A failed start (say, the database is down) comes back as a bare user-facing error.
      return answer.error_code ? asErrors(answer) : answer;
    },
  };

  if (env.PRISMA_OFFLINE_ENGINE_DEBUG === '1') {
    // Reproduces a real engine panic (committing an id shorter than the engine's), for testing recovery.
    handlers['POST /debug/panic'] = async () => engine.track((wasm) => wasm.commitTransaction('debug-panic', '{}'));
  }

  const runBatch = async (body, txId) => {
    const { translated, errors } = translateAll(body.batch.map((item) => item?.query));
    if (errors) return { errors };
    const request = { batch: translated.map((t) => t.request) };
    if (body.transaction) request.transaction = { isolationLevel: body.transaction.isolationLevel ?? null };
    const answer = JSON.parse(await engine.query(stringify(request), txId));
    if (answer.errors) return { errors: answer.errors };
    return { batchResult: answer.batchResult.map((result, i) => translateResult(result, translated[i])) };
  };

  const endTransaction = async (id, how) => {
    if (!isTransactionIdShape(id)) return transactionNotFound(id);
    const answer = await engine.endTransaction(id, how);
    // The engine answers a failed commit or rollback with a bare user-facing error.
    return answer.error_code ? asErrors(answer) : answer;
  };

  const route = async (req, body) => {
    const url = new URL(req.url, 'http://engine');
    const tx = /^\/transaction\/([^/]+)\/(commit|rollback)$/.exec(url.pathname);
    if (req.method === 'POST' && tx) return endTransaction(decodeURIComponent(tx[1]), tx[2]);
    if (req.method === 'GET' && url.pathname === '/metrics') {
      const labels = body && Object.keys(body).length ? body : undefined;
      return url.searchParams.get('format') === 'prometheus' ? metrics.prometheus(labels) : metrics.json(labels);
    }
    const handler = handlers[`${req.method} ${url.pathname}`];
    if (!handler) return null;
    return handler(body ?? {}, req.headers);
  };

  const server = http.createServer((req, res) => {
    if (!authorized(req.headers[TOKEN_HEADER])) {
      // Refused before the body is read or anything is parsed; the connection is not kept.
      res.writeHead(401, { 'content-type': 'application/json', connection: 'close' });
      res.end(stringify({ errors: [engineError(`missing or wrong ${TOKEN_HEADER}`)] }));
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) req.destroy();
      else chunks.push(chunk);
    });
    req.on('end', async () => {
      let status = 200;
      let payload;
      try {
        const text = Buffer.concat(chunks).toString('utf8');
        const body = text ? JSON.parse(text) : undefined;
        if (restarting) await restarting;
        payload = await route(req, body);
        if (payload === null) {
          status = 404;
          payload = { errors: [engineError(`no route ${req.method} ${req.url}`)] };
        }
      } catch (error) {
        if (error instanceof SyntaxError) {
          status = 400;
          payload = { errors: [engineError(`the request body is not JSON: ${error.message}`)] };
        } else if (error instanceof EnginePanic) {
          payload = { errors: [{ ...engineError(error.message), user_facing_error: { is_panic: true, message: error.message, meta: {} } }] };
        } else {
          payload = { errors: [engineError(`the offline query engine failed: ${error?.message ?? error}`)] };
        }
      }
      if (payload?.errors) {
        metrics.counters.prisma_client_queries_failed_total += 1;
        for (const error of payload.errors) explainConnectorError(engine, error);
      }
      const text = typeof payload === 'string' ? payload : stringify(payload);
      res.writeHead(status, { 'content-type': typeof payload === 'string' ? 'text/plain' : 'application/json' });
      res.end(text);
    });
  });
  server.keepAliveTimeout = 60_000;

  // The client connects to `localhost`, which may resolve to either address.
  await listen(server, port, '127.0.0.1');
  const server6 = http.createServer(server.listeners('request')[0]);
  await listen(server6, port, '::1').catch(() => server6.close());

  const shutdown = async () => {
    server.close();
    server6.close();
    const force = setTimeout(() => process.exit(0), 3000);
    force.unref();
    await engine.stop().catch(() => {});
    process.exit(0);
  };
  return { shutdown };
}

/**
 * Put the cause of a driver-adapter error (P2036: a pg error thrown in JavaScript, such as a
 * refused or timed-out connection) into its meta, so that the client can tell what failed.
 */
function explainConnectorError(engine, error) {
  const facing = error?.user_facing_error;
  if (facing?.error_code !== 'P2036' || !Number.isInteger(facing.meta?.id)) return;
  const cause = engine.takeConnectorError(facing.meta.id);
  if (!cause) return;
  facing.meta = { ...facing.meta, message: String(cause.message ?? cause) };
  if (typeof cause.code === 'string') facing.meta.code = cause.code;
}

function asErrors(userFacingError) {
  return { errors: [{ error: userFacingError.message, user_facing_error: userFacingError }] };
}

function transactionNotFound(id) {
  const message = `Transaction API error: Transaction not found. Transaction ID is invalid, refers to an old closed transaction Prisma doesn't have information about anymore, or was obtained before disconnecting: ${id}`;
  return { errors: [engineError(message, 'P2028')] };
}

function listen(server, port, host) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
