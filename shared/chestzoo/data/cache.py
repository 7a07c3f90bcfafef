"""A one-time preprocessing cache on disk: decode, convert and resize each image once, read the result per batch.

:class:`DiskCacheDataset` is a MONAI ``Dataset`` for a bundle's ``train#dataset`` (and evaluation datasets). Like
MONAI's ``CacheDataset`` it runs the deterministic head of the transform chain (every transform before the first
random one) once per item and the rest per epoch; unlike ``CacheDataset`` the results live on disk, not in memory,
so a training run over all 112,120 ChestX-ray14 images needs the memory that a 1,000-image subset needs.

One cache entry per (items, settings) is a folder ``<cache_dir>/<key>/`` holding

- ``<array key>.npy``: one ``(N, C, H, W)`` array per image key (``uint8`` by default: values in [0, 1] stored as
  round(255 x); ``float16`` or ``float32`` for anything else, such as Hounsfield units);
- ``items.pkl``: the other per-item outputs (labels, rescaled boxes, source paths), small;
- ``info.json``: shapes, dtypes and what the key was computed from.

The key hashes the items (their JSON), the size and modification time of every file they name, a description of
the deterministic transforms (class, settings, code of lambdas) and the storage dtypes, so a changed input file,
datalist or setting builds a new entry. An entry is built in a temporary folder and renamed into place (a reader
never sees half an entry, a killed build leaves only a temporary folder), under an ``fcntl`` lock so that a second
process building the same entry waits for the first and then reads its result.

Reads use ``os.pread`` of one item's bytes, not ``np.memmap``: pages of a memory map count towards the process's
resident memory once touched, so an epoch over a memory-mapped cache would grow RSS with the dataset, whereas
``pread`` goes through the kernel's page cache, which the kernel can reclaim and which is not the process's memory.
Old entries are not deleted automatically: remove ``<cache_dir>/<key>`` folders that are no longer wanted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import time
import types
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, RandomizableTrait, Transform

from .errors import DataError

CACHE_VERSION = 1
DTYPES = ("uint8", "float16", "float32")
_UINT8_TOLERANCE = 1e-3  # values this far outside [0, 1] (interpolation overshoot) are clipped, further is an error


def cache_enabled(cache_dir) -> bool:
    """False for the values that switch the cache off from a config or command line: None, "", "none", False."""
    if cache_dir is None or cache_dir is False:
        return False
    return str(cache_dir).strip().lower() not in ("", "none", "null", "false", "0")


# ---------------------------------------------------------------------------------------------------------- keys


def _describe(obj, depth: int = 0):
    """A JSON-able description of a transform's settings, for the cache key; stable across processes."""
    if depth > 6:
        return type(obj).__qualname__
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return {"ndarray": hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest(), "shape": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, torch.Tensor):
        return _describe(obj.detach().cpu().numpy(), depth)
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple, set, frozenset)):
        values = [_describe(v, depth + 1) for v in obj]
        return sorted(values, key=json.dumps) if isinstance(obj, (set, frozenset)) else values
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        func = obj.__func__ if isinstance(obj, types.MethodType) else obj
        code = func.__code__
        # a config lambda's behaviour is its bytecode plus its constants and defaults (``index=@label_index``)
        return {
            "function": func.__qualname__,
            "code": hashlib.sha256(code.co_code).hexdigest(),
            "consts": [_describe(c, depth + 1) for c in code.co_consts if not isinstance(c, types.CodeType)],
            "defaults": _describe(func.__defaults__, depth + 1),
        }
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    if hasattr(obj, "__dict__"):
        state = {k: v for k, v in vars(obj).items() if not k.startswith("_") and k not in ("R", "backend")}
        return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", "state": _describe(state, depth + 1)}
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _file_stamps(value) -> list:
    """(path, size, mtime) for every existing file that an item value names."""
    if isinstance(value, str):
        if os.path.isfile(value):
            stat = os.stat(value)
            return [[value, stat.st_size, stat.st_mtime_ns]]
        return []
    if isinstance(value, (list, tuple)):
        return [stamp for v in value for stamp in _file_stamps(v)]
    if isinstance(value, Mapping):
        return [stamp for v in value.values() for stamp in _file_stamps(v)]
    return []


