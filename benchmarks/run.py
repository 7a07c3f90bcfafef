"""Speed and memory of the bundles against plain PyTorch, and of the preprocessing cache, in one process.

    python benchmarks/run.py --out benchmarks/results/cpu.json --markdown benchmarks/results/cpu.md

Measured, each pair in the same process and on the same data, so that the ratios mean something on a shared machine:

- per bundle: training and inference images/s of the bundle's own ``train#trainer`` and ``validate#evaluator`` (the
  GAN, which has no validation: evaluate.json's ``evaluator`` on latent vectors), with their handlers,
  post-processing and metrics, against a plain PyTorch loop running the same network objects, losses and optimisers
  on the same pre-collated batches (``supervised_loops``: ``loss(network(x), y)``, the GMVAE's labels passed as
  ``y`` and its evaluation through ``network.bounds``; ``detection_loops``: the torchvision detector in train mode on
  images and targets, the loss dict summed, the trainer's accumulation and clipping; ``gan_loops``: one
  discriminator and one generator step per batch as ``GanTrainer`` does); runs alternate bundle, plain, bundle,
  plain, ... after one warm-up each; peak resident memory of each;
- data loader: images/s from 1024 x 1024 PNGs written by ``chestzoo synth nih``, decoded and resized on every access
  (``monai.data.Dataset``) against the same items read from ``chestzoo.data.DiskCacheDataset`` (build time reported);
- memory: peak resident memory of one training epoch over N cached synthetic images, each N in a fresh process.

``--device cuda`` runs both loops with AMP, channels-last tensors and pinned batches.
This folder is a script folder, not a package: an importable package with so common a name would shadow others.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Transform

ROOT = Path(__file__).resolve().parents[1]
SUPPORTED_NOTE = "no plain loop here reproduces this trainer's or evaluator's iteration"


# ------------------------------------------------------------------------------------------------ measurements


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) so the next reading covers only what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def machine(device: str) -> dict:
    cpu = platform.processor()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    import monai

    info = {
        "cpu": cpu,
        "cpu_cores_available": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """Seconds, images and peak RSS of each run of one kind (bundle or plain); summaries are medians over runs, which
    one run slowed by another process on a shared machine does not move."""

    def __init__(self):
        self.images, self.peak_rss_mb, self.runs = [], 0.0, []

    def run(self, function, images: int, device: torch.device, record: bool = True):
        """Times ``function()``; where it returns a ``time.perf_counter()`` value, the run ends there instead."""
        peak_rss_reset()
        _sync(device)
        start = time.perf_counter()
        ended = function()
        _sync(device)
        seconds = (ended if isinstance(ended, float) else time.perf_counter()) - start
        if record:
            self.images.append(images)
            self.runs.append(seconds)
            self.peak_rss_mb = max(self.peak_rss_mb, peak_rss_mb())
        return seconds

    def result(self) -> dict:
        return {
            "images": sum(self.images),
            "seconds": round(sum(self.runs), 4),
            "images_per_s": float(np.median([n / s for n, s in zip(self.images, self.runs)])),
            "run_seconds": self.runs,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def pair(bundle: Timed, plain: Timed) -> dict:
    """``ratio``: the median over the alternating runs of plain seconds / bundle seconds (bundle throughput relative
    to plain), each pair measured back to back so that slow phases of a shared machine hit both sides."""
    run_ratios = [ps / bs for bs, ps in zip(bundle.runs, plain.runs)]
    return {"bundle": bundle.result(), "plain": plain.result(), "ratio": float(np.median(run_ratios)), "run_ratios": run_ratios}


# ----------------------------------------------------------------------------------------------------- bundles


def synthetic_dataset(dataset: str, root: str, **options) -> str:
    from chestzoo.data import registry

    if not os.path.isfile(os.path.join(root, "datalist.json")):
        registry.synth(dataset, root, seed=0, **options)
        registry.prepare(dataset, root)
    return root


class Batches(list):
    """Pre-collated batches handed to an engine as its data loader (``GanTrainer`` reads ``data_loader.batch_size``)."""

    def __init__(self, batches, batch_size: int):
        super().__init__(batches)
        self.batch_size = batch_size


def to_device_batch(batch, device: torch.device, cuda_path: bool):
    """A batch prepared once so that both loops read identical plain tensors (pinned, channels-last on CUDA).

    ``batch`` is a collated dict, or a list of item dicts (the detectors' ``no_collation``).
    """
    if isinstance(batch, list):
        return [to_device_batch(item, device, cuda_path) for item in batch]
    out = dict(batch)
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            value = value.as_tensor() if hasattr(value, "as_tensor") else value
            if cuda_path and key == "image" and value.ndim == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            out[key] = value.pin_memory() if cuda_path else value
    return out


def batch_images(batch) -> int:
    return len(batch) if isinstance(batch, list) else int(batch["image"].shape[0])


def _autocast(enabled: bool):
    return torch.autocast("cuda") if enabled else contextlib.nullcontext()


def _finite(name: str, loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name}: plain loop loss is {loss.item()}")


def _optimise(loss, optimizer, scaler, parameters=None, clip: float | None = None, step: bool = True) -> None:
    """Backward (scaled under AMP); then, where ``step``, clip the gradient norm and step, as the bundles' trainers do."""
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if not step:
        return
    if scaler is not None and clip:
        scaler.unscale_(optimizer)
    if clip:
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


# Plain loops: ``<kind>_loops(trainer, evaluator, device, amp) -> (train(batches), infer(batches))`` doing what the
# bundle's engines compute, without ignite, handlers, metrics or post-processing.


def supervised_loops(trainer, evaluator, device, amp):
    """``SupervisedTrainer``: ``loss(network(x, **extra), y)``; ``extra`` from a ``PrepareBatchExtraInput`` (the GMVAE
    passes its labels as ``y``). Inference: ``network(x)``, or ``network.bounds`` where the evaluator's inferer is the
    GMVAE's ``BoundsInferer`` (same sample count and seed)."""
    from chestzoo.metrics.gmvae_evaluation import BoundsInferer

    network, loss_function, optimizer = trainer.network, trainer.loss_function, trainer.optimizer
    extra = dict(getattr(trainer.prepare_batch, "extra_keys", None) or {})
    scaler = torch.amp.GradScaler("cuda") if amp else None
    inferer = evaluator.inferer
    bounds_generator = torch.Generator(device=device).manual_seed(inferer.seed) if isinstance(inferer, BoundsInferer) else None

    def inputs(batch):
        return batch["image"].to(device, non_blocking=True), {k: batch[v].to(device, non_blocking=True) for k, v in extra.items()}

    def train(batches):
        network.train()
        for batch in batches:
            x, kwargs = inputs(batch)
            y = batch["label"].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(amp):
                loss = loss_function(network(x, **kwargs), y)
            _finite(type(network).__name__, loss)
            _optimise(loss, optimizer, scaler)

    def infer(batches):
        network.eval()
        with torch.no_grad():
            for batch in batches:
                x, kwargs = inputs(batch)
                with _autocast(amp):
                    if bounds_generator is not None:
                        network.bounds(x, kwargs.get("y"), inferer.samples, bounds_generator)
                    else:
                        network(x)

    return train, infer


def detection_loops(trainer, evaluator, device, amp):
    """``DetectionTrainer``: the torchvision detector in train mode on images and targets, its loss dict summed, the
    trainer's gradient accumulation and norm clipping. Inference: the detector in eval mode, predictions to the CPU."""
    network, optimizer = trainer.network, trainer.optimizer
    accumulate, clip = int(trainer.accumulation_steps), trainer.clip_grad_norm
    mask_key = getattr(trainer.prepare_batch, "mask_key", None)
    scaler = torch.amp.GradScaler("cuda") if amp else None

    def targets(batch):
        out = []
        for item in batch:
            target = {"boxes": item["box"].to(device).reshape(-1, 4).float(), "labels": item["box_label"].to(device).reshape(-1).long()}
            if mask_key:
                target["masks"] = item[mask_key].to(device, torch.uint8)
            out.append(target)
        return out

    def images(batch):
        return [item["image"].to(device, torch.float32, non_blocking=True) for item in batch]

    def train(batches):
        network.train()
        for index, batch in enumerate(batches):
            if index % accumulate == 0:
                optimizer.zero_grad(set_to_none=True)
            with _autocast(amp):
                loss = sum(network(images(batch), targets(batch)).values())
            _finite(type(network).__name__, loss)
            step = (index + 1) % accumulate == 0 or index + 1 == len(batches)
            _optimise(loss / accumulate if accumulate > 1 else loss, optimizer, scaler, network.parameters(), clip, step)

    def infer(batches):
        network.eval()
        with torch.no_grad():
            for batch in batches:
                with _autocast(amp):
                    [{k: v.cpu() for k, v in p.items()} for p in network(images(batch))]

    return train, infer


def gan_loops(trainer, evaluator, device, amp):
    """``GanTrainer``: per batch ``d_train_steps`` discriminator steps on fakes from fresh latents and the reals, then one
    generator step on new fakes (the trainer's losses and optimisers; no AMP, as GanTrainer has none). Inference: the
    generator on the evaluator's latent vectors, images to the CPU."""
    from monai.networks import eval_mode

    generator = trainer.g_network
    latent_size, batch_size = trainer.latent_shape, trainer.data_loader.batch_size

    def latents():
        return torch.randn(batch_size, latent_size).to(device)

    def train(batches):
        for batch in batches:
            reals = batch["image"].to(device, non_blocking=True)
            fakes = generator(latents())
            for _ in range(trainer.d_train_steps):
                trainer.d_optimizer.zero_grad(set_to_none=True)
                d_loss = trainer.d_loss_function(fakes, reals)
                _finite("discriminator", d_loss)
                _optimise(d_loss, trainer.d_optimizer, None)
            fakes = generator(latents()) if trainer.g_update_latents else fakes
            trainer.g_optimizer.zero_grad(set_to_none=True)
            g_loss = trainer.g_loss_function(fakes)
            _finite("generator", g_loss)
            _optimise(g_loss, trainer.g_optimizer, None)

    def infer(batches):
        with eval_mode(generator), torch.no_grad():
            for batch in batches:
                with _autocast(amp):
                    generator(batch["image"].to(device, non_blocking=True)).cpu()

    return train, infer


def plain_loops(trainer, evaluator):
    """The plain-loop builder for this trainer and evaluator, or None (reported as not measured) for an engine whose
    iteration no plain loop here reproduces."""
    from monai.engines import GanTrainer, SupervisedEvaluator, SupervisedTrainer
    from monai.engines.utils import PrepareBatchDefault, PrepareBatchExtraInput, default_prepare_batch
    from monai.inferers import SimpleInferer

    from chestzoo.engines.detection import DetectionEvaluator, DetectionTrainer
    from chestzoo.metrics.gmvae_evaluation import BoundsInferer

    def default(engine, base):
        return type(engine)._iteration is base._iteration and "_iteration" not in vars(engine)  # iteration_update replaces it

    if type(trainer) is GanTrainer and default(trainer, GanTrainer) and isinstance(evaluator, SupervisedEvaluator):
        return gan_loops
    if type(trainer) is DetectionTrainer and type(evaluator) is DetectionEvaluator and evaluator.tta is None:
        return detection_loops
    prepare = trainer.prepare_batch
    if (
        type(trainer) is SupervisedTrainer and default(trainer, SupervisedTrainer) and isinstance(trainer.inferer, SimpleInferer)
        and (prepare is default_prepare_batch or type(prepare) is PrepareBatchDefault
             or (type(prepare) is PrepareBatchExtraInput and isinstance(prepare.extra_keys, dict)))
        and type(evaluator) is SupervisedEvaluator and default(evaluator, SupervisedEvaluator)
        and type(evaluator.inferer) in (SimpleInferer, BoundsInferer)
    ):
        return supervised_loops
    return None


def parse_bundle_config(bundle: Path, config: str, overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / f"{config}.json"))
    # nested overrides only where the config has the parent (the GAN bundle has no validate section)
    parser.update({k: v for k, v in overrides.items() if "#" not in k or k.split("#")[0] in parser.get()})
    if any("set_determinism" in str(expression) for expression in parser.get("initialize", [])):
        parser.get_parsed_content("initialize")
    return parser


