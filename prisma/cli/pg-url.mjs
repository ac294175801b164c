// Prisma's PostgreSQL URLs as node-postgres config, shared by prisma.config.mjs and the
// schema-engine stub. pg would misread Prisma's own URL parameters; `?schema=` becomes the
// search_path, as Prisma's engines treat it.

const PRISMA_ONLY = [
  'schema',
  'connection_limit',
  'pool_timeout',
  'pgbouncer',
  'socket_timeout',
  'statement_cache_size',
  'sslaccept',
  'sslidentity',
];

/** A quoted SQL identifier. */
export const ident = (name) => '"' + name.replaceAll('"', '""') + '"';

/** pg's config for a Prisma URL, and the schema its `?schema=` names (default public). */
export function pgConfig(url) {
  const parsed = new URL(url);
  const schema = parsed.searchParams.get('schema') || 'public';
  for (const name of PRISMA_ONLY) parsed.searchParams.delete(name);
  const options = [parsed.searchParams.get('options'), `-c search_path=${ident(schema)}`];
  parsed.searchParams.delete('options');
  const config = {
    connectionString: parsed.href,
    options: options.filter(Boolean).join(' '),
    allowExitOnIdle: true,
  };
  return { config, schema };
}

/** `url` pointed at another database on the same server, parameters kept. */
export function withDatabase(url, database) {
  const parsed = new URL(url);
  parsed.pathname = '/' + encodeURIComponent(database);
  return parsed.href;
}
