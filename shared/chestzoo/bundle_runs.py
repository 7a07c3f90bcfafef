"""How the demo and the tests run each bundle: which synthetic dataset it trains on and the overrides that shrink it.

The bundles' configs hold the real-data settings; the demo (CPU minutes) and the tests (CPU seconds) shrink them
only through these command-line overrides, never through a second copy of a config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .evidence import Margin


@dataclass(frozen=True)
class BundleRun:
    dataset: str  # synthetic dataset (a key of chestzoo.data.registry.DATASETS)
    datalist: str = "datalist.json"  # which datalist, written by `chestzoo prepare`, in the dataset folder
    demo_data: dict = field(default_factory=dict)  # synth options for the demo: patients, size
    demo: dict = field(default_factory=dict)  # overrides for every config of the bundle in the demo
    test_data: dict = field(default_factory=dict)  # synth options for the tests
    test: dict = field(default_factory=dict)  # overrides for every config of the bundle in the tests
    configs: tuple[str, ...] = ("train", "evaluate", "inference")  # run by the demo and the tests, in order
    net_id: str = "network_def"  # the config id of the network, for verify_net_in_out and TorchScript export
    torchscript: bool = True  # whether ckpt_export can script the network
    # whether the network exports to ONNX (chestzoo verify); False: the detectors, whose number of boxes is data-dependent
    onnx: bool = True
    # the bars its headline numbers' 95% intervals must clear to show learning (chestzoo.evidence), read by the demo
    # report and the learning tests
    margins: tuple[Margin, ...] = ()


# The demo's and the learning tests' synthetic X-ray sets draw findings three times as conspicuous as the phantom's
# default (chestzoo.data.synth.phantom.render_chest): at 1 the bundles learn few findings in a few CPU minutes, at 3
# they do, while the no-learning baselines stay near chance (bundle docs, "How the demo settings were chosen").
CONSPICUITY = 3.0


def override_args(overrides: dict) -> list[str]:
    """Overrides as ``python -m monai.bundle run`` arguments that fire reads back into the same Python values.

    Booleans and numbers go as ``str()`` (fire reads ``False`` as the bool, ``false`` would be a string); lists and
    dicts as JSON.
    """
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)]
    return args


# One entry per bundle in bundles/<name>.
BUNDLE_RUNS: dict[str, BundleRun] = {
    "cxr14_lse_classification": BundleRun(
        dataset="nih",
        margins=(Margin("mean AUROC", "nih_classification", margin=0.05),),
        # how each demo setting was chosen, and what it measures: bundles/cxr14_lse_classification/docs/README.md
        demo_data={"patients": 300, "size": 64, "conspicuity": CONSPICUITY},
        demo={
            "backbone": "resnet18",
            "pretrained": False,
            "image_size": 64,
            "batch_size": 16,
            "learning_rate": 0.001,
            "max_epochs": 6,
            "num_workers": 0,
            "max_images": 8,
        },
        test_data={"patients": 16, "size": 64},
        test={
            "backbone": "resnet18",
            "pretrained": False,
            "image_size": 64,
            "batch_size": 8,
            "max_epochs": 1,
            "num_workers": 0,
            "max_images": 3,
            "localization_overlays": 1,
        },
    ),
    "cxr14_gmvae": BundleRun(
        dataset="nih",
        margins=(Margin("mean AUROC", "nih_classification", margin=0.05), Margin("FD samples", factor=3.0, untrained="FD untrained")),
        # how each demo setting was chosen, and what it measures: bundles/cxr14_gmvae/docs/README.md
        demo_data={"patients": 300, "size": 64, "conspicuity": CONSPICUITY},
        demo={
            "image_size": 64,
            "channels": [16, 32, 64, 128],
            "blocks": 1,
            "components": 10,
            "batch_size": 16,
            "learning_rate": 0.003,
            "prior_learning_rate": 0.05,
            "max_epochs": 20,
            "num_workers": 0,
            "iwae_samples": 16,
            "reference_epochs": 15,
        },
        test_data={"patients": 16, "size": 64},
        test={
            "image_size": 32,
            "channels": [8, 16],
            "blocks": 1,
            "components": 3,
            "batch_size": 8,
            "max_epochs": 1,
            "num_workers": 0,
            "iwae_samples": 2,
            "reference_epochs": 1,
            "fidelity_samples": 2,
            "samples_per_finding": 2,
            "samples_per_component": 1,
            "latent_map_images": 24,
        },
    ),
    "rsna_pneumonia_classification": BundleRun(
        dataset="rsna",
        margins=(Margin("AUROC", "rsna_classification", margin=0.10),),
        demo_data={"patients": 400, "size": 128, "conspicuity": CONSPICUITY},
        demo={
            # no ImageNet weights offline: VGG16 with batch norm from scratch, at 32 x 32, without augmentation
            "pretrained": False,
            "batch_norm": True,
            "image_size": 32,
            "batch_size": 16,
            # the config's Adam rate, chosen on validation over 0.001, at which the network did not learn (bundle docs)
            "learning_rate": 0.0001,
            "max_epochs": 6,
            "augment": False,
            "num_workers": 0,
            "max_images": 8,
        },
        test_data={"patients": 16, "size": 64},
        test={
            "pretrained": False,
            "batch_norm": True,
            "image_size": 32,
            "batch_size": 8,
            "max_epochs": 1,
            "num_workers": 0,
            "max_images": 3,
        },
    ),
    "cxr_lung_segmentation": BundleRun(
        dataset="montgomery",
        margins=(Margin("Dice", "lung_segmentation", margin=0.08),),
        demo_data={"patients": 120, "size": 128},
        demo={
            "image_size": 96,
            "features": [8, 16, 32, 64, 128, 8],
            "batch_size": 8,
            "max_epochs": 3,
            "num_workers": 0,
            "max_images": 8,
        },
        test_data={"patients": 16, "size": 64},
        test={
            "image_size": 32,
            "features": [4, 8, 16, 32, 64, 4],
            "batch_size": 4,
            "max_epochs": 1,
            "num_workers": 0,
            "max_images": 3,
        },
    ),
    "rsna_pneumonia_detection": BundleRun(
        onnx=False,  # torch.export: data-dependent box count; the traced graph holds the traced input's count
        dataset="rsna",
        margins=(Margin("RSNA score", "rsna_detection", margin=0.10, factor=2.0),),
        # how each demo setting was chosen, and what it measures: bundles/rsna_pneumonia_detection/docs/README.md
        demo_data={"patients": 400, "size": 128, "conspicuity": CONSPICUITY},
        demo={
            "backbone": "resnet18_fpn",
            "pretrained": False,
            "image_size": 64,
            "fpn_channels": 64,
            "fpn_stages": [2, 3, 4],
            "anchor_sizes": [16, 32, 64, 128],
            "representation_size": 128,
            "mask_head_channels": 64,
            "mask_head_layers": 2,
            "proposals_train": 200,
            "proposals_test": 100,
            "roi_batch_size": 64,
            "detections_per_image": 20,
            "batch_size": 8,
            "optimizer_name": "adamw",  # from scratch in a few epochs AdamW converges far faster than SGD
            "learning_rate": 0.001,
            "max_epochs": 4,
            "affine_prob": 0.0,
            "early_stop_patience": 100,
            "num_workers": 0,
            "max_images": 8,
        },
        test_data={"patients": 16, "size": 64},
        test={
            "backbone": "resnet18_fpn",
            "pretrained": False,
            "image_size": 64,
            "fpn_channels": 32,
            "fpn_stages": [3, 4],
            "anchor_sizes": [32, 64, 128],
            "representation_size": 64,
            "mask_head_channels": 16,
            "mask_head_layers": 1,
            "proposals_train": 100,
            "proposals_test": 50,
            "roi_batch_size": 32,
            "detections_per_image": 10,
            "batch_size": 4,
            "optimizer_name": "adamw",
            "learning_rate": 0.001,
            "max_epochs": 1,
            "num_workers": 0,
            "max_images": 3,
            "examples": 2,
        },
    ),
    "cxr_pathology_detection": BundleRun(
        onnx=False,  # torch.export: data-dependent box count; the traced graph holds the traced input's count
        dataset="nih",
        margins=(Margin("mAP@0.5 (no TTA)", "nih_detection", margin=0.10, factor=2.0),),
        datalist="datalist_boxes.json",
        # Its own synthetic set: 40% of the patients on the official test list, where the boxed films are, gives it
        # more boxed training films than the default 25%. How each demo setting was chosen, and what it measures:
        # bundles/cxr_pathology_detection/docs/README.md
        demo_data={"patients": 300, "size": 128, "test_fraction": 0.4, "conspicuity": CONSPICUITY},
        demo={
            "backbone": "resnet18_fpn",
            "pretrained": False,
            "image_size": 128,
            "fpn_channels": 64,
            "fpn_stages": [2, 3, 4],
            "anchor_sizes": [8, 16, 32, 64],
            "representation_size": 256,
            "proposals_train": 300,
            "proposals_test": 300,
            "roi_batch_size": 64,
            "batch_size": 2,  # twice the updates for the same compute: what ten epochs from scratch need most
            "accumulation_steps": 1,
            "optimizer_name": "adamw",  # from scratch in a few epochs AdamW converges far faster than SGD
            "learning_rate": 0.002,
            "warmup_epochs": 1,
            "max_epochs": 10,
            "affine_prob": 0.0,  # shift-scale-rotate, brightness/contrast and coarse dropout slow a ten-epoch run
            "intensity_prob": 0.0,  # from scratch down; flips stay
            "dropout_prob": 0.0,
            "train_negatives": False,
            "fusion": "wbf",
            "num_workers": 0,
            "input_split": "test",
            "max_images": 8,
        },
        test_data={"patients": 16, "size": 64},
        test={
            "backbone": "resnet18_fpn",
            "pretrained": False,
            "image_size": 64,
            "fpn_channels": 32,
            "fpn_stages": [3, 4],
            "anchor_sizes": [16, 32, 64],
            "representation_size": 64,
            "proposals_train": 100,
            "proposals_test": 50,
            "roi_batch_size": 32,
            "batch_size": 2,
            "accumulation_steps": 2,
            "max_epochs": 1,
            "num_workers": 0,
            "overlays": 1,
            "input_split": "test",
            "max_images": 2,
        },
    ),
    "lung_ct_dcgan": BundleRun(
        dataset="lung_pet_ct_dx",
        margins=(Margin("FD", factor=3.0, untrained="FD untrained G"),),
        # demo target (bundles/lung_ct_dcgan/docs/README.md): Frechet distance several times below an untrained
        # generator's, diversity ratio well above 0 (no collapse), a synthetic DICOM series written
        demo_data={"patients": 16, "size": 64},
        demo={
            "ngf": 16,
            "ndf": 16,
            "batch_size": 16,
            "learning_rate": 0.0005,
            "beta1": 0.5,
            "ema_decay": 0.99,
            "max_epochs": 80,
            "num_workers": 0,
            "sample_interval": 20,
            "eval_samples": 300,
        },
        test_data={"patients": 16, "size": 64},
        test={
            "ngf": 8,
            "ndf": 8,
            "batch_size": 16,
            "max_epochs": 1,
            "num_workers": 0,
            "eval_samples": 32,
            "feature_epochs": 1,
            "num_samples": 4,
        },
    ),
}
