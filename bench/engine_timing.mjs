#!/usr/bin/env node
// Bench-only: runs prisma/query-engine.mjs unchanged, with timers
// wrapped around it from the outside (nothing in prisma_engines is edited).
// `scripts/bench --profile` (bench/profile.py) points PRISMA_QUERY_ENGINE_BINARY at a shim that
// execs this file. It measures, per engine HTTP request:
//   - server time: from the request event to the response's `finish`;
//   - wasm time: WasmEngine.query / startTransaction / endTransaction, until settled
//     (includes the node-postgres time below, which the wasm engine awaits);
//   - pg time: pg.Client#query, until its result arrives (loopback + PostgreSQL);
// and it records the GraphQL bodies and engine answers so that translation
// (translate.mjs) can be timed on the very same queries, warm, in a loop.
// Two extra routes: POST /__bench/reset clears the counters, GET /__bench/stats
// returns them (and runs the translation micro-benchmark).

import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';

const engineDir = new URL('../prisma/', import.meta.url);
const require = createRequire(new URL('src/engine.mjs', engineDir));
const MAX_RECORDED = 5000;

const fresh = () => ({
  requests: {},
  wasm: { calls: 0, ms: 0 },
  pg: { calls: 0, ms: 0 },
  queries: [],
  answers: [],
});
let stats = fresh();

function add(bucket, key, ms) {
  const entry = (bucket[key] ??= { calls: 0, ms: 0 });
  entry.calls += 1;
  entry.ms += ms;
}

function routeKey(req) {
  const path = req.url.split('?')[0];
  if (/^\/transaction\/[^/]+\/(commit|rollback)$/.test(path)) return `${req.method} /transaction/:id/${path.split('/').pop()}`;
  return `${req.method} ${path}`;
}

// --- pg.Client#query: promise style (transactions) and callback style (Pool#query) ---
const pg = require('pg');
const clientQuery = pg.Client.prototype.query;
pg.Client.prototype.query = function timedQuery(...args) {
  const t0 = performance.now();
  const done = () => {
    stats.pg.calls += 1;
    stats.pg.ms += performance.now() - t0;
  };
  const cbIndex = args.findIndex((a) => typeof a === 'function');
  if (cbIndex >= 0) {
    const cb = args[cbIndex];
    args[cbIndex] = function timedCallback(...cbArgs) {
      done();
      return cb.apply(this, cbArgs);
    };
    return clientQuery.apply(this, args);
  }
  const result = clientQuery.apply(this, args);
  if (result && typeof result.then === 'function') result.then(done, done);
  return result;
};

// --- the wasm engine's entry points (their time includes the pg time above) ---
const { WasmEngine } = await import(new URL('src/engine.mjs', engineDir));
for (const name of ['query', 'startTransaction', 'endTransaction']) {
  const original = WasmEngine.prototype[name];
  WasmEngine.prototype[name] = function timedEngineCall(...args) {
    const t0 = performance.now();
    const settle = () => {
      stats.wasm.calls += 1;
      stats.wasm.ms += performance.now() - t0;
    };
    const promise = original.apply(this, args);
    promise.then(
      (answer) => {
        settle();
        if (name === 'query' && typeof answer === 'string' && stats.answers.length < MAX_RECORDED) stats.answers.push(answer);
      },
      settle,
    );
    return promise;
  };
}

// --- the HTTP server: time each request, record query bodies, serve /__bench/* ---
const WRAPPED = Symbol('benchTimed');
const createServer = http.createServer;
http.createServer = function timedCreateServer(...args) {
  const index = args.findIndex((a) => typeof a === 'function');
  if (index >= 0 && !args[index][WRAPPED]) {
    const listener = args[index];
    const timed = function timedListener(req, res) {
      if (req.url.startsWith('/__bench/')) return benchRoute(req, res);
      const t0 = performance.now();
      const key = routeKey(req);
      if (key === 'POST /' && stats.queries.length < MAX_RECORDED) {
        const chunks = [];
        req.on('data', (chunk) => chunks.push(chunk));
        req.on('end', () => stats.queries.push(Buffer.concat(chunks).toString('utf8')));
      }
      res.on('finish', () => add(stats.requests, key, performance.now() - t0));
      return listener.call(this, req, res);
    };
    timed[WRAPPED] = true;
    args[index] = timed;
  }
  return createServer.apply(this, args);
};

async function translationBenchmark() {
  // The same functions server.mjs calls, on the queries and answers it saw.
  const { Schema, translateQuery, translateResult, stringify } = await import(new URL('src/translate.mjs', engineDir));
  const schemaWasm = require('@prisma/prisma-schema-wasm');
  const datamodel = fs.readFileSync(process.env.PRISMA_DML_PATH, 'utf8');
  const schema = new Schema(JSON.parse(schemaWasm.get_dmmf(JSON.stringify({ prismaSchema: datamodel }))));
  const queries = stats.queries.map((text) => JSON.parse(text).query).filter((q) => typeof q === 'string');
  const answers = stats.answers;
  const rounds = 5;
  const loop = (items, fn) => {
    if (items.length === 0) return 0;
    for (const item of items) fn(item); // warm-up
    const t0 = performance.now();
    for (let r = 0; r < rounds; r++) for (const item of items) fn(item);
    return (performance.now() - t0) / (rounds * items.length);
  };
  const requestMs = loop(queries, (q) => stringify(translateQuery(schema, q).request));
  const resultMs = loop(answers, (a) => {
    const answer = JSON.parse(a);
    const field = answer.data ? Object.keys(answer.data)[0] : 'result';
    stringify(translateResult(answer, { alias: 'result', field }));
  });
  return { queries: queries.length, answers: answers.length, requestMsPerQuery: requestMs, resultMsPerAnswer: resultMs };
}

async function benchRoute(req, res) {
  req.resume();
  let payload = { ok: true };
  if (req.url.startsWith('/__bench/reset')) {
    stats = fresh();
  } else if (req.url.startsWith('/__bench/stats')) {
    const { queries, answers, ...counters } = stats;
    payload = { ...counters, translation: await translationBenchmark() };
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify(payload));
}

await import(new URL('query-engine.mjs', engineDir));
