"""Check a prepared folder's shards against its manifest before training reads them: every shard listed must be
there with the SHA-256 that ``prepare`` recorded. A shard replaced by another one (e.g. of another seed) or with
flipped bytes would otherwise train to a "successful" run or fail deep inside a Ray worker.

Hashing reads every byte, so hashes are cached per file in ``$XDG_CACHE_HOME/nrd-bench/shard_sha256.json``
(default ``~/.cache``), keyed by the file's path, size, inode, mtime and ctime: an unchanged folder costs one stat
per shard, and any write to a shard (which always moves its ctime) makes it hashed again. A cache that cannot be
read or written is ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nrd.data.shards import ShardChecksumError, file_sha256, write_json

CACHE_FILE = "shard_sha256.json"


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nrd-bench" / CACHE_FILE


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns]


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def verify_shards(root: str | Path, manifest: dict, cache: Path | None = None) -> int:
    """Check every shard of every split of the prepared folder ``root`` against ``manifest``; raise
    ``ShardChecksumError`` naming every shard that is missing, unreadable or whose SHA-256 differs (one line).
    Returns the number of shards hashed (0 when the cache vouched for all). ``cache``: default ``cache_path()``."""
    root = Path(root)
    cache = cache or cache_path()
    known = _read_cache(cache)
    problems, hashed, changed = [], 0, False
    for split, entry in manifest["splits"].items():
        for record in entry["shards"]:
            path = root / record["file"]
            try:
                stamp = _stamp(path.stat())
                key = str(path.resolve())
                cached = known.get(key)
                if isinstance(cached, dict) and cached.get("stamp") == stamp and isinstance(cached.get("sha256"), str):
                    digest = cached["sha256"]
                else:  # not cached, changed since, or a damaged entry
                    digest, hashed = file_sha256(path), hashed + 1
                    known[key], changed = {"stamp": stamp, "sha256": digest}, True
            except FileNotFoundError:
                problems.append(f"{path} (listed for {split}, missing)")
                continue
            except OSError as error:
                problems.append(f"{path} (unreadable: {error.strerror or error})")
                continue
            if digest != record["sha256"]:
                problems.append(f"{path} (SHA-256 {digest[:12]}..., the manifest has {record['sha256'][:12]}...)")
    if changed:
        known = {key: value for key, value in known.items() if Path(key).exists()}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json(cache, known)
        except OSError:
            pass  # a read-only home: hashed again next time
    if problems:
        raise ShardChecksumError(
            root,
            f"{len(problems)} shard(s) differ from its manifest.json (changed after prepare): "
            + "; ".join(problems)
            + "; rerun `nrd-bench prepare` on the same --out to rewrite them",
        )
    return hashed
