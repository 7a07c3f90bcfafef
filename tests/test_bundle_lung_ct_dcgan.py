"""lung_ct_dcgan: the shared bundle checks, plus what this bundle adds: latent input, evaluation report, synthetic
DICOM series (pydicom and ITK), slice selection, resume, the X-ray annex, and a learning test."""

from bundle_harness import bundle_tests; globals().update(bundle_tests("lung_ct_dcgan"))  # noqa: E702

import glob
import json
import os

import itk
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

from bundle_harness import bundle_workflow, check_learned, check_settings_follow_sources, config_path, learning_verdicts
from chestzoo.bundle_runs import BUNDLE_RUNS
from chestzoo.data.errors import DataError
from chestzoo.data.slice_selection import center_square, display_window, generator_items, intensity_range, label_indices, select_items
from chestzoo.data.synthetic_dicom import write_synthetic_series
from chestzoo.visualize.gan import GeneratedImageWriter

NAME = "lung_ct_dcgan"
RUN = BUNDLE_RUNS[NAME]
BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", NAME)
# The learning test: 32 x 32 slices, 630 updates of small networks with a weight-averaged generator; its bar is
# BundleRun.margins (chestzoo.evidence): a Frechet distance 3 times below the untrained generator's, intervals apart
LEARN = {**RUN.test, "image_size": 32, "ngf": 16, "ndf": 16, "learning_rate": 0.0005, "beta1": 0.5, "ema_decay": 0.99,
         "max_epochs": 70, "eval_samples": 200, "feature_epochs": 30, "resume": False}
LEARN_MIN_DIVERSITY = 0.3


def config(name: str) -> str:
    return config_path(NAME, name)


def run_config(name: str, **overrides) -> ConfigWorkflow:
    wf = bundle_workflow(NAME, name, **overrides)
    wf.run()
    wf.finalize()
    return wf


def _dicoms(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "dicom", "*.dcm")))


# --- the latent input -----------------------------------------------------------------------------------------


def test_metadata_declares_a_latent_vector_input():
    meta = json.load(open(config("metadata")))
    latent = meta["network_data_format"]["inputs"]["image"]
    assert latent["type"] == "latent" and "latent" in latent["format"]
    assert latent["spatial_shape"] == [1, 1]  # (B, latent_size, 1, 1): the DCGAN generator's own input layout
    parser = ConfigParser()
    parser.read_config(config("inference"))
    parser.read_meta(config("metadata"))
    assert latent["num_channels"] == parser.get_parsed_content("latent_size")
    items = parser.get_parsed_content("dataset#data")
    assert len(items) == parser.get_parsed_content("num_samples")
    assert items[0]["image"].shape == (latent["num_channels"],)
    out = meta["network_data_format"]["outputs"]["pred"]
    assert out["spatial_shape"] == [parser.get_parsed_content("image_size")] * 2 and out["value_range"] == [-1, 1]
    g = parser.get_parsed_content("network_def")
    z = torch.stack([i["image"] for i in items[:2]])
    assert g.eval()(z).shape == (2, 1, *out["spatial_shape"])


# Every real-data setting with its source, as in the table "Settings and their sources" of docs/README.md:
# (config key, value, source). "thesis" is PPerezdeMadrid/ChestCT-GAN at b80a2c7 (FinalConfig.json, train_pipeline.py,
# generetaDataQuality.py); a change here must change that table too.
THESIS_SETTINGS = [
    ("image_size", 64, "thesis: imsize 64"), ("latent_size", 100, "thesis: nz 100"), ("ngf", 64, "thesis"),
    ("ndf", 128, "thesis"), ("batch_size", 128, "thesis: bsize 128"), ("learning_rate", 1e-4, "thesis: lr 1e-4"),
    ("beta1", 0.7, "thesis: beta1 0.7"), ("max_epochs", 2000, "thesis: FinalConfig nepochs 2000"),
    ("gan", "dcgan", "thesis: DCGAN"), ("label_smoothing", True, "thesis: train_pipeline.py"),
    ("real_label_range", [0.85, 1.0], "thesis: train_pipeline.py"), ("fake_label_range", [0.0, 0.15], "thesis"),
    ("trim", 0.15, "thesis: discard_percentage 0.15"), ("ema_decay", 0.999, "ours"), ("gp_weight", 10.0, "Gulrajani (not verified)"),
]


