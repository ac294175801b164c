/** One JSON line in the service's log shape (serving/logs.py): ts, level, logger, message, pid, then the rest. */
// An event's own ts, logger and pid are dropped: they would override ours.
export function logLine({ level = 'info', message = '', ts, logger, pid, ...rest }) {
  const name = String(level).toLowerCase();
  return JSON.stringify({
    ts: new Date().toISOString(),
    level: name === 'warn' ? 'warning' : name,
    logger: 'query_engine',
    message: String(message),
    pid: process.pid,
    ...rest,
  });
}
