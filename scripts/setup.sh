# Sourced by scripts/serve and scripts/test: brings a fresh checkout to a runnable
# state, doing only what is missing. Needs python3 (3.11+), node 20+ and npm.
#   - .venv with the pinned Python packages (requirements-dev.txt for tests);
#   - prisma's pinned npm packages (the Prisma CLI and the offline engine);
#   - the query engine: Prisma's native one where it can be downloaded, the offline
#     one otherwise (see README, "The query engine");
#   - the Prisma client, generated from schema.prisma.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

requirements="${CLERK_SYNC_REQUIREMENTS:-requirements.txt}"
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=".venv/.installed-$(cat requirements.txt "$requirements" | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
  touch "$stamp"
fi

lock_stamp="prisma/node_modules/.installed-$(sha256sum prisma/package-lock.json | cut -c1-16)"
if [ ! -e "$lock_stamp" ]; then
  # --ignore-scripts: Prisma's postinstall would try its CDN; engines are chosen below instead.
  (cd prisma && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  touch "$lock_stamp"
fi

export PATH="$ROOT/.venv/bin:$PATH"
eval "$(python -m prisma_engines engine-env)"
python -m prisma_engines generate
