"""Every bundle reads its training and evaluation data through the preprocessing cache (``cache_dir``), and what it
reads back equals what the uncached chain gives: same keys, same boxes and masks, images within the storage
quantisation, with the random augmentation run after the cache on the same random state."""

import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.data import DiskCacheDataset

BUNDLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles")
# config -> dataset ids read through the cache (where the config has them)
DATASETS = {"train": ["train#dataset", "validate#dataset"], "evaluate": ["dataset", "validate#dataset", "reference#dataset"]}
NOTHING_TO_DECODE = {("lung_ct_dcgan", "evaluate", "dataset")}  # latent vectors (its real images: the next test)
# largest difference between cached and uncached image values: half a grey level for uint8 storage (a little more
# after interpolating augmentations and intensity scaling), float16 rounding for values in [-1, 1]
TOLERANCE = {"uint8": 1.5 / 255, "float16": 1e-3, "float32": 1e-6}


def parse(name, config, data_dir, tmp_path, **overrides):
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLES, name, "configs", f"{config}.json"))
    parser.update({**BUNDLE_RUNS[name].test, "bundle_root": os.path.join(BUNDLES, name), "dataset_dir": data_dir,
                   "output_dir": str(tmp_path / "eval"), "ckpt_dir": str(tmp_path / "models"), **overrides})
    return parser


def epochs(dataset, n=2):
    """The items of ``n`` epochs, each with the random transforms seeded by the epoch number."""
    out = []
    for epoch in range(n):
        dataset.transform.set_random_state(seed=epoch)
        out += [dataset[i] for i in range(len(dataset))]
    return out


def assert_same(cached, plain, tolerance, array_keys, path="item"):
    if isinstance(cached, dict):
        assert set(cached) == set(plain), f"{path}: keys {sorted(cached)} != {sorted(plain)}"
        for key in cached:
            assert_same(cached[key], plain[key], tolerance if key in array_keys else 1e-6, array_keys, f"{path}[{key!r}]")
    elif isinstance(cached, (list, tuple)):
        assert len(cached) == len(plain), path
        for i, (a, b) in enumerate(zip(cached, plain)):
            assert_same(a, b, tolerance, array_keys, f"{path}[{i}]")
    elif isinstance(cached, (torch.Tensor, np.ndarray)):
        a, b = torch.as_tensor(np.asarray(cached)).double(), torch.as_tensor(np.asarray(plain)).double()
        assert a.shape == b.shape, f"{path}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        assert type(cached) is type(plain), f"{path}: {type(cached).__name__} != {type(plain).__name__}"
        if a.numel():
            assert float((a - b).abs().max()) <= tolerance, f"{path}: differs by {float((a - b).abs().max())}"
    else:
        assert cached == plain, f"{path}: {cached!r} != {plain!r}"


@pytest.mark.parametrize("name", sorted(BUNDLE_RUNS))
def test_cached_datasets_read_what_the_uncached_chain_gives(name, synthetic_data, tmp_path):
    run = BUNDLE_RUNS[name]
    data_dir = synthetic_data(run.dataset, **run.test_data)
    checked = []
    for config, ids in DATASETS.items():
        default = parse(name, config, data_dir, tmp_path)
        if not default.get("cache_dir"):
            continue
        assert default.get_parsed_content("cache_dir") == data_dir + "/cache", f"{config}.json: the cache lives beside the data by default"
        for id_ in ids:
            if id_ not in default or (name, config, id_) in NOTHING_TO_DECODE:
                continue
            cached = parse(name, config, data_dir, tmp_path, cache_dir=str(tmp_path / "cache")).get_parsed_content(id_)
            plain = parse(name, config, data_dir, tmp_path, cache_dir=None).get_parsed_content(id_)
            assert isinstance(cached, DiskCacheDataset) and cached.enabled, f"{config}.json {id_} does not read through the cache"
            assert not plain.enabled, f"{config}.json {id_}: cache_dir None must switch the cache off"
            assert_same(epochs(cached), epochs(plain), max(TOLERANCE[d] for d in cached.dtypes.values()), cached.array_keys, f"{config}#{id_}")
            checked.append(f"{config}#{id_}")
    assert any(c.startswith("train#") for c in checked), f"{name}: train.json reads nothing through the cache"


def test_detection_boxes_follow_the_cached_images_through_the_augmentation(synthetic_data, tmp_path):
    """Box transforms after the cache (affine, flip, clip) give the same boxes from cached images, affine on and off."""
    name = "rsna_pneumonia_detection"
    run = BUNDLE_RUNS[name]
    data_dir = synthetic_data(run.dataset, **run.test_data)
    for prob in (0.0, 1.0):
        settings = {"affine_prob": prob, "flip_prob": 0.5}
        cached = parse(name, "train", data_dir, tmp_path, cache_dir=str(tmp_path / "cache"), **settings).get_parsed_content("train#dataset")
        plain = parse(name, "train", data_dir, tmp_path, cache_dir=None, **settings).get_parsed_content("train#dataset")
        a, b = epochs(cached, 3), epochs(plain, 3)
        assert sum(len(item["box"]) for item in a) > 0, "the check needs boxes"
        assert_same(a, b, TOLERANCE["uint8"], cached.array_keys)


def test_gan_evaluation_shares_the_training_cache_entry(synthetic_data, tmp_path):
    name = "lung_ct_dcgan"
    run = BUNDLE_RUNS[name]
    data_dir = synthetic_data(run.dataset, **run.test_data)
    cache = tmp_path / "cache"
    train = parse(name, "train", data_dir, tmp_path, cache_dir=str(cache)).get_parsed_content("train#dataset")
    images, items = parse(name, "evaluate", data_dir, tmp_path, cache_dir=str(cache), max_train_images=10**6).get_parsed_content("train_stack")
    assert sorted(p for p in os.listdir(cache) if not p.endswith(".lock")) == [train.key], "evaluation reused the entry training built"
    assert torch.equal(images, torch.stack([train[i]["image"] for i in range(len(train))]))
    plain, _ = parse(name, "evaluate", data_dir, tmp_path, cache_dir=None, max_train_images=10**6).get_parsed_content("train_stack")
    assert float((images - plain).abs().max()) <= TOLERANCE["float16"]
