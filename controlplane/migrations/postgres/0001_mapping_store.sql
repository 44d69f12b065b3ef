-- The PostgreSQL mapping store, version 1. Applied by sqlx's migrator (under its
-- advisory lock) when a control plane opens the store; never edit an applied file:
-- add the next version instead.

-- Keys collate as bytes ("C") so that listing and keyset paging order keys exactly as
-- the SQLite and Redis stores do, whatever the database's default collation is.
CREATE TABLE mappings (
    key TEXT COLLATE "C" PRIMARY KEY,
    destination TEXT NOT NULL,
    updated_revision BIGINT NOT NULL
);

-- The revision history nodes follow. A revision is MAX(revision) + 1, assigned while the
-- writer holds the store's write lock, so revisions commit in order and without gaps.
-- key '' with a NULL destination marks a bulk import (nodes flush their caches).
CREATE TABLE changes (
    revision BIGINT PRIMARY KEY,
    key TEXT COLLATE "C" NOT NULL,
    destination TEXT,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The epoch (names this revision history) is inserted once by the first control plane.
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
