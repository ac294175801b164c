#!/usr/bin/env node
// Drop-in for Prisma's native query-engine binary, for machines that cannot
// download it: point PRISMA_QUERY_ENGINE_BINARY here. It accepts the flags
// Prisma Client Python passes and serves the same HTTP interface.

const ENGINE_COMMIT = '393aa359c9ad4a4bb28630fb5613f9c281cde053';
// Read before anything is awaited: a parent that dies while we start (a worker killed
// during boot) would otherwise leave us watching init, and outliving it.
const parent = process.ppid;

function parseArgs(argv) {
  const options = { port: 4466 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--version' || arg === '-V') options.version = true;
    else if (arg === '-p' || arg === '--port') options.port = Number(argv[++i]);
    else if (arg.startsWith('--port=')) options.port = Number(arg.slice('--port='.length));
    // --enable-metrics, --enable-raw-queries, --enable-playground and the
    // rest are accepted: metrics and raw queries are always on here.
  }
  return options;
}

const options = parseArgs(process.argv.slice(2));
if (options.version) {
  // Prisma Client Python reads this line to check the engine matches the client.
  process.stdout.write(`query-engine ${ENGINE_COMMIT}\n`);
  process.exit(0);
}
// The client names its pid (app/db.py): if it died before this process ran, we were
// already handed to init, and `parent` above is not it.
const expectedParent = Number(process.env.CLERK_SYNC_ENGINE_PARENT);
if (expectedParent > 0 && parent !== expectedParent) process.exit(1);
if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
  process.stderr.write(`invalid port: ${options.port}\n`);
  process.exit(2);
}

const { startServer } = await import('./src/server.mjs');
const { logLine } = await import('./src/log.mjs');
let server;
try {
  server = await startServer({ port: options.port });
} catch (error) {
  process.stderr.write(`${logLine({ level: 'error', message: `query engine failed to start: ${error.message}` })}\n`);
  process.exit(1);
}
// Prisma Client Python stops its engine with SIGINT. A SIGTERM comes from outside, and
// when it is sent to a whole process group or cgroup (systemd's KillMode=control-group)
// it reaches the worker too, which still has requests to drain through this engine.
// So keep serving: the worker stops us with SIGINT once drained, the parent watch below
// stops us if it dies, and a minute later we stop regardless.
process.on('SIGINT', () => server.shutdown());
process.on('SIGTERM', () => setTimeout(() => server.shutdown(), 60_000));

// Exit with the process that started us: an engine must not outlive its client.
setInterval(() => {
  if (process.ppid !== parent) server.shutdown();
}, 1000).unref();
