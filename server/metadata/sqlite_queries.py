"""The longer SQL of the SQLite driver: garbage collection over the reference graph, and accounting.

The graph lives in four tables: tags (roots), manifest_references (index -> child manifest, manifest -> blob),
manifests.subject (referrer -> subject) and repository_blobs (repository -> blob links). Every step runs inside a
write transaction that re-derives what is garbage there and then, so a push racing with garbage collection
either sees all its blobs or fails with MANIFEST_BLOB_UNKNOWN: a stored manifest never points at a missing blob.
"""

from __future__ import annotations

# Manifests of one repository that nothing keeps alive: not tagged, not a child of a live index, not a
# referrer of a live manifest (signatures and SBOMs live as long as their subject), and older than the cutoff
# (children pushed by digest before their index must survive until the index arrives).
DEAD_MANIFESTS = """
WITH RECURSIVE live(digest) AS (
    SELECT digest FROM tags WHERE repository_id = :repository
    UNION
    SELECT r.child FROM manifest_references r JOIN live ON r.digest = live.digest
     WHERE r.repository_id = :repository AND r.kind = 'manifest'
    UNION
    SELECT m.digest FROM manifests m JOIN live ON m.subject = live.digest
     WHERE m.repository_id = :repository
)
SELECT digest, size FROM manifests
 WHERE repository_id = :repository AND created_at < :cutoff AND digest NOT IN (SELECT digest FROM live)
"""

# Links no manifest of their repository uses: at once once a manifest had used the blob there (its image was
# deleted), after the grace period for a blob never used yet (an upload whose manifest has not arrived).
STALE_LINKS = """
SELECT l.repository_id, l.digest FROM repository_blobs l
 WHERE (l.referenced = 1 OR l.created_at < :cutoff)
   AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.repository_id = l.repository_id AND r.child = l.digest)
"""

# Blobs no repository links and no manifest anywhere references.
GARBAGE_BLOBS = """
SELECT b.digest, b.size, b.key FROM blobs b
 WHERE NOT EXISTS (SELECT 1 FROM repository_blobs l WHERE l.digest = b.digest)
   AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.child = b.digest AND r.kind = 'blob')
 LIMIT :limit
"""

ORPHAN_MANIFEST_CONTENT = """
SELECT c.digest, length(c.data) FROM manifest_content c
 WHERE NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = c.digest)
"""


# -- accounting (read-only) --------------------------------------------------------------------------------------

# Bytes of the blobs a repository links: (only it links them, others link them too).
REPOSITORY_USAGE = """
SELECT COALESCE(SUM(CASE WHEN shared THEN 0 ELSE size END), 0), COALESCE(SUM(CASE WHEN shared THEN size ELSE 0 END), 0)
  FROM (SELECT b.size AS size, EXISTS (SELECT 1 FROM repository_blobs o
                                        WHERE o.digest = l.digest AND o.repository_id != l.repository_id) AS shared
          FROM repository_blobs l JOIN blobs b ON b.digest = l.digest WHERE l.repository_id = ?)
"""

REPOSITORY_PAGE = """
SELECT r.id, r.name,
       (SELECT COUNT(*) FROM tags t WHERE t.repository_id = r.id),
       (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id),
       MAX((SELECT COALESCE(MAX(t.updated_at), 0) FROM tags t WHERE t.repository_id = r.id),
           (SELECT COALESCE(MAX(m.created_at), 0) FROM manifests m WHERE m.repository_id = r.id))
  FROM repositories r
 WHERE r.name > ? AND EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id)
 ORDER BY r.name LIMIT ?
"""

# Size of a manifest as pulled: its own bytes, its child manifests', and every blob they reference, each once.
MANIFEST_TOTAL_SIZE = """
WITH RECURSIVE tree(digest) AS (
    SELECT :digest
    UNION
    SELECT r.child FROM manifest_references r JOIN tree ON r.digest = tree.digest
     WHERE r.repository_id = :repository AND r.kind = 'manifest'
)
SELECT (SELECT COALESCE(SUM(m.size), 0) FROM manifests m
         WHERE m.repository_id = :repository AND m.digest IN (SELECT digest FROM tree))
     + (SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (
            SELECT r.child FROM manifest_references r
             WHERE r.repository_id = :repository AND r.kind = 'blob' AND r.digest IN (SELECT digest FROM tree)))
"""

TAG_PAGE = """
SELECT t.name, t.digest, m.media_type, t.updated_at FROM tags t
  JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest
 WHERE t.repository_id = ? AND t.name > ? ORDER BY t.name LIMIT ?
"""


# -- the pull-through cache --------------------------------------------------------------------------------------

# What eviction may take under a name range: manifests no other manifest of their repository names, least recently
# pulled first (a manifest's last pull is its recorded one, else when it was cached), in repositories nobody pulled
# from, or fetched into, after :after.
CACHE_CANDIDATES = """
WITH scope AS (SELECT id, name FROM repositories WHERE name >= :low AND name < :high),
idle AS (
    SELECT s.id, s.name FROM scope s
     WHERE NOT EXISTS (SELECT 1 FROM cache_pulls p WHERE p.repository = s.name AND p.pulled_at > :after)
       AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = s.id AND m.created_at > :after)
)
SELECT i.id, i.name, m.digest, MAX(m.created_at, COALESCE(p.pulled_at, 0)) AS last
  FROM idle i JOIN manifests m ON m.repository_id = i.id
  LEFT JOIN cache_pulls p ON p.repository = i.name AND p.digest = m.digest
 WHERE NOT EXISTS (SELECT 1 FROM manifest_references x WHERE x.repository_id = i.id AND x.child = m.digest
                    AND x.kind = 'manifest')
 ORDER BY last, i.name, m.digest LIMIT :limit
"""

REPOSITORY_ACTIVE = """
SELECT EXISTS (SELECT 1 FROM cache_pulls WHERE repository = :name AND pulled_at > :after)
    OR EXISTS (SELECT 1 FROM manifests WHERE repository_id = :id AND created_at > :after)
"""
