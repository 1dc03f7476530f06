"""Documents (the generic content indexes) and blobs (files addressed by SHA-256)."""

from __future__ import annotations

import hashlib
from typing import Any

from fleetcmd.errors import NotFound
from fleetcmd.model.records import Page, dumps, loads
from fleetcmd.store.core import StoreCore, TxCore


class DocumentsTx(TxCore):
    """Document reads and writes inside a transaction."""

    def put_document(self, index: str, doc_id: str, body: Any) -> int:
        row = self.one(
            "INSERT INTO documents (index_name, doc_id, body, version, updated_at) "
            "VALUES (:i, :d, :b, 1, :now) ON CONFLICT (index_name, doc_id) DO UPDATE SET "
            "body = excluded.body, version = documents.version + 1, "
            "updated_at = excluded.updated_at "
            "RETURNING version",
            {"i": index, "d": doc_id, "b": dumps(body), "now": self.now},
        )
        assert row is not None
        if index == "alerts" and int(row[0]) == 1:
            self.add_events("alert", [{"type": "alert", "subject": doc_id}])
        return int(row[0])

    def delete_document(self, index: str, doc_id: str) -> bool:
        cur = self.ex(
            "DELETE FROM documents WHERE index_name = :i AND doc_id = :d", {"i": index, "d": doc_id}
        )
        return bool(cur.rowcount)

    def document(self, index: str, doc_id: str) -> Any:
        row = self.one(
            "SELECT body FROM documents WHERE index_name = :i AND doc_id = :d",
            {"i": index, "d": doc_id},
        )
        return None if row is None else loads(row[0])

    def documents(self, index: str, prefix: str = "") -> dict[str, Any]:
        rows = self.all(
            "SELECT doc_id, body FROM documents WHERE index_name = :i ORDER BY doc_id", {"i": index}
        )
        return {r[0]: loads(r[1]) for r in rows if r[0].startswith(prefix)}

    def groups_with_document(self, index: str, name: str) -> list[str]:
        """Groups holding a `<group>/<name>` document in `index` (`content/` is not a group)."""
        rows = self.all(
            "SELECT doc_id FROM documents WHERE index_name = :i ORDER BY doc_id", {"i": index}
        )
        suffix = f"/{name}"
        return sorted(
            {
                d.split("/", 1)[0]
                for (d,) in rows
                if d.endswith(suffix) and d.count("/") == 1 and not d.startswith("content/")
            }
        )

    def document_page(
        self, index: str, prefix: str, after: str | None, limit: int, descending: bool = False
    ) -> tuple[list[tuple[str, Any]], bool]:
        """Up to `limit` documents in id order (or reverse) past `after`, and whether more
        follow. The prefix is matched exactly (`substr`), not as a range, which a collation
        may reorder."""
        where = "index_name = :i AND doc_id >= :p AND substr(doc_id, 1, :n) = :p"
        if after is not None:
            where += " AND doc_id < :after" if descending else " AND doc_id > :after"
        rows = self.all(
            f"SELECT doc_id, body FROM documents WHERE {where} "
            f"ORDER BY doc_id {'DESC' if descending else 'ASC'} LIMIT :lim",
            {"i": index, "p": prefix, "n": len(prefix), "after": after, "lim": limit + 1},
        )
        return [(r[0], loads(r[1])) for r in rows[:limit]], len(rows) > limit


class DocumentsStore(StoreCore):
    """Blobs, and document reads in their own transaction."""

    def put_blob(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        with self.transaction() as tx:
            tx.ex(
                "INSERT INTO blobs (sha256, size, content, created_at) VALUES (:h, :n, :c, :now) "
                "ON CONFLICT (sha256) DO NOTHING",
                {"h": digest, "n": len(content), "c": content, "now": tx.now},
            )
        return digest

    def get_blob(self, digest: str) -> bytes:
        with self.reading() as tx:
            row = tx.one("SELECT content FROM blobs WHERE sha256 = :h", {"h": digest})
        if row is None:
            raise NotFound(f"blob {digest} not found")
        return bytes(row[0])

    def get_document(self, index: str, doc_id: str) -> Any:
        with self.reading() as tx:
            body = tx.document(index, doc_id)
        if body is None:
            raise NotFound(f"{index}/{doc_id} not found")
        return body

    def list_documents(self, index: str, prefix: str = "") -> dict[str, Any]:
        with self.reading() as tx:
            return tx.documents(index, prefix)

    def document_page(
        self,
        index: str,
        prefix: str = "",
        cursor: str | None = None,
        limit: int = 100,
        descending: bool = False,
    ) -> Page:
        """One page of an index in id order (or reverse): items are `{"id", "document"}`;
        the cursor is the last id of the page."""
        with self.reading() as tx:
            docs, more = tx.document_page(index, prefix, cursor or None, limit, descending)
        items = [{"id": doc_id, "document": body} for doc_id, body in docs]
        return Page(items, docs[-1][0] if more else None)