def bundle_engines(bundle: Path, overrides: dict):
    """train.json's trainer and its data loader, and the evaluator whose inference is timed with the batches it reads:
    train.json's ``validate#evaluator`` where there is one (on the training batches), else evaluate.json's
    ``evaluator`` (the GAN: the trained generator on latent vectors) with only its collecting handlers."""
    parser = parse_bundle_config(bundle, "train", overrides)
    trainer, loader = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("train#dataloader")
    if "validate" in parser.get():
        return trainer, loader, parser.get_parsed_content("validate#evaluator"), None
    generator = trainer.g_network
    evaluate = parse_bundle_config(bundle, "evaluate", {**overrides, "handlers": "$[@collector]"})
    evaluate["network"] = generator  # the same network object as the trainer's
    return trainer, loader, evaluate.get_parsed_content("evaluator"), evaluate.get_parsed_content("dataloader")


def bundle_overrides(name: str, bundle: Path, work: str, args, device: torch.device) -> tuple[dict, int | None]:
    from chestzoo.bundle_runs import BUNDLE_RUNS

    run = BUNDLE_RUNS[name]
    settings = {"real": {"pretrained": False}, "demo": run.demo, "test": run.test}[args.settings]
    size = args.image_size or settings.get("image_size")
    n_images = args.batch_size * args.batches
    data_dir = synthetic_dataset(run.dataset, os.path.join(work, f"data_{run.dataset}"), patients=max(16, n_images), size=max(64, size or 64))
    overrides = {
        **settings,
        "bundle_root": str(bundle),
        "dataset_dir": data_dir,
        "output_dir": os.path.join(work, name, "eval"),
        "ckpt_dir": os.path.join(work, name, "models"),
        "batch_size": args.batch_size,
        "num_workers": 0,
        "max_epochs": 1,
        "val_interval": 10**6,  # no validation inside the timed training epochs
        "resume": False,
        "cache_dir": None,
        "amp": device.type == "cuda",
        "device": f"$torch.device('{device}')",
        "validate#handlers": [],  # the evaluator alone: no early stopping or checkpoint writing
        "eval_samples": n_images,  # the GAN's latent vectors for inference
    }
    if size:
        overrides["image_size"] = size
    return overrides, size


