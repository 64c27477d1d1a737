"""Parquet shards of a dataset, written resumably, and a PyTorch ``Dataset`` over them.

Layout of a prepared folder::

    manifest.json                      what was written (see ``prepare_shards``); rewritten atomically after each shard
    {split}/part-{index:05d}.parquet   columns id (string), image (the original encoded file bytes), label (PNG of
                                       the train-id label), height, width (int32)

Shard ``index`` of a split holds the samples ``[index * shard_size, (index + 1) * shard_size)`` of the reader's sorted
listing (less the skipped ones), so every run writes the same shards and a rerun keeps those already complete.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import Dataset

from nrd.data.base import DataError, Sample, SegmentationDataset, decode_image, decode_label, encode_png
from nrd.data.progress import Progress
from nrd.data.readers import check_split
from nrd.errors import InvalidHyperparameterError, UnknownNameError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ROW_GROUP_ROWS = 16  # small row groups: random access reads one group, not a whole shard
TEMP_SUFFIX = ".tmp"
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.large_binary()),
        ("label", pa.large_binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
    ]
)
# A previous manifest's shards are reused only when these entries are equal.
PLAN_KEYS = ("format_version", "dataset", "params", "shard_size", "limit")


class NotPreparedError(DataError):
    """A folder without a complete ``manifest.json`` written by ``prepare_shards``."""


class ShardChecksumError(DataError):
    """A shard listed in the manifest that is missing or whose SHA-256 differs from the recorded one."""


class EmptySplitError(DataError):
    """A split with no sample to write: its listing is empty, or every sample was skipped as bad."""


def prepare_shards(
    dataset: SegmentationDataset,
    out_dir: str | Path,
    splits: Sequence[str] = ("train", "val"),
    shard_size: int = 256,
    skip_bad: bool = False,
    limit: int | None = None,
    workers: int = 4,
    progress: bool = True,
) -> dict:
    """Write ``splits`` of ``dataset`` as Parquet shards of ``shard_size`` rows under ``out_dir`` and return the
    manifest (also written to ``out_dir/manifest.json``).

    ``limit`` keeps the first N samples of each split. Bad samples (any ``DataError`` from the reader: corrupt
    file, missing partner, label value or size problems) raise unless ``skip_bad``, in which case each is listed
    under ``skipped`` with its file and reason. Every file is written to a temporary name and renamed, and the
    manifest (``complete: false`` until the end) is updated after each shard: rerunning after an interruption
    keeps the complete shards (file present, SHA-256 as recorded, no sample skipped: a file fixed since is read
    again) and rewrites the rest. A split without any sample to write raises ``EmptySplitError`` (before writing
    anything when its listing is empty; after its shards, with ``manifest.json`` left incomplete and the skipped
    files recorded in it, when every sample was skipped). ``workers`` threads read samples; ``progress`` reports on
    stderr (see ``Progress``).
    """
    for name, value, minimum in (("shard_size", shard_size, 1), ("limit", limit, 1), ("workers", workers, 1)):
        if value is not None and (not isinstance(value, int) or value < minimum):
            raise InvalidHyperparameterError("prepare_shards", name, value, f"an integer >= {minimum}")
    if isinstance(splits, str) or len(splits) == 0:
        raise InvalidHyperparameterError("prepare_shards", "splits", splits, f"a non-empty list of {dataset.splits}")
    for split in splits:
        check_split(dataset, split)
        if split in dataset.unlabelled_splits:
            labelled = ", ".join(s for s in dataset.splits if s not in dataset.unlabelled_splits)
            expected = f"splits with labels ({labelled}); {dataset.info.name} {split!r} has images only"
            raise InvalidHyperparameterError("prepare_shards", "splits", list(splits), expected)
    listings = {split: dataset.list_samples(split)[:limit] for split in splits}  # fail early on a missing split
    for split, samples in listings.items():
        if not samples:
            raise EmptySplitError(f"{dataset.info.name} split {split!r}", "the split lists no sample")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out)
    info = dataset.info
    manifest = {
        "format_version": FORMAT_VERSION,
        "complete": False,
        "dataset": info.name,
        "params": dataset.params,
        "shard_size": shard_size,
        "limit": limit,
        "skip_bad": skip_bad,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "palette": [list(color) for color in info.palette],
        "ignore_index": info.ignore_index,
        "splits": {},
        "skipped": [],
    }
    previous = previous_manifest(out, manifest)
    with ThreadPoolExecutor(workers) as pool:
        for split, samples in listings.items():
            report = Progress(f"prepare {info.name} {split}", len(samples), sys.stderr if progress else None)
            prepare_split(dataset, samples, out, split, manifest, previous, pool, report)
            if manifest["splits"][split]["count"] == 0:
                raise EmptySplitError(
                    f"{info.name} split {split!r}",
                    f"all {len(samples)} samples were skipped as bad (files and reasons under 'skipped' in "
                    f"{out / MANIFEST}); fix them, or leave the split out",
                )
    manifest["complete"] = True
    write_json(out / MANIFEST, manifest)
    return manifest


def prepare_split(
    dataset: SegmentationDataset,
    samples: list[Sample],
    out: Path,
    split: str,
    manifest: dict,
    previous: dict,
    pool: ThreadPoolExecutor,
    progress: Progress,
) -> None:
    ids_sha256 = hashlib.sha256("\n".join(sample.id for sample in samples).encode()).hexdigest()
    old_split = previous.get("splits", {}).get(split, {})
    old_records = {r["file"]: r for r in old_split.get("shards", [])}
    if old_split.get("sample_ids_sha256") != ids_sha256:
        old_records = {}
    folder = out / split
    folder.mkdir(exist_ok=True)
    remove_temp_files(folder)
    entry = {"count": 0, "sample_ids_sha256": ids_sha256, "shards": []}
    manifest["splits"][split] = entry
    shard_size = manifest["shard_size"]
    try:
        for index, start in enumerate(range(0, len(samples), shard_size)):
            chunk = samples[start : start + shard_size]
            file = f"{split}/part-{index:05d}.parquet"
            record = old_records.get(file)
            # a shard that skipped samples is redone: the bad files may have been fixed since
            had_skipped = any(item["shard"] == file for item in previous.get("skipped", []))
            kept = record is not None and not had_skipped and is_intact(out, record)
            skipped = []
            if kept:
                progress.advance(len(chunk), read=False)
            else:
                results = []
                for result in pool.map(lambda sample: read_row(dataset, sample, manifest["skip_bad"]), chunk):
                    results.append(result)
                    progress.advance(1)
                skipped = [
                    {"split": split, "id": s.id, "file": r.path, "reason": r.problem, "shard": file}
                    for s, r in zip(chunk, results, strict=True)
                    if isinstance(r, DataError)
                ]
                record = write_shard([r for r in results if not isinstance(r, DataError)], out, file)
            entry["shards"].append(record)
            entry["count"] += record["rows"]
            manifest["skipped"] += skipped
            write_json(out / MANIFEST, manifest)
            progress.shard_done(kept)
    finally:
        progress.close()
    listed = {record["file"] for record in entry["shards"]}
    for stale in folder.glob("part-*.parquet"):
        if f"{split}/{stale.name}" not in listed:
            stale.unlink()


def read_row(dataset: SegmentationDataset, sample: Sample, skip_bad: bool) -> dict | DataError:
    try:
        raw = dataset.read_sample(sample)
    except DataError as error:
        if not skip_bad:
            raise
        return error
    return {
        "id": raw.id,
        "image": raw.image_bytes,
        "label": encode_png(raw.label),
        "height": raw.height,
        "width": raw.width,
    }


def write_shard(rows: list[dict], out: Path, file: str) -> dict:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    write_atomic(
        out / file,
        lambda path: pq.write_table(
            table,
            path,
            row_group_size=ROW_GROUP_ROWS,
            compression="none",
            use_dictionary=False,
            write_statistics=False,
        ),
    )
    return {"file": file, "rows": len(rows), "sha256": file_sha256(out / file)}


def previous_manifest(out: Path, manifest: dict) -> dict:
    """The manifest left in ``out`` by an earlier run with the same plan, else ``{}``."""
    try:
        previous = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(previous, dict) or any(previous.get(key) != manifest[key] for key in PLAN_KEYS):
        return {}
    return previous


def is_intact(root: Path, record: dict) -> bool:
    path = root / record["file"]
    return path.is_file() and file_sha256(path) == record["sha256"]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary path)`` in ``path``'s folder, flush to disk, then rename onto ``path``; the temporary file
    is removed if anything fails."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(descriptor)
    os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the data from other users' workers
    try:
        write(Path(temporary))
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask, read from /proc on Linux; elsewhere by setting and restoring it (os.umask's only way,
    which briefly changes it for other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(json.dumps(data, indent=2) + "\n"))


def remove_temp_files(folder: Path) -> None:
    """Delete temporary files a killed run of ``write_atomic`` left in ``folder``."""
    for leftover in folder.glob(f".*{TEMP_SUFFIX}"):
        leftover.unlink()


def read_uri(uri: str) -> str:
    """The text of the file at ``uri``, through pyarrow's file systems."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def read_manifest(root: str | Path) -> dict:
    """The manifest of a prepared folder, a local path or a URI pyarrow reads (``s3://``, ``gs://``, ``file://``,
    ...); ``NotPreparedError`` when it is missing, unreadable, of another format version, or from a run that did not
    finish."""
    remote = "://" in str(root)
    path = f"{str(root).rstrip('/')}/{MANIFEST}" if remote else Path(root) / MANIFEST
    try:
        text = read_uri(path) if remote else path.read_text()
    except FileNotFoundError:
        raise NotPreparedError(
            root,
            f"not a prepared dataset (no {MANIFEST}); run `nrd-bench prepare --dataset NAME --root DATA --out {root}`",
        ) from None
    except (OSError, ValueError) as error:  # also pyarrow's: unknown scheme, no credentials, unreachable...
        raise NotPreparedError(path, f"cannot read the manifest ({error})") from error
    try:
        manifest = json.loads(text)
    except ValueError as error:
        raise NotPreparedError(path, f"unreadable manifest ({error}); rerun `nrd-bench prepare`") from error
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise NotPreparedError(
            path, f"manifest format version {version!r}, expected {FORMAT_VERSION}; rerun `nrd-bench prepare`"
        )
    if not manifest.get("complete"):
        raise NotPreparedError(
            path, "prepare did not finish; rerun the same `nrd-bench prepare` command to complete it"
        )
    return manifest


