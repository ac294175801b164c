// Unit tests of the GraphQL -> JSON protocol translation, on the exact text
// Prisma Client Python's builder writes. End-to-end behaviour is covered by
// tests/conformance; these pin down the edge cases of parsing and typing.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { test } from 'node:test';

import { BigIntLiteral, GraphQLSyntaxError, parseDocument } from '../src/graphql.mjs';
import { Schema, TranslationError, stringify, translateQuery, translateResult, untype } from '../src/translate.mjs';
import { isTransactionIdShape, poolConfig, withDriverAdapters } from '../src/engine.mjs';

const require = createRequire(import.meta.url);
const schemaWasm = require('@prisma/prisma-schema-wasm');
const datamodel = fs.readFileSync(new URL('../../tests/conformance/schema.prisma', import.meta.url), 'utf8');
const schema = new Schema(JSON.parse(schemaWasm.get_dmmf(JSON.stringify({ prismaSchema: datamodel }))));

test('parses the builder layout: aliases, argument blocks, lists with trailing commas', () => {
  const doc = parseDocument(`mutation {
  result: createOneAuthor
  (
    data: {
      email: "a\\"b\\n\\u00e9"
      tags: [
        "x",
        "y",
      ]
    }
  )
  {
    id
    posts(
      take: 1
    )
    {
      id
    }
  }
}`);
  assert.equal(doc.operation, 'mutation');
  const [root] = doc.fields;
  assert.equal(root.alias, 'result');
  assert.equal(root.name, 'createOneAuthor');
  assert.deepEqual(root.args.data, { email: 'a"b\né', tags: ['x', 'y'] });
  assert.equal(root.selection[1].name, 'posts');
  assert.deepEqual(root.selection[1].args, { take: 1 });
});

test('keeps integers beyond 2^53 exactly', () => {
  const doc = parseDocument('query { result: findManyAuthor(where: { views: { gt: 9223372036854775807 } }) { id } }');
  const value = doc.fields[0].args.where.views.gt;
  assert.ok(value instanceof BigIntLiteral);
  assert.equal(stringify(value), '9223372036854775807');
});

test('rejects what the builder never writes, with a syntax error', () => {
  const bad = [
    'query { result: x(a: $var) { id } }',
    'subscription { x }',
    'query { result: x(a: "open) { id } }',
    'query {',
    'query { result: x(where: { __proto__: { polluted: true } }) { id } }',
  ];
  for (const text of bad) {
    assert.throws(() => parseDocument(text), GraphQLSyntaxError, text);
  }
});

test('wraps Json arguments by their schema type, and leaves plain strings alone', () => {
  const { request } = translateQuery(
    schema,
    'mutation { result: createOneAuthor(data: { email: "{\\"not\\": \\"json\\"}" settings: "{\\"a\\": 1}" }) { id } }',
  );
  assert.deepEqual(request.query.arguments.data, {
    email: '{"not": "json"}',
    settings: { $type: 'Json', value: '{"a": 1}' },
  });
});

test('types nested filters and relation writes through the DMMF', () => {
  const { request } = translateQuery(
    schema,
    `query { result: findManyAuthor(where: { settings: { equals: "[1]" } posts: { some: { author: { is: { settings: { equals: "2" } } } } } views: { in: [9223372036854775807] } }) { id } }`,
  );
  const where = request.query.arguments.where;
  assert.deepEqual(where.settings.equals, { $type: 'Json', value: '[1]' });
  assert.deepEqual(where.posts.some.author.is.settings.equals, { $type: 'Json', value: '2' });
  assert.deepEqual(where.views.in, [{ $type: 'BigInt', value: '9223372036854775807' }]);
});

test('resolves actions by model name, including OrThrow variants and raw queries', () => {
  const unique = translateQuery(schema, 'query { result: findUniqueAuthorOrThrow(where: { id: 1 }) { id } }');
  assert.equal(unique.request.modelName, 'Author');
  assert.equal(unique.request.action, 'findUniqueOrThrow');
  assert.equal(unique.field, 'findUniqueAuthorOrThrow');
  const raw = translateQuery(schema, 'mutation { result: queryRaw(query: "SELECT 1" parameters: "[]") }');
  assert.deepEqual(raw.request, { action: 'queryRaw', query: { arguments: { query: 'SELECT 1', parameters: '[]' }, selection: {} } });
});

test('refuses operations and selections the engine would panic on', () => {
  assert.throws(() => translateQuery(schema, 'query { result: countAuthor { _all } }'), TranslationError);
  assert.throws(() => translateQuery(schema, 'query { result: findManyNobody { id } }'), TranslationError);
  assert.throws(() => translateQuery(schema, 'query { result: findManyAuthor }'), TranslationError);
  assert.throws(() => translateQuery(schema, 'query { a: findManyAuthor { id } b: findManyAuthor { id } }'), TranslationError);
});