def time_pair(bundle_fn, plain_fn, images: int, device: torch.device, repeats: int) -> dict:
    """One warm-up each (first-call allocation, lazy init, cudnn search), then ``repeats`` alternating timed runs."""
    bundle_t, plain_t = Timed(), Timed()
    bundle_t.run(bundle_fn, images, device, record=False)
    plain_t.run(plain_fn, images, device, record=False)
    for _ in range(repeats):
        bundle_t.run(bundle_fn, images, device)
        plain_t.run(plain_fn, images, device)
    return pair(bundle_t, plain_t)


def run_engine(engine, batches: Batches, device: torch.device = torch.device("cpu")) -> float:
    """One epoch of ``engine`` on ``batches``; returns when its last epoch handler finished. Handlers of the run's end
    (the GAN monitor's final curves and sample grid) run once per training however long it is, like the checkpoint
    savers that ``run`` attaches, so they are left out of an epoch's time."""
    from ignite.engine import Events

    ended = []

    def epoch_end(_):
        _sync(device)
        ended.append(time.perf_counter())

    engine.data_loader = batches
    engine.state.epoch_length = len(batches)
    engine.add_event_handler(Events.EPOCH_COMPLETED, epoch_end)  # added last, so it runs after the bundle's own
    try:
        engine.run()
    finally:
        engine.remove_event_handler(epoch_end, Events.EPOCH_COMPLETED)
    return ended[-1]


