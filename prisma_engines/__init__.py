"""Prisma engine plumbing for machines that cannot download Prisma's native engines.

`engines` chooses the query engine (native, or the WebAssembly one in `node/`),
`migrations` generates and applies migrations without the native schema engine,
and `localdb` finds or starts a local PostgreSQL. None of it is application code;
`python -m prisma_engines --help` lists the commands.
"""
