"""Labelled digits, the class-conditional U-Net, label dropout and classifier-free guidance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, catdiff, require_shared, write_tiny_model
from helpers.digits import make_digits_folder
from helpers.tiny import TINY_CLASS_UNET

from catdiff.autoencoders import Autoencoder
from catdiff.data.digits import Digits, is_digits_folder, split_digits
from catdiff.data.latent_cache import LatentCache, encode_folder
from catdiff.diffusion.conditioning import ClassifierFreeGuidance, drop_labels
from catdiff.errors import UserError
from catdiff.io.checkpoints import read_weights, write_model_folder
from catdiff.models import NULL_CLASS, ClassUNet, build_model, model_config
from catdiff.pipeline import Pipeline, load_network, pipeline_folder
from catdiff.training.trainer import TrainConfig, Trainer

TINY_AUTOENCODER = {
    "type": "autoencoder_kl",
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 8, 8],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_groups": 4,
}


def tiny_trainer(run_dir: Path, latents: torch.Tensor, labels: torch.Tensor | None, **options) -> Trainer:
    config = TrainConfig(model=dict(TINY_CLASS_UNET), batch_size=4, max_steps=4, checkpoint_every=2, flip=False)
    config.preview_every, config.warmup_steps = 0, 1
    for name, value in options.items():
        setattr(config, name, value)
    return Trainer(config, latents, run_dir, data_info={}, labels=labels)


# --- data ---------------------------------------------------------------------------------------


def test_digits_folder_reads_pads_and_splits_reproducibly(tmp_path: Path) -> None:
    root = make_digits_folder(tmp_path / "digits")
    digits = Digits.from_folder(root)
    assert is_digits_folder(root) and not is_digits_folder(tmp_path)
    assert digits.images.shape == (24, 1, 32, 32) and digits.images.dtype == torch.uint8
    assert digits.images[:, :, :2].max() == 0 and digits.labels.tolist() == [i % 3 for i in range(24)]
    train, heldout = split_digits(root, tmp_path / "a", heldout=5)
    again = split_digits(root, tmp_path / "b", heldout=5)
    assert torch.equal(Digits.from_folder(heldout).images, Digits.from_folder(again[1]).images)
    assert len(Digits.from_folder(train)) == 19 and len(Digits.from_folder(heldout)) == 5


def test_a_truncated_idx_file_is_a_user_error(tmp_path: Path) -> None:
    root = make_digits_folder(tmp_path / "digits")
    images = root / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:50])
    with pytest.raises(UserError, match="cannot read IDX file"):
        Digits.from_folder(root)


def test_the_latent_cache_keeps_the_labels(tmp_path: Path) -> None:
    digits = Digits.from_folder(make_digits_folder(tmp_path / "digits", n=10))
    autoencoder = Autoencoder(build_model(TINY_AUTOENCODER).eval())
    out = encode_folder(
        digits, autoencoder.encode, tmp_path / "cache", autoencoder=autoencoder.descriptor(), source="x", flip=False,
        shard_size=4,
    )  # fmt: skip
    cache = LatentCache.open(out)
    assert cache.latents.shape == (10, 4, 8, 8) and cache.flipped is None
    assert torch.equal(cache.labels, digits.labels)
    assert cache.manifest["num_classes"] == digits.num_classes
    assert cache.manifest["files"] == digits.files_digest() != digits.subset(torch.arange(9)).files_digest()


# --- training -----------------------------------------------------------------------------------


def test_label_dropout_rate_and_its_draws() -> None:
    labels = torch.randint(0, 10, (100_000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(labels, 0.1, NULL_CLASS, torch.Generator().manual_seed(1))
    assert abs((dropped == NULL_CLASS).float().mean().item() - 0.1) < 0.005
    kept = dropped != NULL_CLASS
    assert torch.equal(dropped[kept], labels[kept])
    assert torch.equal(dropped, drop_labels(labels, 0.1, NULL_CLASS, torch.Generator().manual_seed(1)))


def test_labels_reach_the_network_and_a_resumed_run_is_exact(tmp_path: Path) -> None:
    latents = torch.randn(12, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(12) % 3
    batch = tiny_trainer(tmp_path / "probe", latents, labels, label_dropout=0.5).batch(0)
    given = batch[-1]
    assert len(batch) == 4 and (given == NULL_CLASS).any() and (given != NULL_CLASS).any()

    straight = tiny_trainer(tmp_path / "straight", latents, labels)
    straight.fit()
    first = tiny_trainer(tmp_path / "resumed", latents, labels, max_steps=2)
    first.fit()
    second = tiny_trainer(tmp_path / "resumed", latents, labels)
    assert second.resume() and second.step == 2
    second.fit()
    for name in ("step-0000004",):
        a = read_weights(tmp_path / "straight" / "checkpoints" / name)
        b = read_weights(tmp_path / "resumed" / "checkpoints" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)

    other_labels = tiny_trainer(tmp_path / "other", latents, (labels + 1) % 3)
    other_labels.fit()
    c = read_weights(tmp_path / "other" / "checkpoints" / "step-0000004")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_class_conditional_model_needs_labels_in_range(tmp_path: Path) -> None:
    latents = torch.randn(8, 4, 4, 4)
    with pytest.raises(UserError, match="labelled data"):
        tiny_trainer(tmp_path / "a", latents, None)
    with pytest.raises(UserError, match="0 .. 2"):
        tiny_trainer(tmp_path / "b", latents, torch.arange(8))


# --- the model and guidance ---------------------------------------------------------------------


def test_class_unet_round_trips_through_a_model_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = build_model(TINY_CLASS_UNET).eval()
    assert isinstance(network, ClassUNet)
    write_model_folder(tmp_path / "m", {"model": model_config(network)}, network.state_dict())
    loaded, _ = load_network(tmp_path / "m", ema=True)
    x, t, labels = torch.randn(3, 4, 4, 4), torch.tensor([10.0, 500.0, 999.0]), torch.tensor([0, 2, NULL_CLASS])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, labels), network(x, t, labels))
        assert torch.equal(network(x, t), network(x, t, torch.full((3,), NULL_CLASS)))


def test_guidance_mixes_the_conditional_and_unconditional_predictions() -> None:
    torch.manual_seed(0)
    network = build_model(TINY_CLASS_UNET).eval()
    x, t, labels = torch.randn(2, 4, 4, 4), torch.tensor([100.0, 700.0]), torch.tensor([1, 2])
    null = torch.full_like(labels, NULL_CLASS)
    with torch.no_grad():
        conditional, unconditional = network(x, t, labels), network(x, t, null)
        assert torch.equal(ClassifierFreeGuidance(network, labels, null, 1.0)(x, t), conditional)
        guided = ClassifierFreeGuidance(network, labels, null, 3.0)(x, t)
        torch.testing.assert_close(guided, unconditional + 3 * (conditional - unconditional), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ClassifierFreeGuidance(network, labels, null, 0.0)(x, t), unconditional)


# --- sampling and the command line --------------------------------------------------------------


@pytest.fixture(scope="module")
def class_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = write_tiny_model(tmp_path_factory.mktemp("models") / "class", TINY_CLASS_UNET, [4, 4, 4], "v")
    out = tmp_path_factory.mktemp("pipelines") / "class"
    result = catdiff("export", str(model), "--out", str(out), "--steps", "3", "--guidance", "2.5")
    assert result.returncode == 0, result.stderr
    return out


def test_generate_a_class_with_guidance(class_pipeline: Path, tmp_path: Path) -> None:
    assert Pipeline.from_folder(class_pipeline).guidance == 2.5
    for name in ("a.png", "b.png"):
        result = catdiff("generate", "--model", str(class_pipeline), "--class", "2", "--guidance", "3", "--n", "2",
                         "--out", str(tmp_path / name))  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--class", "3"], ["class", "between 0 and 2", "3"]),
        (["--class", "1", "--guidance", "-1"], ["guidance", "between 0 and 30"]),
    ],
)
def test_bad_class_or_guidance(class_pipeline: Path, tmp_path: Path, flags: list[str], words: list[str]) -> None:
    result = catdiff("generate", "--model", str(class_pipeline), "--out", str(tmp_path / "x.png"), *flags)
    assert_one_line_error(result, *words)


@pytest.mark.parametrize("flags", [["--class", "1"], ["--guidance", "2"]])
def test_an_unconditional_model_refuses_class_and_guidance(
    pipeline_dir: Path, tmp_path: Path, flags: list[str]
) -> None:
    result = catdiff("generate", "--model", str(pipeline_dir), "--out", str(tmp_path / "x.png"), *flags)
    assert_one_line_error(result, "unconditional")


def test_guidance_is_part_of_the_condition_not_a_sampler_option(class_pipeline: Path, pipeline_dir: Path) -> None:
    pipeline = Pipeline.from_folder(class_pipeline)
    with pytest.raises(UserError, match="unknown option 'guidance' for sampler ddim"):
        pipeline.sample(1, steps=2, sampler="ddim", sampler_options={"guidance": 2.0})
    for guidance in (float("nan"), float("inf"), -1.0):
        with pytest.raises(UserError, match="guidance must be between 0 and 30"):
            pipeline.class_condition([1], guidance)
    with pytest.raises(UserError, match="not class-conditional"):
        Pipeline.from_folder(pipeline_dir).class_condition([1], 2.0)


# --- the bundled model --------------------------------------------------------------------------


def test_bundled_digits_model_is_small_fp16_and_deterministic() -> None:
    folder = pipeline_folder("digits")
    assert {t.dtype for t in read_weights(folder / "unet").values()} == {torch.float16}
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= 12 * 2**20
    pipeline = Pipeline.from_folder(folder)
    assert pipeline.num_classes == 10 and pipeline.guidance > 1
    options = {"condition": pipeline.class_condition([3, 7]), "steps": 4, "sampler": "dpmpp_2m", "seed": 5}
    first, second = pipeline.sample(2, **options), pipeline.sample(2, **options)
    assert first.shape == (2, 1, 32, 32)
    assert torch.equal(first, second)


def test_mnist_t10k_reads_as_10000_labelled_digits() -> None:
    digits = Digits.from_folder(require_shared("data/mnist-t10k"))
    assert digits.images.shape == (10_000, 1, 32, 32)
    assert digits.labels.bincount().tolist()[:3] == [980, 1135, 1032]
