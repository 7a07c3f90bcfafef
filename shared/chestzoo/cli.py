"""The ``chestzoo`` command. ``chestzoo --help`` lists the commands; each takes ``--help`` too."""

from __future__ import annotations

import json
import logging
import sys

import fire

from .data import DataError, registry


class ChestZoo:
    """Chest-imaging MONAI Bundles: synthetic data, dataset preparation and the demo."""

    def datasets(self):
        """List the supported datasets."""
        for name, description in registry.DATASETS.items():
            print(f"{name:16s} {description}")

    def synth(self, dataset: str, out: str, patients: int = 60, size: int = 256, seed: int = 0, **options):
        """Write a synthetic dataset in the official layout of DATASET under OUT (same seed, same bytes)."""
        summary = registry.synth(dataset, out, patients=patients, size=size, seed=seed, **options)
        print(json.dumps(summary, indent=2))

    def prepare(self, dataset: str, root: str, out: str | None = None, **options):
        """Read DATASET from its official download layout under ROOT and write a MONAI datalist (default ROOT/datalist.json)."""
        summary = registry.prepare(dataset, root, out, **options)
        print(json.dumps(summary, indent=2))

    def verify(self, bundle: str, settings: str = "test", dataset_dir: str | None = None, ckpt: str | None = None,
               schema: str | None = None, out: str | None = None):
        """Apply the Model Zoo's CI checks and an ONNX Runtime check to BUNDLE (a name under bundles/ or a folder).

        Checks: files, JSON style, metadata (version in changelog, schema), train and infer properties,
        verify_net_in_out (config defaults, as the zoo's CI), TorchScript export and reload, ONNX export against
        PyTorch. SETTINGS is test (the tests' small network: seconds), demo, or none (the config defaults); the
        properties check reads DATASET_DIR (default: a small synthetic dataset written to a temporary folder). CKPT
        checks trained weights instead of the initial ones. OUT writes the results as JSON. Exits 1 if a check fails.
        """
        from .verify import run_verify

        results = run_verify(bundle, settings=settings, dataset_dir=dataset_dir, ckpt=ckpt, schema=schema, out=out)
        if any(r.status == "fail" for r in results):
            sys.exit(1)

    def export(self, bundle: str, out: str = "exported", models: bool = False, overwrite: bool = False):
        """Write OUT/<bundle>/ and OUT/<bundle>.zip: the bundle with the chestzoo code it uses in scripts/, runnable by
        `python -m monai.bundle run` without chestzoo installed. MODELS also copies models/ (checkpoints)."""
        from .bundle_checks import find_bundle
        from .export import export_bundle

        summary = export_bundle(find_bundle(bundle), out, include_models=models, overwrite=overwrite)
        print(json.dumps(summary, indent=2))

    def demo(self, out: str = "demo_output", bundles: str | None = None, fast: bool = False):
        """Synthetic data, then every bundle trained, evaluated and run for inference, then a report in OUT/report.md."""
        from .demo import run_demo

        if isinstance(bundles, str):
            bundles = bundles.split(",")
        report = run_demo(out, bundles=list(bundles) if bundles else None, fast=fast)
        print(f"report: {report}")

    def compare(self, dataset_dir: str, out: str = "comparison", ckpt_dirs: dict | str | None = None, settings: str = "none",
                overrides: dict | str | None = None, lung_dataset_dir: str | None = None, device: str | None = None,
                max_images: int | None = None, threads: int | None = None):
        """Compare the VGG16 classifier, U-Net and Mask R-CNN on the RSNA test split of DATASET_DIR (report in OUT).

        CKPT_DIRS maps bundle names to checkpoint folders (JSON; default bundles/<name>/models); SETTINGS is none, demo
        or test (the overrides the models were trained with); LUNG_DATASET_DIR holds a lung-mask datalist for the
        U-Net's Dice; THREADS fixes torch's CPU threads for steadier timings.
        """
        from .compare import run_compare

        parse = lambda value: json.loads(value) if isinstance(value, str) else value  # noqa: E731 - fire passes JSON text or a dict
        report = run_compare(dataset_dir, out, ckpt_dirs=parse(ckpt_dirs), settings=settings, overrides=parse(overrides),
                             lung_dataset_dir=lung_dataset_dir, device=device, max_images=max_images, threads=threads)
        print(f"report: {report}")

    def baselines(self, dataset_dir: str, out: str | None = None, task: str | list | None = None, size: int = 32,
                  thumbnail: int = 16, seed: int = 0, max_images: int | None = None, n_resamples: int = 1000):
        """No-learning baselines (prevalence, best pixel, mean template, mean mask, mean boxes) on DATASET_DIR's test split.

        TASK (default: every task whose datalist is there; several comma-separated): nih_classification,
        rsna_classification, pediatric_classification, lung_segmentation, nih_detection, rsna_detection. Images are
        shrunk to SIZE x SIZE on reading; a logistic regression on THUMBNAIL x THUMBNAIL images is reported beside
        them as a learned linear model. MAX_IMAGES caps each split for a quick check. Writes OUT/baselines.json and
        OUT/baselines.md (default OUT: DATASET_DIR/baselines) and prints the table.
        """
        from .baselines import markdown, run_baselines

        if isinstance(task, str):
            task = task.split(",")
        report = run_baselines(dataset_dir, out, task=task, size=size, thumbnail=thumbnail, seed=seed, max_images=max_images,
                               n_resamples=n_resamples)
        print(markdown(report))

    def check_image(self, *files: str, kind: str = "xray", accept_any_image: bool = False):
        """Say, for each FILE, whether chestzoo's models take it: accepted, or refused with the reason.

        KIND "xray" (frontal chest radiograph: DICOM Modality CR or DX, BodyPartExamined chest or absent, ViewPosition
        PA or AP or absent) or "ct". Blank and colour pictures are refused too. Exits with status 1 when any file is
        refused (or cannot be read); ACCEPT_ANY_IMAGE accepts every readable file and says what it overrode.
        """
        from .data.input_gate import check_file
        from .utils import as_bool

        if not files:
            raise fire.core.FireError("name at least one file: chestzoo check-image FILE [FILE ...]")
        refused = 0
        for path in files:
            try:
                verdict = str(check_file(path, kind, as_bool(accept_any_image)))
                refused += verdict.startswith("refused")
            except Exception as exc:  # an unreadable file is refused with its error; the other files are still checked
                verdict = f"refused: cannot read it ({type(exc).__name__}: {exc})"
                refused += 1
            print(f"{path}: {verdict}")
        if refused:
            sys.exit(1)

    def serve(self, host: str = "127.0.0.1", port: int = 8000, models: str | None = None, ckpt_dirs: dict | str | None = None,
              settings: str = "none", overrides: dict | str | None = None, device: str | None = None, max_upload_mb: float = 32.0,
              accept_any_image: bool = False):
        """A web page on http://HOST:PORT/: upload a chest X-ray, see findings, heatmaps, boxes and lungs; generate images.

        MODELS holds <bundle>/models/model.pt per bundle (default: bundles/, i.e. bundles/<name>/models; after
        `chestzoo demo` use demo_output); CKPT_DIRS maps bundle names to checkpoint folders (JSON); SETTINGS is none, demo
        or test, the overrides the models were trained with. Untrained bundles are listed on the page with their command.
        Uploads that are plainly not a frontal chest radiograph are refused with the reason (as `chestzoo check-image`
        says); ACCEPT_ANY_IMAGE analyses them anyway and the answer says so.
        """
        from .bundle_model import BUNDLES_DIR
        from .serve import serve
        from .utils import as_bool

        parse = lambda value: json.loads(value) if isinstance(value, str) else value  # noqa: E731 - fire passes JSON text or a dict
        serve(host=host, port=port, max_upload_mb=max_upload_mb, accept_any_image=as_bool(accept_any_image),
              models_dir=models or BUNDLES_DIR, ckpt_dirs=parse(ckpt_dirs), settings=settings, overrides=parse(overrides),
              device=device)


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(ChestZoo, name="chestzoo")
    except DataError as exc:  # bad input is the user's to fix: one line naming the file, not a traceback
        print(f"chestzoo: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