def bundle_benchmark(name: str, work: str, args, device: torch.device) -> dict:
    bundle = ROOT / "bundles" / name
    cuda_path = device.type == "cuda"
    overrides, size = bundle_overrides(name, bundle, work, args, device)
    trainer, loader, evaluator, infer_loader = bundle_engines(bundle, overrides)
    loops = plain_loops(trainer, evaluator)
    if loops is None:
        return {"skipped": SUPPORTED_NOTE, "trainer": type(trainer).__name__, "evaluator": type(evaluator).__name__}

    def collate(source) -> Batches:
        return Batches([to_device_batch(b, device, cuda_path) for b in itertools.islice(itertools.cycle(source), args.batches)], args.batch_size)

    train_batches = collate(loader)
    infer_batches = collate(infer_loader) if infer_loader is not None else train_batches
    network = trainer.g_network if hasattr(trainer, "g_network") else trainer.network
    if cuda_path:
        network.to(memory_format=torch.channels_last)
    trainer.data_loader = train_batches  # before building the loops: the GAN's latent batch size is the loader's
    plain_train, plain_infer = loops(trainer, evaluator, device, cuda_path)
    result = {
        "image_size": size,
        "batch_size": args.batch_size,
        "batches": len(train_batches),
        "network": type(network).__name__,
        "trainer": type(trainer).__name__,
        "plain_loop": loops.__name__,
    }
    for kind, engine, batches, plain_fn in (("train", trainer, train_batches, plain_train), ("inference", evaluator, infer_batches, plain_infer)):
        images = sum(batch_images(b) for b in batches)
        result[kind] = time_pair(lambda: run_engine(engine, batches, device), lambda: plain_fn(batches), images, device, args.repeats)
    return result


