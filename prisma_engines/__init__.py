"""Prisma engine plumbing, kept apart from the app.

`engines` names the engines that run (WebAssembly by default) and runs Prisma Client
Python's `generate`; `migrations` calls Prisma's own schema commands through
`scripts/prisma`; `localdb` finds or starts the local PostgreSQL the scripts use without
DATABASE_URL (`python -m prisma_engines --help`). `auth`, `builder` and `transport` adjust
how Prisma Client Python talks to its query engine.
"""