def cache_key(items: Sequence[Mapping], transforms: Sequence, array_keys: Sequence[str], dtypes: Mapping[str, str], settings=None) -> str:
    """The hash that names a cache entry (see the module doc for what it covers)."""
    digest = hashlib.sha256()
    header = {
        "version": CACHE_VERSION,
        "array_keys": list(array_keys),
        "dtypes": dict(sorted(dtypes.items())),
        "transforms": [_describe(t) for t in transforms],
        "settings": _describe(settings),
        "n": len(items),
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for item in items:
        digest.update(json.dumps(item, sort_keys=True, default=str).encode())
        digest.update(json.dumps(_file_stamps(item), default=str).encode())
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------------------------- storage


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().as_tensor().numpy() if hasattr(value, "as_tensor") else value.detach().cpu().numpy()
    return np.asarray(value)


def _encode(array: np.ndarray, dtype: str, key: str, source) -> np.ndarray:
    if dtype == "uint8":
        low, high = float(array.min()), float(array.max())
        if low < -_UINT8_TOLERANCE or high > 1.0 + _UINT8_TOLERANCE:
            raise DataError(
                str(source),
                f"'{key}' has values in [{low:.3g}, {high:.3g}]; the uint8 cache stores [0, 1] only, use dtypes={{'{key}': 'float16'}}",
            )
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    return array.astype(dtype)


class _ArrayFile:
    """Read item ``i`` of an ``(N, ...)`` .npy file with one ``pread``; reopened after a fork (DataLoader workers)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{path}: cache arrays are C-ordered")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.item_shape = self.shape[1:]
        self.item_bytes = int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, index: int) -> np.ndarray:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        data = os.pread(self._fd, self.item_bytes, self.offset + index * self.item_bytes)
        if len(data) != self.item_bytes:
            raise DataError(self.path, f"cache file is truncated at item {index}")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.item_shape)

    def __getstate__(self):
        # file descriptors do not travel to spawned workers; each process opens its own
        return {k: v for k, v in self.__dict__.items() if k not in ("_fd", "_pid")} | {"_fd": None, "_pid": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)


@contextlib.contextmanager
def _locked(path: str):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Head(torch.utils.data.Dataset):
    """The deterministic head of the transform chain, item by item, for building (in DataLoader workers if asked)."""

    def __init__(self, items, compose: Compose, end):
        self.items, self.compose, self.end = items, compose, end

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        try:
            return self.compose(self.items[index], end=self.end, threading=True)
        except RuntimeError as exc:
            # MONAI wraps a transform's error as "applying transform <...>"; the DataError under it names the file
            cause = exc.__cause__
            while cause is not None and not isinstance(cause, DataError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from exc


def _identity(x):
    return x


def build_cache(items, compose: Compose, end, folder: str, array_keys, dtypes, info: dict, num_workers: int = 0, progress: Callable | None = None) -> None:
    """Write a cache entry into ``folder`` (a temporary folder; the caller renames it into place)."""
    os.makedirs(folder)
    # an own generator: the loader's base seed would otherwise come from the global torch RNG, so that a run that
    # builds the cache and a run that finds it would initialise and train differently after the same seed
    loader = torch.utils.data.DataLoader(_Head(items, compose, end), batch_size=None, num_workers=num_workers, collate_fn=_identity,
                                         generator=torch.Generator())
    arrays: dict[str, np.ndarray] = {}
    others: list[dict] = []
    kinds: dict[str, dict] = {}
    for index, out in enumerate(loader):
        source = items[index].get(array_keys[0], index) if isinstance(items[index], Mapping) else index
        if not isinstance(out, Mapping):
            raise TypeError(f"the cached transforms must return a dict per item, got {type(out).__name__}")
        rest = {}
        for key, value in out.items():
            if key not in array_keys:
                rest[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
                continue
            array = _as_numpy(value)
            if key not in arrays:
                shape = (len(items),) + array.shape
                arrays[key] = np.lib.format.open_memmap(os.path.join(folder, f"{key}.npy"), mode="w+", dtype=dtypes[key], shape=shape)
                kinds[key] = {"shape": list(array.shape), "dtype": dtypes[key], "decoded_dtype": str(array.dtype), "torch": isinstance(value, torch.Tensor)}
            elif array.shape != arrays[key].shape[1:]:
                raise DataError(str(source), f"'{key}' has shape {array.shape} after preprocessing, the cache's first item {arrays[key].shape[1:]}: resize to one size before caching")
            arrays[key][index] = _encode(array, dtypes[key], key, source)
        missing = [k for k in array_keys if k not in out]
        if missing:
            raise DataError(str(source), f"the cached transforms returned no {missing}")
        others.append(rest)
        if progress is not None:
            progress(index + 1, len(items))
    for array in arrays.values():
        array.flush()
    del arrays
    with open(os.path.join(folder, "items.pkl"), "wb") as f:
        pickle.dump(others, f, protocol=pickle.HIGHEST_PROTOCOL)
    with open(os.path.join(folder, "info.json"), "w") as f:
        json.dump({**info, "arrays": kinds, "n": len(items), "built": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=4)


# --------------------------------------------------------------------------------------------------- dataset


class DiskCacheDataset(Dataset):
    """``Dataset(data, transform)`` whose deterministic transforms run once and are read back from disk.

    Args:
        data: the items (dicts), e.g. ``load_datalist(...)``.
        transform: a ``Compose``; transforms before the first random one are cached, the rest run per access.
        cache_dir: folder of cache entries; None, "" or "none" switch the cache off (every access runs the whole
            chain, exactly like ``monai.data.Dataset``).
        array_keys: the keys whose outputs are fixed-shape arrays stored in the .npy files (default ``["image"]``);
            every other output is pickled per item.
        dtypes: storage dtype per array key, "uint8" (default; values in [0, 1]), "float16" or "float32".
        settings: anything else that should change the key (it is hashed with the transforms).
        num_workers: worker processes decoding during the one-time build.
        progress: print build progress every this many items (0: quiet).
        cache_rate: with the disk cache off, the fraction of items kept in memory as MONAI's ``CacheDataset`` does
            (so configs that had ``CacheDataset(cache_rate=...)`` keep that behaviour when ``cache_dir`` is None).
    """

    def __init__(
        self,
        data: Sequence,
        transform: Compose,
        cache_dir=None,
        array_keys: Sequence[str] | str = ("image",),
        dtypes: Mapping[str, str] | str | None = None,
        settings=None,
        num_workers: int = 0,
        progress: int = 0,
        cache_rate: float = 0.0,
    ):
        if not isinstance(transform, Compose):
            transform = Compose(transform)
        super().__init__(data=data, transform=transform)
        self.array_keys = [array_keys] if isinstance(array_keys, str) else list(array_keys)
        if isinstance(dtypes, str) or dtypes is None:
            dtypes = {k: dtypes or "uint8" for k in self.array_keys}
        self.dtypes = {k: str(dtypes.get(k, "uint8")) for k in self.array_keys}
        for key, dtype in self.dtypes.items():
            if dtype not in DTYPES:
                raise ValueError(f"cache dtype for '{key}' must be one of {DTYPES}, not {dtype!r}")
        self.first_random = transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
        self.enabled = cache_enabled(cache_dir) and len(data) > 0
        self.cache_dir = os.fspath(cache_dir) if self.enabled else None
        self.entry: str | None = None
        self._memory = None
        if not self.enabled and float(cache_rate) > 0 and len(data) > 0:
            self._memory = CacheDataset(data, transform, cache_rate=float(cache_rate), num_workers=num_workers, progress=False)
        if self.enabled:
            head = transform.transforms[: self.first_random] if self.first_random is not None else transform.transforms
            self.key = cache_key(self.data, head, self.array_keys, self.dtypes, settings)
            self.entry = self._ensure(num_workers, progress)
            self._open()

    # building
    def _ensure(self, num_workers: int, progress: int) -> str:
        entry = os.path.join(self.cache_dir, self.key)
        if os.path.isfile(os.path.join(entry, "info.json")):
            return entry
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError as exc:
            raise DataError(self.cache_dir, f"cannot create the preprocessing cache folder ({exc}); set cache_dir to a writable folder, or to None to decode every epoch") from exc
        with _locked(os.path.join(self.cache_dir, f"{self.key}.lock")):
            if os.path.isfile(os.path.join(entry, "info.json")):  # another process built it while we waited
                return entry
            for name in os.listdir(self.cache_dir):  # only the lock holder builds: any temporary folder is a crashed build
                if name.startswith(f"{self.key}.tmp-"):
                    shutil.rmtree(os.path.join(self.cache_dir, name), ignore_errors=True)
            temporary = os.path.join(self.cache_dir, f"{self.key}.tmp-{os.getpid()}")
            report = None
            if progress:
                def report(done, total, every=int(progress)):
                    if done % every == 0 or done == total:
                        print(f"preprocessing cache {self.key[:8]}: {done}/{total} items", flush=True)
            info = {"version": CACHE_VERSION, "key": self.key, "array_keys": self.array_keys, "dtypes": self.dtypes}
            try:
                build_cache(self.data, self.transform, self.first_random, temporary, self.array_keys, self.dtypes, info, num_workers, report)
                os.rename(temporary, entry)
            finally:
                if os.path.isdir(temporary):
                    shutil.rmtree(temporary, ignore_errors=True)
        return entry

    def _open(self) -> None:
        with open(os.path.join(self.entry, "info.json")) as f:
            self.info = json.load(f)
        if self.info["n"] != len(self.data):
            raise DataError(self.entry, f"cache entry holds {self.info['n']} items, the dataset {len(self.data)}")
        self.arrays = {k: _ArrayFile(os.path.join(self.entry, f"{k}.npy")) for k in self.array_keys}
        with open(os.path.join(self.entry, "items.pkl"), "rb") as f:
            self.others = pickle.load(f)

    # reading
    def cached_item(self, index: int) -> dict:
        """The output of the deterministic transforms for item ``index``, from the cache."""
        out = dict(self.others[index])
        for key, file in self.arrays.items():
            kind = self.info["arrays"][key]
            raw = file.read(index)
            if kind["dtype"] == "uint8":
                array = raw.astype(np.float32) * np.float32(1.0 / 255.0)
            else:
                array = raw.astype(kind["decoded_dtype"])
            array = array.astype(kind["decoded_dtype"], copy=False)
            out[key] = torch.from_numpy(array) if kind["torch"] else array
        return out

    def _transform(self, index: int):
        if self._memory is not None:
            return self._memory[index]
        if not self.enabled:
            return super()._transform(index)
        data = self.cached_item(index)
        if self.first_random is not None:
            data = self.transform(data, start=self.first_random)
        return data