# -------------------------------------------------------------------------------------------------- data loader


def loader_benchmark(work: str, args) -> dict:
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose, EnsureTyped, Resized

    from chestzoo.data import DiskCacheDataset, LoadChestImaged, load_datalist

    root = synthetic_dataset("nih", os.path.join(work, "loader_nih"), patients=args.loader_images, size=args.loader_source_size)
    items = [item for split in ("training", "validation", "test") for item in load_datalist(os.path.join(root, "datalist.json"), split)]
    items = [{"image": item["image"]} for item in items[: args.loader_images]]
    head = Compose([
        LoadChestImaged(keys="image"),
        Resized(keys="image", spatial_size=(args.loader_size, args.loader_size), mode="area"),
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
    ])

    def one_pass(dataset):
        count = 0
        for batch in DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, shuffle=False):
            count += int(batch["image"].shape[0])
        return count

    cpu = torch.device("cpu")
    uncached_t, cached_t = Timed(), Timed()
    uncached = Dataset(items, head)
    cache_dir = os.path.join(work, "loader_cache")
    peak_rss_reset()
    start = time.perf_counter()
    cached = DiskCacheDataset(items, head, cache_dir=cache_dir, num_workers=args.workers)
    build_s = time.perf_counter() - start
    build_peak = peak_rss_mb()
    for _ in range(args.repeats):
        uncached_t.run(lambda: one_pass(uncached), len(items), cpu)
        cached_t.run(lambda: one_pass(cached), len(items), cpu)
    size_bytes = sum(f.stat().st_size for f in Path(cached.entry).iterdir())
    source_bytes = sum(os.path.getsize(item["image"]) for item in items)
    out = pair(cached_t, uncached_t)
    return {
        "images": len(items),
        "source_size": args.loader_source_size,
        "cached_size": args.loader_size,
        "workers": args.workers,
        "uncached": out["plain"],
        "cached": out["bundle"],
        "ratio_cached_over_uncached": out["ratio"],
        "run_ratios": out["run_ratios"],
        "cache_build_s": round(build_s, 3),
        "cache_build_peak_rss_mb": round(build_peak, 1),
        "cache_mb": round(size_bytes / 2**20, 2),
        "source_png_mb": round(source_bytes / 2**20, 2),
    }