def test_settings_follow_their_sources():
    """The real-data defaults are those of the docs' "Settings and their sources" table."""
    parser = check_settings_follow_sources(NAME, THESIS_SETTINGS)
    assert parser.get_parsed_content("betas") == [0.7, 0.999]  # thesis: beta1 0.7, beta2 0.999
    assert parser.get_parsed_content("d_train_steps") == 1  # one discriminator step per generator step


def test_latents_are_seeded_or_read_from_a_file(tmp_path):
    from chestzoo.metrics.gan_evaluation import latent_items

    a, b = latent_items(5, 100, seed=3), latent_items(5, 100, seed=3)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert not torch.equal(a[0]["image"], latent_items(5, 100, seed=4)[0]["image"])
    np.save(tmp_path / "z.npy", np.ones((3, 100), np.float32))
    assert [float(i["image"].sum()) for i in latent_items(0, 100, latents_file=str(tmp_path / "z.npy"))] == [100.0] * 3
    with pytest.raises(ValueError, match="latent vectors of shape"):
        latent_items(0, 64, latents_file=str(tmp_path / "z.npy"))


# --- outputs of the harness's runs ----------------------------------------------------------------------------


def test_training_outputs(bundle_outputs):
    out, ckpt = bundle_outputs["output_dir"], bundle_outputs["ckpt_dir"]
    history = json.load(open(os.path.join(out, "train_history.json")))
    assert [h["epoch"] for h in history] == list(range(1, RUN.test["max_epochs"] + 1))
    for key in ("D loss", "G loss", "D accuracy real", "D accuracy fake", "G fooling rate"):
        assert key in history[-1]
    assert os.path.isfile(os.path.join(out, "02_training_curves.png"))
    checkpoint = torch.load(os.path.join(ckpt, "checkpoint_final.pt"), map_location="cpu", weights_only=False)
    assert {"generator", "generator_ema", "discriminator", "g_optimizer", "d_optimizer", "trainer"} <= set(checkpoint)
    model = torch.load(os.path.join(ckpt, "model.pt"), map_location="cpu", weights_only=True)
    assert all(torch.equal(model[k], checkpoint["generator_ema"][k]) for k in model)  # model.pt is the averaged generator


def test_evaluation_report(bundle_outputs):
    out = bundle_outputs["output_dir"]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    summary = metrics["summary"]
    for key in ("FD", "FD untrained G", "FD untrained / trained", "diversity ratio", "NN distance ratio",
                "D accuracy real", "D accuracy fake", "G fooling rate", "D AUC"):
        assert isinstance(summary[key], float) and np.isfinite(summary[key]), key
    assert summary["FD"] >= 0 and 0 <= summary["D AUC"] <= 1
    assert metrics["counts"]["generated"] == RUN.test["eval_samples"]
    assert metrics["feature_space"]["targets"] == ["regression_target", "class_target"]
    assert metrics["feature_space"]["class_meaning"] == "tumour present"
    for png in ("01_real_vs_generated.png", "03_nearest_training_images.png", "04_untrained_generator.png"):
        assert Image.open(os.path.join(out, png)).size[0] > 100


