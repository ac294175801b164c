# Sourced by scripts/serve, scripts/flask, scripts/prisma and scripts/test: brings a fresh
# checkout to a runnable state. Each step runs only when its inputs changed (a stamp file
# names their hash), so a warm start spends milliseconds here. Needs python3 (3.11+),
# node 20+ and npm.
#   - .venv with the pinned Python packages (requirements-dev.txt for tests);
#   - prisma's pinned npm packages (the Prisma CLIs, the WebAssembly engines);
#   - the engines: WebAssembly by default, PRISMA_ENGINE=native for Prisma's native ones;
#   - the Prisma client, generated from schema.prisma.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

requirements="${CLERK_SYNC_REQUIREMENTS:-requirements.txt}"
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
pip_stamp=".venv/.installed-$(hash_of requirements.txt "$requirements")"
if [ ! -e "$pip_stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
  touch "$pip_stamp"
fi
# requirements-dev.txt includes requirements.txt: the runtime set is installed too.
runtime_stamp=".venv/.installed-$(hash_of requirements.txt requirements.txt)"
[ -e "$runtime_stamp" ] || touch "$runtime_stamp"
# A plain `prisma` in the virtualenv runs scripts/prisma, not Prisma Client Python's CLI
# (which would try to download native engines from Prisma's CDN).
if ! grep -qs "scripts/prisma" .venv/bin/prisma; then
  printf '#!/bin/sh\nexec %q "$@"\n' "$ROOT/scripts/prisma" > .venv/bin/prisma
  chmod +x .venv/bin/prisma
fi

npm_stamp="prisma/node_modules/.installed-$(hash_of prisma/package-lock.json)"
if [ ! -e "$npm_stamp" ]; then
  # --ignore-scripts: Prisma's postinstall would try its CDN.
  (cd prisma && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  touch "$npm_stamp"
fi

export PATH="$ROOT/.venv/bin:$PATH"
export PRISMA_HIDE_UPDATE_MESSAGE=1 CHECKPOINT_DISABLE=1
case "${PRISMA_ENGINE:=wasm}" in
  wasm)
    # The client's query engine: Prisma's WebAssembly build behind the native binary's interface.
    export PRISMA_QUERY_ENGINE_BINARY="${PRISMA_QUERY_ENGINE_BINARY:-$ROOT/prisma/query-engine.mjs}"
    # Any existing file stops the CLIs' start-up download; neither loads it.
    export PRISMA_QUERY_ENGINE_LIBRARY="${PRISMA_QUERY_ENGINE_LIBRARY:-$ROOT/prisma/query-engine.mjs}"
    # Only `migrate resolve` runs it: a connection check (prisma/cli/schema-engine-stub.mjs).
    export PRISMA_SCHEMA_ENGINE_BINARY="${PRISMA_SCHEMA_ENGINE_BINARY:-$ROOT/prisma/cli/schema-engine-stub.mjs}"
    export PRISMA_ENGINES_CHECKSUM_IGNORE_MISSING=1
    ;;
  native) ;; # Prisma's CLIs download the native engines (needs Prisma's CDN; not run by CI here).
  *)
    echo "PRISMA_ENGINE must be wasm (default) or native, not '$PRISMA_ENGINE'" >&2
    return 1 2>/dev/null || exit 1
    ;;
esac
export PRISMA_ENGINE

# generate: keyed on the schema and the pinned client (requirements.txt).
generate_stamp=".venv/.generated-$(hash_of schema.prisma requirements.txt)"
if [ ! -e "$generate_stamp" ]; then
  if ! output="$(python -m prisma generate --schema schema.prisma 2>&1)"; then
    printf 'prisma generate failed:\n%s\n' "$output" >&2
    return 1 2>/dev/null || exit 1
  fi
  rm -f .venv/.generated-*
  touch "$generate_stamp"
fi
