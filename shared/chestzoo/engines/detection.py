"""MONAI engines for torchvision-style detectors: training on a loss dict, evaluation with optional TTA, mAP.

torchvision's R-CNNs compute their own losses inside ``forward(images, targets)`` and return a dict of them
(classifier, box regression, objectness, RPN box regression, and mask for Mask R-CNN). MONAI's
``SupervisedTrainer`` expects ``loss_function(pred, label)`` instead, so :class:`DetectionTrainer` keeps
everything of it (events, handlers, AMP with its GradScaler, gradient accumulation, checkpointable state) and
replaces only the iteration: forward with the targets, sum the loss dict (:class:`DetectionLoss`), backward, clip
the gradient norm, step. The batches are lists of items (``monai.data.utils.no_collation``) because every image has
its own number of boxes; :class:`DetectionBatch` turns them into torchvision's images and targets.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Events
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from ..metrics.detection import mean_average_precision

logger = logging.getLogger(__name__)


def _plain(value) -> torch.Tensor:
    """A plain tensor (MetaTensor's metadata only slows torchvision down)."""
    value = value.as_tensor() if hasattr(value, "as_tensor") else value
    return torch.as_tensor(value)


class DetectionBatch:
    """``prepare_batch`` for a list of dict items: images and torchvision targets on ``device``.

    Targets carry ``boxes`` (N, 4) float32 and ``labels`` (N,) int64 (and ``masks`` from ``mask_key``); they are
    None when the items have no ``box_key`` (inference).
    """

    def __init__(self, image_key: str = "image", box_key: str = "box", label_key: str = "box_label", mask_key: str | None = None):
        self.image_key, self.box_key, self.label_key, self.mask_key = image_key, box_key, label_key, mask_key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        items = [batchdata] if isinstance(batchdata, Mapping) else list(batchdata)
        if not items:
            raise ValueError("empty batch")
        images = [_plain(item[self.image_key]).to(device=device, dtype=torch.float32, non_blocking=non_blocking) for item in items]
        if self.box_key not in items[0]:
            return images, None
        targets = []
        for item in items:
            target = {
                "boxes": _plain(item[self.box_key]).to(device=device, dtype=torch.float32, non_blocking=non_blocking).reshape(-1, 4),
                "labels": _plain(item[self.label_key]).to(device=device, dtype=torch.int64, non_blocking=non_blocking).reshape(-1),
            }
            if self.mask_key:
                target["masks"] = _plain(item[self.mask_key]).to(device=device, dtype=torch.uint8, non_blocking=non_blocking)
            targets.append(target)
        return images, targets


class DetectionLoss:
    """Weighted sum of a detector's loss dict (weight 1 for every loss not named in ``weights``)."""

    def __init__(self, weights: Mapping[str, float] | None = None):
        self.weights = dict(weights or {})

    def __call__(self, losses: Mapping[str, torch.Tensor], *unused) -> torch.Tensor:
        if not isinstance(losses, Mapping) or not losses:
            raise TypeError(f"expected the detector's dict of losses (is the network in training mode?), got {type(losses).__name__}")
        return sum(self.weights.get(name, 1.0) * value for name, value in losses.items())


class DetectionTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for detectors that return their losses from ``network(images, targets)``.

    ``clip_grad_norm`` clips the global gradient norm before each optimiser step (after unscaling under AMP);
    ``accumulation_steps`` adds up that many batches' gradients per step (the last batch of an epoch always steps).
    A non-finite loss stops training with the loss components in the message. ``engine.state.output`` holds the
    total ``loss`` and each component under its torchvision name.
    """

    def __init__(self, *args, loss_function: Callable | None = None, prepare_batch: Callable | None = None,
                 clip_grad_norm: float | None = None, decollate: bool = False, **kwargs):
        super().__init__(*args, loss_function=loss_function or DetectionLoss(), prepare_batch=prepare_batch or DetectionBatch(),
                         decollate=decollate, **kwargs)
        self.clip_grad_norm = float(clip_grad_norm) if clip_grad_norm else None

    def _iteration(self, engine: DetectionTrainer, batchdata) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if targets is None:
            raise ValueError("training items need boxes and box labels")
        engine.state.output = {Keys.IMAGE: images, Keys.LABEL: targets}

        acc = engine.accumulation_steps
        epoch_length = engine.state.epoch_length
        local = (engine.state.iteration - 1) % epoch_length if epoch_length else engine.state.iteration - 1
        zero_grad = local % acc == 0
        step = (local + 1) % acc == 0 or (epoch_length is not None and local + 1 == epoch_length)

        engine.network.train()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        use_amp = bool(engine.amp and engine.scaler is not None)
        with _autocast(use_amp, engine.amp_kwargs):
            losses = engine.inferer(images, engine.network, targets)
            engine.state.output[Keys.PRED] = {k: v.detach() for k, v in losses.items()}
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = engine.loss_function(losses)
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.state.output.update({k: v.detach() for k, v in losses.items()})
        # a StopOnNonFiniteLoss handler reports a non-finite loss here, naming the last good checkpoint
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k} {float(v):.4g}" for k, v in losses.items())
            raise FloatingPointError(f"loss is {float(loss)} at iteration {engine.state.iteration} ({parts}); lower the learning rate")

        scaled = loss / acc if acc > 1 else loss
        if use_amp:
            engine.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if step:
            if use_amp:
                engine.scaler.unscale_(engine.optimizer)
            if engine.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.clip_grad_norm)
            if use_amp:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def _autocast(enabled: bool, kwargs: Mapping | None = None):
    """CUDA autocast when AMP is on; a no-op context otherwise (also on machines without CUDA)."""
    return torch.autocast("cuda", **(kwargs or {})) if enabled else contextlib.nullcontext()


def _to_cpu(prediction: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in prediction.items()}


class DetectionEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` whose ``pred`` is a list of per-image detection dicts (on the CPU).

    With ``tta`` (a :class:`chestzoo.tta.TestTimeAugmentation`) each image is predicted on all views and ``pred``
    holds the fused boxes; ``views`` in the output keeps every view's boxes for later comparisons of fusions.
    ``label`` holds the targets when the items have boxes (else None).
    """

    def __init__(self, *args, prepare_batch: Callable | None = None, tta=None, decollate: bool = False, **kwargs):
        super().__init__(*args, prepare_batch=prepare_batch or DetectionBatch(), decollate=decollate, **kwargs)
        self.tta = tta

    def _iteration(self, engine: DetectionEvaluator, batchdata) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.network.eval()

        def detector(batch):
            with _autocast(bool(engine.amp), engine.amp_kwargs):
                return engine.inferer(batch, engine.network)

        with engine.mode(engine.network):
            if engine.tta is None:
                views = None
                predictions = [_to_cpu(p) for p in detector(images)]
            else:
                views = engine.tta.predict_views(detector, images)
                predictions = [engine.tta.fuse(v) for v in views]
        engine.state.output = {
            Keys.IMAGE: images,
            Keys.LABEL: None if targets is None else [_to_cpu(t) for t in targets],
            Keys.PRED: predictions,
            "views": views,
        }
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class DetectionMAP(Metric):
    """COCO-style mAP over an epoch (ignite metric): ``output_transform`` gives (predictions, targets) lists.

    Reports 0.0 (with a warning) when the data hold no ground-truth box, so that early stopping and best-model
    selection still get a number.
    """

    def __init__(self, class_names: Sequence[str], iou_threshold: float = 0.5,
                 output_transform: Callable = lambda output: (output[Keys.PRED], output[Keys.LABEL]), device="cpu"):
        self.class_names = list(class_names)
        self.iou_threshold = float(iou_threshold)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._predictions: list = []
        self._targets: list = []

    def update(self, output) -> None:
        predictions, targets = output
        if targets is None:
            raise ValueError("mAP needs ground-truth boxes: the evaluated items have no 'box'")
        self._predictions.extend(_to_cpu(p) for p in predictions)
        self._targets.extend(_to_cpu(t) for t in targets)

    def compute(self) -> float:
        result = mean_average_precision(self._predictions, self._targets, self.class_names, self.iou_threshold)
        if math.isnan(result["mAP"]):
            logger.warning("no ground-truth boxes among %d images: mAP reported as 0", len(self._targets))
            return 0.0
        return result["mAP"]


class DetectionCollector:
    """Handler keeping every evaluated image's path, size, targets, predictions (and TTA views), in order."""

    def __init__(self, image_key: str = "image"):
        self.image_key = image_key
        self.records: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, engine=None) -> None:
        self.records = []

    def __call__(self, engine) -> None:
        output = engine.state.output
        batch = engine.state.batch
        items = [batch] if isinstance(batch, Mapping) else list(batch)
        targets = output[Keys.LABEL] or [None] * len(items)
        views = output.get("views") or [None] * len(items)
        for item, image, prediction, target, view in zip(items, output[Keys.IMAGE], output[Keys.PRED], targets, views):
            path = item.get(f"{self.image_key}_path", item.get(self.image_key))
            self.records.append({
                "image": os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path),
                "size": [int(image.shape[-2]), int(image.shape[-1])],
                "pred": prediction,
                "target": target,
                "views": view,
            })