# -------------------------------------------------------------------------------------------------------- memory


class SyntheticImaged(Transform):
    """Deterministic stand-in for decoding: item ``i`` becomes a ``(1, size, size)`` image drawn from seed ``i``."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, data):
        rng = np.random.default_rng(int(data["index"]))
        d = dict(data)
        d["image"] = rng.random((1, self.size, self.size), dtype=np.float32)
        d["label"] = np.float32(data["index"] % 2)
        return d


def memory_child(images: int, size: int, cache_dir: str, build_only: bool) -> dict:
    """One process: build the cache (``build_only``) or run one training epoch over it and report peak RSS."""
    from monai.transforms import Compose, RandFlipd

    from chestzoo.data import DiskCacheDataset

    items = [{"index": i} for i in range(images)]
    transform = Compose([SyntheticImaged(size), RandFlipd(keys="image", prob=0.5, spatial_axis=1)])
    dataset = DiskCacheDataset(items, transform, cache_dir=cache_dir, settings={"size": size})
    if build_only:
        return {"entry": os.path.basename(dataset.entry)}
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 1),
    )
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=0)
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(network(batch["image"]).squeeze(1), batch["label"].float())
        loss.backward()
        optimizer.step()
        seen += int(batch["image"].shape[0])
    return {"images": seen, "epoch_s": round(time.perf_counter() - start, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}


def memory_benchmark(work: str, counts: list[int], size: int) -> dict:
    runs = []
    for n in counts:
        cache_dir = os.path.join(work, f"memory_cache_{n}")
        for build_only in (True, False):  # build in one process, measure the epoch in a fresh one
            command = [sys.executable, __file__, "_memory_child", "--images", str(n), "--memory-size", str(size), "--cache", cache_dir]
            done = subprocess.run(command + (["--build-only"] if build_only else []), capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"memory run for {n} images failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
        runs.append({"images": n, **result})
    return {"image_size": size, "runs": runs, "ratio_largest_over_smallest": runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]}


# ------------------------------------------------------------------------------------------------------- report


TARGETS = {"train": 0.95, "inference": 0.95, "loader": 5.0, "memory": 1.10}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpu_cores_available']} cores available, {m['memory_gb']} GB, device {m['device']}"
        + (f" ({m['gpu']})" if m["gpu"] else ", no GPU") + f"; load average at start {m['load_average_at_start']}; torch {m['torch']}, MONAI {m['monai']}.",
        "",
        f"Command: `{report['command']}`",
        "",
        "Images/s: the median over the timed runs; ratio: the median over the alternating runs of plain seconds / bundle seconds.",
        "",
        "| measurement | bundle / cached | plain PyTorch / uncached | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for name, result in report["bundles"].items():
        if "skipped" in result:
            lines.append(f"| {name} | not measured: {result['skipped']} | | | |")
            continue
        for kind in ("train", "inference"):
            r = result[kind]
            lines.append(
                f"| {name} {kind} ({result['network']}, {result['image_size']} px, batch {result['batch_size']}) | {r['bundle']['images_per_s']:.2f} img/s, "
                f"peak RSS {r['bundle']['peak_rss_mb']:.0f} MB | {r['plain']['images_per_s']:.2f} img/s, peak RSS {r['plain']['peak_rss_mb']:.0f} MB | "
                f"{r['ratio']:.3f} | >= {TARGETS[kind]} {'met' if r['ratio'] >= TARGETS[kind] else 'MISSED'} |"
            )
    if report.get("loader"):
        r = report["loader"]
        lines.append(
            f"| data loader, {r['images']} PNGs {r['source_size']}x{r['source_size']} -> {r['cached_size']}x{r['cached_size']}, {r['workers']} workers | "
            f"{r['cached']['images_per_s']:.1f} img/s (build {r['cache_build_s']:.1f} s, {r['cache_mb']} MB) | {r['uncached']['images_per_s']:.1f} img/s | "
            f"{r['ratio_cached_over_uncached']:.1f} | >= {TARGETS['loader']} {'met' if r['ratio_cached_over_uncached'] >= TARGETS['loader'] else 'MISSED'} |"
        )
    if report.get("memory"):
        r = report["memory"]
        small, large = r["runs"][0], r["runs"][-1]
        ratio = r["ratio_largest_over_smallest"]
        lines.append(
            f"| peak RSS of a training epoch, cached {r['image_size']}x{r['image_size']} images | {large['images']} images: {large['peak_rss_mb']:.0f} MB | "
            f"{small['images']} images: {small['peak_rss_mb']:.0f} MB | {ratio:.3f} | <= {TARGETS['memory']} {'met' if ratio <= TARGETS['memory'] else 'MISSED'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="all", choices=["all", "_memory_child"])
    parser.add_argument("--out", default="benchmarks/results/benchmark.json")
    parser.add_argument("--markdown", default=None, help="also write the README table here")
    parser.add_argument("--bundles", default="cxr14_lse_classification,rsna_pneumonia_classification,cxr_lung_segmentation,cxr14_gmvae,cxr_pathology_detection,rsna_pneumonia_detection,lung_ct_dcgan")
    parser.add_argument("--settings", default="real", choices=["real", "demo", "test"], help="bundle settings: config defaults (pretrained off), or BUNDLE_RUNS demo/test overrides")
    parser.add_argument("--image-size", type=int, default=128, help="network input size (0: the settings' own)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind, after one warm-up")
    parser.add_argument("--loader-images", type=int, default=64, help="PNGs for the data-loader measurement (0: skip)")
    parser.add_argument("--loader-source-size", type=int, default=1024)
    parser.add_argument("--loader-size", type=int, default=512, help="cached size of the loader measurement")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers in the loader measurement")
    parser.add_argument("--memory-images", default="1000,20000", help="comma-separated dataset sizes for the memory measurement ('': skip)")
    parser.add_argument("--memory-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=None, help="where synthetic data and caches go (default: a temporary folder)")
    parser.add_argument("--images", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.mode == "_memory_child":
        print(json.dumps(memory_child(args.images, args.memory_size, args.cache, args.build_only)))
        return {}

    device = torch.device(args.device)
    command = "python benchmarks/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = {"command": command, "machine": machine(str(device)), "targets": TARGETS, "bundles": {}, "loader": None, "memory": None}
    with tempfile.TemporaryDirectory(prefix="chestzoo_bench_") as temporary:
        work = args.workdir or temporary
        for name in [b for b in args.bundles.split(",") if b]:
            print(f"bundle {name} ...", file=sys.stderr, flush=True)
            report["bundles"][name] = bundle_benchmark(name, work, args, device)
        if args.loader_images:
            print("data loader ...", file=sys.stderr, flush=True)
            report["loader"] = loader_benchmark(work, args)
        counts = [int(n) for n in args.memory_images.split(",") if n]
        if counts:
            print("memory ...", file=sys.stderr, flush=True)
            report["memory"] = memory_benchmark(work, counts, args.memory_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=4)
    table = markdown(report)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