class ShardDataset(Dataset):
    """Samples of one split of a prepared folder, in manifest order.

    ``dataset[i]`` is ``{"id", "image", "label"}`` with image (H, W, 3) uint8 and label (H, W) uint8 train ids, or
    the stored encoded bytes of both when ``decode=False``. With ``transform``, ``dataset[i]`` is
    ``transform(image, label)`` instead. ``verify=True`` checks every shard's SHA-256 against the manifest when
    opening (``ShardChecksumError`` naming the shard). Reads one Parquet row group at a time and keeps the last
    one, so sequential access reads each group once.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        verify: bool = False,
        decode: bool = True,
        transform: Callable | None = None,
    ):
        self.root = Path(root)
        self.manifest = read_manifest(root)
        if split not in self.manifest["splits"]:
            raise UnknownNameError(f"split of prepared folder {root}", split, self.manifest["splits"])
        self.split = split
        self.shards = self.manifest["splits"][split]["shards"]
        for record in self.shards:
            path = self.root / record["file"]
            if not path.is_file():
                raise ShardChecksumError(path, "shard listed in the manifest is missing; rerun `nrd-bench prepare`")
            if verify and file_sha256(path) != record["sha256"]:
                raise ShardChecksumError(
                    path, f"SHA-256 differs from the manifest's {record['sha256']}: the shard changed after prepare"
                )
        self.decode = decode
        self.transform = transform
        self.starts = list(itertools.accumulate((record["rows"] for record in self.shards), initial=0))
        self.group_starts: dict[int, list[int]] = {}
        self.cached_key: tuple[int, int] | None = None
        self.cached_rows: dict[str, list] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples of split {self.split!r}")
        index %= len(self)
        shard = bisect.bisect_right(self.starts, index) - 1
        row = self.read_row(shard, index - self.starts[shard])
        image, label = row["image"], row["label"]
        if self.decode:
            source = f"{self.root / self.shards[shard]['file']}:{row['id']}"
            image, label = decode_image(image, source), decode_label(label, source)
        if self.transform is not None:
            return self.transform(image, label)
        return {"id": row["id"], "image": image, "label": label}

    def read_row(self, shard: int, row: int) -> dict:
        path = self.root / self.shards[shard]["file"]
        if shard not in self.group_starts:
            metadata = pq.read_metadata(path)
            sizes = (metadata.row_group(group).num_rows for group in range(metadata.num_row_groups))
            self.group_starts[shard] = list(itertools.accumulate(sizes, initial=0))
        starts = self.group_starts[shard]
        group = bisect.bisect_right(starts, row) - 1
        if self.cached_key != (shard, group):
            self.cached_rows = pq.ParquetFile(path).read_row_group(group).to_pydict()
            self.cached_key = (shard, group)
        return {name: values[row - starts[group]] for name, values in self.cached_rows.items()}