class SyncTermination:
    """Under DistributedDataParallel, stop every rank when rank 0 stops (early stopping runs on rank 0 only).

    Attach to the trainer after the validation handler: at each epoch end rank 0's decision is broadcast and the
    other ranks terminate with it, instead of waiting forever in the next all-reduce.
    """

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            return
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        flag = torch.tensor([1 if engine.should_terminate else 0], device=device)
        dist.broadcast(flag, src=0)
        if int(flag.item()) and not engine.should_terminate:
            engine.terminate()


def predictions_as_lists(prediction: Mapping, class_names: Sequence[str] | None = None) -> dict:
    """One image's detections as JSON-able lists (with class names when given)."""
    boxes = np.asarray(_plain(prediction["boxes"]).cpu(), dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(_plain(prediction["labels"]).cpu(), dtype=np.int64).reshape(-1)
    scores = np.asarray(_plain(prediction["scores"]).cpu(), dtype=np.float64).reshape(-1)
    out = {"boxes": [[round(float(v), 2) for v in b] for b in boxes], "labels": labels.tolist(), "scores": [round(float(s), 5) for s in scores]}
    if class_names is not None:
        out["label_names"] = [class_names[int(k)] for k in labels]
    return out


CSV_COLUMNS = ("ID", "image_id", "x_min", "y_min", "x_max", "y_max", "confidence", "label")
NO_FINDING = "No Finding"


def read_score_thresholds(path: str | None, class_names: Sequence[str], variant: str, default: float, per_class: bool = False) -> list[float]:
    """Score thresholds (one per class) saved by evaluation for ``variant``: the global best-F1 threshold for every
    class, or each class's own with ``per_class``; ``default`` for every class when there is no file."""
    from ..utils import as_bool

    import json

    names = list(class_names)
    if not path or not os.path.isfile(path):
        logger.warning("no thresholds file %s: keeping detections with score >= %g", path, default)
        return [float(default)] * len(names)
    with open(path) as f:
        saved = json.load(f)
    if saved.get("classes") != names:
        raise ValueError(f"{path}: thresholds are for classes {saved.get('classes')}, not {names}")
    if variant not in saved.get("variants", {}):
        raise ValueError(f"{path}: no thresholds for {variant!r} (found {sorted(saved.get('variants', {}))}); run evaluation with the same TTA settings")
    chosen = saved["variants"][variant]
    if as_bool(per_class):
        return [float(chosen["per_class"][n]) for n in names]
    return [float(chosen["threshold"])] * len(names)


class DetectionWriter:
    """Inference outputs: ``predictions.json`` (boxes, labels, scores per image), a CSV, and overlay PNGs.

    Detections are kept when their score reaches their class's threshold (``thresholds``, one per class). The CSV
    has the DLIA 2025 seed's columns ``ID, image_id, x_min, y_min, x_max, y_max, confidence, label`` with one row
    per kept box; with ``one_per_image`` every image gets exactly one row instead: its highest-scoring detection
    (kept or not), or an empty box labelled "No Finding" with confidence 0 when the detector found nothing.
    The first ``overlays`` images get a PNG with their kept boxes under ``overlay_dir``.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], thresholds: Sequence[float], one_per_image: bool = False,
                 json_file: str = "predictions.json", csv_file: str = "predictions.csv", overlays: int = 8,
                 overlay_dir: str = "overlays", image_key: str = "image", details: dict | None = None):
        from ..utils import as_bool

        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.thresholds = [float(t) for t in thresholds]
        if len(self.thresholds) != len(self.class_names):
            raise ValueError(f"{len(self.thresholds)} thresholds for {len(self.class_names)} classes")
        self.one_per_image = as_bool(one_per_image)
        self.json_file, self.csv_file = json_file, csv_file
        self.overlays = int(overlays or 0)
        self.overlay_dir = overlay_dir
        self.image_key = image_key
        self.details = dict(details or {})
        self.records: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine=None) -> None:
        self.records = []

    def collect(self, engine) -> None:
        from ..metrics.detection import as_numpy, filter_by_score
        from ..visualize.boxes import write_detection_overlay

        batch = engine.state.batch
        items = [batch] if isinstance(batch, Mapping) else list(batch)
        output = engine.state.output
        for item, image, prediction in zip(items, output[Keys.IMAGE], output[Keys.PRED]):
            path = item.get(f"{self.image_key}_path", "")
            path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
            everything = as_numpy(prediction)
            kept = filter_by_score(prediction, self.thresholds)
            record = {"image": path, "size": [int(image.shape[-2]), int(image.shape[-1])], **predictions_as_lists(kept, self.class_names)}
            if len(everything["scores"]):
                best = int(np.argmax(everything["scores"]))
                record["top"] = {"box": [round(float(v), 2) for v in everything["boxes"][best]], "label": int(everything["labels"][best]),
                                 "label_name": self.class_names[int(everything["labels"][best])], "score": round(float(everything["scores"][best]), 5)}
            else:
                record["top"] = None
            if len(self.records) < self.overlays:
                stem = os.path.splitext(os.path.basename(path))[0] or f"image_{len(self.records)}"
                record["overlay"] = os.path.join(self.overlay_dir, f"{stem}.png")
                write_detection_overlay(os.path.join(self.output_dir, record["overlay"]), image, boxes=kept["boxes"], labels=kept["labels"],
                                        scores=kept["scores"], class_names=self.class_names, title=os.path.basename(path))
            self.records.append(record)

    def rows(self) -> list[dict]:
        """The CSV rows (see the class doc)."""
        rows = []
        for record in self.records:
            image_id = os.path.splitext(os.path.basename(record["image"]))[0]
            if self.one_per_image:
                top = record["top"]
                if top is None:
                    rows.append({"image_id": image_id, "x_min": "", "y_min": "", "x_max": "", "y_max": "", "confidence": 0.0, "label": NO_FINDING})
                else:
                    rows.append({"image_id": image_id, **dict(zip(CSV_COLUMNS[2:6], top["box"])), "confidence": top["score"], "label": top["label_name"]})
                continue
            for box, name, score in zip(record["boxes"], record["label_names"], record["scores"]):
                rows.append({"image_id": image_id, **dict(zip(CSV_COLUMNS[2:6], box)), "confidence": score, "label": name})
        return [{"ID": k, **row} for k, row in enumerate(rows)]

    def write(self, engine=None) -> None:
        import csv

        from ..metrics.report import write_json

        os.makedirs(self.output_dir, exist_ok=True)
        write_json(os.path.join(self.output_dir, self.json_file), {
            "classes": self.class_names,
            "thresholds": dict(zip(self.class_names, self.thresholds)),
            **self.details,
            "images": self.records,
        })
        with open(os.path.join(self.output_dir, self.csv_file), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows())
        logger.info("wrote detections of %d images to %s", len(self.records), self.output_dir)
