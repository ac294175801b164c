import assert from 'node:assert/strict';
import { test } from 'node:test';

import { logLine } from '../src/log.mjs';

test('engine log lines have the service log shape', () => {
  const line = JSON.parse(logLine({ level: 'warn', message: 'the pooler refuses statement_timeout', code: '08P01', pid: 1 }));
  assert.deepEqual(Object.keys(line).slice(0, 5), ['ts', 'level', 'logger', 'message', 'pid']);
  assert.equal(line.level, 'warning');
  assert.equal(line.logger, 'query_engine');
  assert.equal(line.pid, process.pid);
  assert.equal(line.code, '08P01');
  assert.ok(!Number.isNaN(Date.parse(line.ts)));
});