def test_inference_writes_pngs_grid_and_a_synthetic_dicom_series(bundle_outputs):
    out = bundle_outputs["output_dir"]
    n = RUN.test["num_samples"]
    pngs = sorted(glob.glob(os.path.join(out, "png", "*.png")))
    assert len(pngs) == n and Image.open(pngs[0]).size == (64, 64)
    assert os.path.isfile(os.path.join(out, "samples_grid.png"))
    files = _dicoms(out)
    assert len(files) == n
    headers = [pydicom.dcmread(f) for f in files]
    for k, ds in enumerate(headers):
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert ds.SyntheticData == "YES" and ds.BurnedInAnnotation == "NO" and ds.PatientIdentityRemoved == "YES"
        assert "synthetic" in ds.DerivationDescription.lower() and "SYNTHETIC" in ds.ImageComments
        assert str(ds.PatientName).startswith("SYNTHETIC")
        assert (ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType) == (1, -1024, "HU")
        assert ds.InstanceNumber == k + 1
    assert len({ds.SOPInstanceUID for ds in headers}) == n
    assert len({ds.SeriesInstanceUID for ds in headers}) == 1 and len({ds.StudyInstanceUID for ds in headers}) == 1
    # HU through the modality LUT agree with the PNGs (both from the same generated image, [-1, 1] -> lung window)
    hu = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in headers])
    assert hu.min() >= -1024 and hu.max() <= 150
    grey = np.asarray(Image.open(pngs[0]), dtype=np.float64) / 255.0
    np.testing.assert_allclose(np.maximum(-1350 + 1500 * grey, -1024), hu[0], atol=4.0)
    # ITK (GDCM) reads the same files as one series, in the same order, with the same HU
    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(os.path.join(out, "dicom"))
    (series,) = names.GetSeriesUIDs()
    volume = itk.imread(list(names.GetFileNames(series)), itk.F)
    np.testing.assert_allclose(itk.array_from_image(volume), hu, atol=1e-3)
    assert tuple(volume.GetSpacing())[:2] == pytest.approx((350.0 / 64,) * 2, rel=1e-4)


def test_dicom_uids_are_fresh_and_xrays_are_secondary_captures(tmp_path):
    hu = np.random.default_rng(0).uniform(-1000, 100, (2, 16, 16))
    first = [pydicom.dcmread(p) for p in write_synthetic_series(hu, tmp_path / "a")]
    second = [pydicom.dcmread(p) for p in write_synthetic_series(hu, tmp_path / "b")]
    assert first[0].StudyInstanceUID != second[0].StudyInstanceUID
    assert first[0].SeriesInstanceUID != second[0].SeriesInstanceUID
    assert not {d.SOPInstanceUID for d in first} & {d.SOPInstanceUID for d in second}
    xray = np.linspace(0, 1, 2 * 12 * 20).reshape(2, 12, 20)
    (path, _) = write_synthetic_series(xray, tmp_path / "dx", modality="DX")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.ConversionType == "SYN" and ds.SyntheticData == "YES"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.pixel_array.dtype == np.uint8
    np.testing.assert_allclose(ds.pixel_array / 255.0, xray[0], atol=0.5 / 255 + 1e-9)
    assert itk.array_from_image(itk.imread(path)).squeeze().shape == (12, 20)
    with pytest.raises(ValueError, match="modality"):
        write_synthetic_series(hu, tmp_path / "mr", modality="MR")


def test_generated_values_map_back_through_the_window():
    writer = GeneratedImageWriter(".", intensity_range=intensity_range("ct", [-600, 1500]))
    np.testing.assert_allclose(writer.to_intensity(np.array([-1.0, 0.0, 1.0, 3.0])), [-1350.0, -600.0, 150.0, 150.0])
    xray = GeneratedImageWriter(".", modality="DX", intensity_range=intensity_range("xray"))
    np.testing.assert_allclose(xray.to_intensity(np.array([-1.0, 1.0])), [0.0, 1.0])


# --- data selection -------------------------------------------------------------------------------------------


def test_slice_selection(bundle_dataset, tmp_path):
    items = [
        {"image": "a", "slice_position": 0.0, "box": [], "label": 0},
        {"image": "b", "slice_position": 0.15, "box": [[1, 1, 3, 3]], "label": 1},
        {"image": "c", "slice_position": 0.5, "box": [[1, 1, 3, 3]], "label": 2},
        {"image": "d", "slice_position": 0.9, "box": [], "label": 1},
        {"image": "e", "label": 1},  # an X-ray: no position, never trimmed
    ]
    assert [i["image"] for i in select_items(items, trim=0.15)] == ["b", "c", "e"]
    assert [i["image"] for i in select_items(items, tumour_only="true")] == ["b", "c"]
    assert [i["image"] for i in select_items(items, keep_labels=[1])] == ["b", "d", "e"]
    with pytest.raises(ValueError):
        select_items(items, trim=0.5)
    datalist = os.path.join(bundle_dataset, "datalist.json")
    everything = generator_items(datalist, "training")
    trimmed = generator_items(datalist, "training", trim=0.15)
    tumours = generator_items(datalist, "training", tumour_only=True)
    assert len(tumours) < len(trimmed) < len(everything)
    assert all(0.15 <= i["slice_position"] <= 0.85 for i in trimmed) and all(i["box"] for i in tumours)
    assert display_window(datalist) == [-600.0, 1500.0] and intensity_range("ct", [-600, 1500]) == [-1350.0, 150.0]
    with pytest.raises(DataError, match="no 'training' images left"):
        generator_items(datalist, "training", trim=0.49, tumour_only=True)
    with pytest.raises(DataError, match="no top-level 'labels'|not in the datalist"):
        label_indices(datalist, ["PNEUMONIA"])
    assert center_square(np.zeros((1, 6, 10))).shape == (1, 6, 6) and center_square(np.zeros((1, 9, 4))).shape == (1, 4, 4)


