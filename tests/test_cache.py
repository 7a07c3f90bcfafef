"""chestzoo.data.cache: values match the uncached transforms, invalidation, concurrent builds, reads from disk."""

import multiprocessing
import os
import time

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureTyped, MapTransform, RandFlipd, Resized
from PIL import Image

from chestzoo.data import DataError, DiskCacheDataset, LoadChestImaged
from chestzoo.data.cache import cache_key


def write_pngs(folder, n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        path = os.path.join(folder, f"img_{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
        items.append({"image": path, "label": [float(i % 2), 1.0], "patient": f"p{i}"})
    return items


def chain(size=16, random=True):
    transforms = [
        LoadChestImaged(keys="image"),
        Resized(keys="image", spatial_size=(size, size), mode="area"),
        EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
    ]
    return Compose(transforms + ([RandFlipd(keys="image", prob=0.5, spatial_axis=1)] if random else []))


def entries(cache_dir):
    return sorted(n for n in os.listdir(cache_dir) if not n.endswith(".lock"))


def test_cached_values_match_uncached(tmp_path):
    items = write_pngs(tmp_path, 6)
    cached = DiskCacheDataset(items, chain(random=False), cache_dir=tmp_path / "cache")
    plain = DiskCacheDataset(items, chain(random=False), cache_dir=None)
    assert not plain.enabled and cached.enabled
    for i in range(len(items)):
        a, b = cached[i], plain[i]
        assert isinstance(a["image"], torch.Tensor) and a["image"].dtype == torch.float32 and a["image"].shape == (1, 16, 16)
        # uint8 storage: at most half a grey level from the float result
        assert float((a["image"] - b["image"]).abs().max()) <= 0.5 / 255 + 1e-6
        assert torch.equal(a["label"], b["label"]) and a["patient"] == items[i]["patient"] and a["image_path"] == items[i]["image"]
    float_cache = DiskCacheDataset(items, chain(random=False), cache_dir=tmp_path / "cache", dtypes="float32")
    assert torch.equal(float_cache[2]["image"], plain[2]["image"])
    assert len(entries(tmp_path / "cache")) == 2, "uint8 and float32 are two entries"


def test_random_transforms_run_after_the_cache(tmp_path):
    items = write_pngs(tmp_path, 2)
    data = DiskCacheDataset(items, chain(random=True), cache_dir=tmp_path / "cache")
    assert data.first_random == 3
    data.transform.set_random_state(seed=0)
    seen = {tuple(data[0]["image"][0, 0].tolist()) for _ in range(20)}
    assert len(seen) == 2, "RandFlipd must see the cached image and flip it on some accesses only"


def test_invalidation_on_changed_file_and_settings(tmp_path):
    items = write_pngs(tmp_path, 4)
    cache_dir = tmp_path / "cache"
    first = DiskCacheDataset(items, chain(), cache_dir=cache_dir)
    again = DiskCacheDataset(items, chain(), cache_dir=cache_dir)
    assert again.entry == first.entry and len(entries(cache_dir)) == 1, "same inputs and settings reuse the entry"

    # a changed input file (new content, new mtime) makes a new entry with the new pixels
    Image.fromarray(np.full((32, 32), 200, dtype=np.uint8)).save(items[1]["image"])
    os.utime(items[1]["image"], ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = DiskCacheDataset(items, chain(random=False), cache_dir=cache_dir)
    assert changed.entry != first.entry
    assert torch.allclose(changed[1]["image"], torch.full((1, 16, 16), 200 / 255))

    # changed settings: image size, a label in the datalist, the storage dtype
    keys = {changed.key}
    keys.add(DiskCacheDataset(items, chain(size=8, random=False), cache_dir=cache_dir).key)
    relabelled = [dict(item, label=[0.0, 0.0]) for item in items]
    keys.add(DiskCacheDataset(relabelled, chain(random=False), cache_dir=cache_dir).key)
    keys.add(DiskCacheDataset(items, chain(random=False), cache_dir=cache_dir, dtypes="float16").key)
    assert len(keys) == 4


def test_key_covers_lambda_defaults():
    """A config lambda such as ``lambda y, index=@label_index: ...`` changes the key when its captured index does."""
    from monai.transforms import Lambdad

    def head(index):
        return [Lambdad(keys="label", func=lambda y, index=index: np.asarray(y)[index])]

    assert cache_key([], head([0, 1]), ["image"], {"image": "uint8"}) != cache_key([], head([1]), ["image"], {"image": "uint8"})
    assert cache_key([], head([0, 1]), ["image"], {"image": "uint8"}) == cache_key([], head([0, 1]), ["image"], {"image": "uint8"})


class SlowLogged(MapTransform):
    """Deterministic transform that records each call in a log file, so a test can count how often items were built."""

    def __init__(self, keys, log):
        super().__init__(keys)
        self.log = log

    def __call__(self, data):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.05)
        return dict(data)


def _build(items, cache_dir, log, queue):
    transform = Compose([LoadChestImaged(keys="image"), SlowLogged(keys="image", log=log)])
    data = DiskCacheDataset(items, transform, cache_dir=cache_dir)
    queue.put((data.entry, float(data[3]["image"].sum())))


def test_two_processes_building_at_once(tmp_path):
    items = write_pngs(tmp_path, 8)
    log = str(tmp_path / "calls.log")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_build, args=(items, str(tmp_path / "cache"), log, queue)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert results[0] == results[1], "both processes read the same entry and the same values"
    assert len(entries(tmp_path / "cache")) == 1, "no temporary folder or second entry left behind"
    with open(log) as f:
        assert len(f.read().split()) == len(items), "the second process waited for the first build instead of repeating it"


def test_a_failed_build_leaves_no_entry_and_names_the_file(tmp_path):
    items = write_pngs(tmp_path, 3)
    with open(items[2]["image"], "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DataError, match="img_002.png"):
        DiskCacheDataset(items, chain(), cache_dir=tmp_path / "cache")
    assert entries(tmp_path / "cache") == []


def test_uint8_refuses_values_outside_unit_range(tmp_path):
    items = write_pngs(tmp_path, 2)
    scale = Compose([LoadChestImaged(keys="image"), EnsureTyped(keys="image", track_meta=False)])
    scale.transforms = scale.transforms + (_Times(keys="image", factor=1000.0),)
    with pytest.raises(DataError, match="float16"):
        DiskCacheDataset(items, scale, cache_dir=tmp_path / "cache")
    hu = DiskCacheDataset(items, scale, cache_dir=tmp_path / "cache", dtypes={"image": "float16"})
    assert float(hu[0]["image"].max()) > 2.0


class _Times(MapTransform):
    def __init__(self, keys, factor):
        super().__init__(keys)
        self.factor = factor

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key] * self.factor
        return d


def test_reads_come_from_disk_not_memory(tmp_path):
    """Items are read per access (pread of one item), not held in memory: rewriting the file changes what is read."""
    items = write_pngs(tmp_path, 4)
    data = DiskCacheDataset(items, chain(random=False), cache_dir=tmp_path / "cache")
    array_file = data.arrays["image"]
    assert array_file.item_bytes == 16 * 16
    with open(array_file.path, "r+b") as f:
        f.seek(array_file.offset + 2 * array_file.item_bytes)
        f.write(bytes([255]) * array_file.item_bytes)
    assert torch.equal(data[2]["image"], torch.ones(1, 16, 16))
    assert not torch.equal(data[1]["image"], torch.ones(1, 16, 16))
    out = data[2]["image"]
    out += 1  # a writable copy, not a view of a read-only buffer


def test_building_leaves_the_global_random_state_alone(tmp_path):
    """A run that builds the cache and a run that finds it draw the same random numbers after the same seed."""
    items = write_pngs(tmp_path, 3)
    draws = []
    for _ in range(2):  # first: builds the entry; second: reads it
        torch.manual_seed(0)
        DiskCacheDataset(items, chain(), cache_dir=tmp_path / "cache")
        draws.append(torch.rand(4))
    torch.manual_seed(0)
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], torch.rand(4))
