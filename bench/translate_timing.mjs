// Bench-only: times the offline engine's own per-request work, in a loop, warm: parsing
// the client's GraphQL, translating it to the JSON protocol, writing the engine request,
// and mapping a typical answer back. Usage: node bench/translate_timing.mjs [iterations]

import fs from 'node:fs';
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';

import { Schema, stringify, translateQuery, translateResult } from '../prisma/src/translate.mjs';

const require = createRequire(new URL('../prisma/src/engine.mjs', import.meta.url));
const schemaWasm = require('@prisma/prisma-schema-wasm');
const datamodel = fs.readFileSync(new URL('../schema.prisma', import.meta.url), 'utf8');
const schema = new Schema(JSON.parse(schemaWasm.get_dmmf(JSON.stringify({ prismaSchema: datamodel }))));

// What Prisma Client Python's builder writes for the webhook's upsert (prisma/_builder.py layout).
const upsert = `mutation {
  result: upsertOneUser
  (
    where: {
      clerkId: "user_2abcdefghijklmnopqrstuvw"
    }
    create: {
      clerkId: "user_2abcdefghijklmnopqrstuvw"
      email: "ada@example.com"
      firstName: "Ada"
      lastName: "Lovelace"
      username: "ada"
      imageUrl: "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9"
      clerkUpdatedAt: "2026-12-07T01:36:13.595000+00:00"
    }
    update: {
      email: "ada@example.com"
      firstName: "Ada"
      lastName: "Lovelace"
      username: "ada"
      imageUrl: "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9"
      clerkUpdatedAt: "2026-12-07T01:36:13.595000+00:00"
    }
  )
  {
    id
    clerkId
    email
    firstName
    lastName
    username
    imageUrl
    clerkUpdatedAt
    deletedAt
    createdAt
    updatedAt
  }
}`;
const answer = {
  data: {
    upsertOneUser: {
      id: 'cmxcln74h00002n49xlde5ndl', clerkId: 'user_2abcdefghijklmnopqrstuvw', email: 'ada@example.com',
      firstName: 'Ada', lastName: 'Lovelace', username: 'ada', imageUrl: 'https://img.clerk.com/x',
      clerkUpdatedAt: { $type: 'DateTime', value: '2026-12-07T01:36:13.595Z' }, deletedAt: null,
      createdAt: { $type: 'DateTime', value: '2026-12-07T01:36:15.525Z' },
      updatedAt: { $type: 'DateTime', value: '2026-12-07T01:36:15.525Z' },
    },
  },
};

const n = Number(process.argv[2] ?? 20000);
const run = () => {
  const t = translateQuery(schema, upsert);
  const text = stringify(t.request);
  return stringify(translateResult(answer, t)).length + text.length;
};
for (let i = 0; i < n; i++) run(); // warm
const t0 = performance.now();
let sink = 0;
for (let i = 0; i < n; i++) sink += run();
const us = ((performance.now() - t0) / n) * 1000;
console.log(`parse + translate + stringify request + map and stringify answer: ${us.toFixed(1)} us per upsert (${sink > 0})`);