test('answers under the alias, with typed values as the GraphQL protocol sends them', () => {
  const answer = {
    data: {
      findManyAuthor: [
        {
          views: { $type: 'BigInt', value: '9223372036854775807' },
          balance: { $type: 'Decimal', value: '1.50' },
          settings: { $type: 'Json', value: '{"a":1}' },
          birthday: { $type: 'DateTime', value: '2024-01-01T00:00:00.000Z' },
          avatar: { $type: 'Bytes', value: 'aGk=' },
        },
      ],
    },
  };
  const result = translateResult(answer, { alias: 'result', field: 'findManyAuthor' });
  assert.equal(
    stringify(result),
    '{"data":{"result":[{"views":9223372036854775807,"balance":"1.50","settings":"{\\"a\\":1}","birthday":"2024-01-01T00:00:00.000Z","avatar":"aGk="}]}}',
  );
  assert.deepEqual(translateResult({ errors: [{ error: 'x' }] }, { alias: 'result', field: 'f' }), { errors: [{ error: 'x' }] });
  assert.deepEqual(untype({ $type: 'X', value: 1, extra: true }), { $type: 'X', value: 1, extra: true });
});

test('adds the driverAdapters preview feature once, wherever previewFeatures stands', () => {
  const bare = 'generator client {\n  provider = "prisma-client-py"\n}\n';
  assert.match(withDriverAdapters(bare), /previewFeatures = \["driverAdapters"\]/);
  const other = 'generator client {\n  provider = "x"\n  previewFeatures = ["fullTextSearch"]\n}\n';
  assert.match(withDriverAdapters(other), /previewFeatures = \["driverAdapters", "fullTextSearch"\]/);
  const already = withDriverAdapters(bare);
  assert.equal(withDriverAdapters(already), already);
});

test('reads Prisma URL parameters and keeps them from node-postgres', () => {
  const { pool, schema: pgSchema } = poolConfig('postgresql://u:p@db:5432/app?schema=tenant&connection_limit=3&connect_timeout=7&sslmode=require');
  assert.equal(pool.max, 3);
  assert.equal(pgSchema, 'tenant');
  assert.equal(pool.connectionString, 'postgresql://u:p@db:5432/app?sslmode=require');
});

test('bounds every wait: connect, pool checkout, unanswered queries, and server-side limits', () => {
  const defaults = poolConfig('postgresql://u@db/app', {});
  assert.equal(defaults.connectTimeoutMillis, 5000);
  assert.equal(defaults.pool.connectionTimeoutMillis, 10000);
  assert.equal(defaults.queryTimeoutMillis, 10000);
  assert.equal(defaults.pool.keepAlive, true);
  assert.equal(defaults.pool.statement_timeout, 5000);
  assert.equal(defaults.pool.lock_timeout, 4000);
  assert.equal(defaults.pool.idle_in_transaction_session_timeout, 10000);

  const env = { DATABASE_STATEMENT_TIMEOUT: '2.5', DATABASE_LOCK_TIMEOUT: '0', DATABASE_IDLE_IN_TRANSACTION_TIMEOUT: '3' };
  const set = poolConfig('postgresql://u@db/app?connect_timeout=7&pool_timeout=2&socket_timeout=4', env);
  assert.equal(set.connectTimeoutMillis, 7000);
  assert.equal(set.pool.connectionTimeoutMillis, 2000);
  assert.equal(set.queryTimeoutMillis, 4000);
  assert.equal(set.pool.statement_timeout, 2500);
  assert.equal(set.pool.lock_timeout, undefined, '0 leaves the server its own setting');
  assert.equal(set.pool.idle_in_transaction_session_timeout, 3000);
  assert.throws(() => poolConfig('postgresql://u@db/app', { DATABASE_LOCK_TIMEOUT: 'soon' }), /DATABASE_LOCK_TIMEOUT/);
});

test('lets only engine-shaped transaction ids through (shorter ones make the engine panic)', () => {
  assert.ok(isTransactionIdShape('cmwva05tz00004uszl0hfbvjg'));
  for (const id of ['', 'nope', 'debug-panic', 'cmwva05tz00004uszl0hfbvj', 'CMWVA05TZ00004USZL0HFBVJG', 'cmwva05tz00004uszl0hfbvj-', undefined]) {
    assert.ok(!isTransactionIdShape(id), String(id));
  }
});

test('stringify writes BigInt literals bare wherever they are, and leaves look-alike strings alone', () => {
  const value = { a: [new BigIntLiteral('-9223372036854775808'), { b: new BigIntLiteral('12') }], s: 'bigint-:12', n: null };
  assert.equal(stringify(value), '{"a":[-9223372036854775808,{"b":12}],"s":"bigint-:12","n":null}');
  assert.equal(stringify({ u: undefined, x: 'q"\u0001' }), '{"x":"q\\"\\u0001"}');
});

test('string literals: escapes decoded, raw control characters refused', () => {
  const doc = parseDocument('query { result: findManyAuthor(where: { email: "plain", name: "t\\u0041b\\n" }) { id } }');
  assert.deepEqual(doc.fields[0].args.where, { email: 'plain', name: 'tAb\n' });
  assert.throws(() => parseDocument('query { result: findManyAuthor(where: { email: "a\u0001b" }) { id } }'), GraphQLSyntaxError);
});
