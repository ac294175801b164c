"""Several queries in one engine round trip, as one transaction, with their results.

`Prisma.batch_()` sends its queries in one request but throws the answers
away. A write that must branch on what the database held under a lock (was the
row there, was the delivery new) needs them, so this batch keeps them. Queries
are built by the same generated actions (`batch.user.upsert(...)`), so they
are exactly what the client would send one at a time.
"""

from __future__ import annotations

import json
from typing import Any, LiteralString

from prisma import Batch, Prisma
from prisma._builder import QueryBuilder
from prisma.metadata import PRISMA_MODELS, RELATIONAL_FIELD_MAPPINGS
from pydantic import BaseModel


class ResultBatch(Batch):
    """A `Prisma.batch_()` whose `commit_with_results()` returns each query's `result`.

    Any failing query rolls the whole batch back and raises the client's usual
    error (`UniqueViolationError`, `RawQueryError`, ...).
    """

    def __init__(self, client: Prisma) -> None:
        super().__init__(client)
        self._client = client
        self._built: list[str] = []

    def _add(self, **kwargs: Any) -> None:
        builder = QueryBuilder(
            **kwargs,
            prisma_models=PRISMA_MODELS,
            relational_field_mappings=RELATIONAL_FIELD_MAPPINGS,
        )
        self._built.append(builder.build_query())

    def find_unique(self, model: type[BaseModel], where: dict[str, Any]) -> None:
        """A read, as `<model>.prisma().find_unique(where=...)` builds it (batch actions only write)."""
        self._add(method="find_unique", model=model, arguments={"where": where})

    def query_raw(self, query: LiteralString, *args: Any) -> None:
        """A raw statement whose rows come back (`{"columns", "types", "rows"}`)."""
        self._add(method="query_raw", arguments={"query": query, "parameters": args})

    def commit_with_results(self) -> list[Any]:
        queries, self._built = self._built, []
        payload = {"batch": [{"query": q, "variables": {}} for q in queries], "transaction": True}
        answer = self._client._engine.query(json.dumps(payload), tx_id=self._client._tx_id)
        return [item["data"]["result"] for item in answer["batchResult"]]

    def commit(self) -> None:
        self.commit_with_results()