# --- resume, annex, learning ----------------------------------------------------------------------------------


def test_resume_continues_from_the_last_checkpoint(bundle_dataset, tmp_path):
    dirs = {"dataset_dir": bundle_dataset, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    run_config("train", **{**RUN.test, **dirs, "max_epochs": 1})
    wf = run_config("train", **{**RUN.test, **dirs, "max_epochs": 2})
    assert wf.parser.get_parsed_content("resume_from").endswith("checkpoint_final.pt")
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 2 * len(trainer.data_loader)
    history = json.load(open(tmp_path / "eval" / "train_history.json"))
    assert [h["epoch"] for h in history] == [1, 2]


def test_pneumonia_xray_annex(synthetic_data, tmp_path):
    """The same bundle on the pediatric pneumonia folders: X-rays, pneumonia images only, DICOM as secondary capture."""
    root = synthetic_data("pediatric", patients=40, size=64)
    dirs = {"dataset_dir": root, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    annex = {**RUN.test, **dirs, "modality": "xray", "trim": 0.0, "classes": ["PNEUMONIA"]}
    train = run_config("train", **annex)
    items = train.parser.get_parsed_content("train#items")
    assert items and all(i["label"] == 1 for i in items)  # PNEUMONIA is index 1 of the pediatric labels
    run_config("evaluate", **annex)
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert metrics["feature_space"]["targets"] == ["class_target"]  # learnt from NORMAL and PNEUMONIA training images
    assert metrics["feature_space"]["class_meaning"] == "class label"
    run_config("inference", **annex)
    ds = pydicom.dcmread(_dicoms(str(tmp_path / "eval"))[0])
    assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.ConversionType == "SYN"


def test_learning_beats_an_untrained_generator(bundle_dataset, tmp_path):
    dirs = {"dataset_dir": bundle_dataset, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    run_config("train", **{**LEARN, **dirs})
    run_config("evaluate", **{**LEARN, **dirs})
    check_learned(NAME, dirs["output_dir"], bundle_dataset)
    summary = json.load(open(tmp_path / "eval" / "metrics.json"))["summary"]
    assert summary["diversity ratio"] > LEARN_MIN_DIVERSITY, summary  # no mode collapse
    assert summary["NN distance ratio"] > 0.5, summary  # no copying of training slices


def test_untrained_generator_fails_the_learning_check(bundle_dataset, tmp_path):
    """The twin: an untrained generator and discriminator saved as the final checkpoint, evaluated the same way."""
    dirs = {"dataset_dir": bundle_dataset, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval")}
    parser = ConfigParser()
    parser.read_config(config("evaluate"))
    parser.update({**LEARN, **dirs})
    os.makedirs(dirs["ckpt_dir"])
    torch.manual_seed(0)
    untrained = {"generator_ema": parser.get_parsed_content("network_def").state_dict(),
                 "discriminator": parser.get_parsed_content("discriminator").state_dict()}
    torch.save(untrained, os.path.join(dirs["ckpt_dir"], "checkpoint_final.pt"))
    run_config("evaluate", **{**LEARN, **dirs})
    verdicts = learning_verdicts(NAME, dirs["output_dir"], bundle_dataset)
    assert verdicts and not any(v["passed"] for v in verdicts), [v["text"] for v in verdicts]
