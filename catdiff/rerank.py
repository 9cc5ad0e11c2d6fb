"""Scorers for best-of-N: images in, one score per image out (higher is better).

- :class:`CLIPScorer`: cosine similarity of an image to a prompt in CLIP's joint embedding
  (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
  Supervision"), from a local CLIP in transformers' or open_clip's format (the latter converted
  into transformers' model, so open_clip itself is not needed). Never downloads.
- :class:`TypicalityScorer`: needs no external weights. It scores how typical an image's
  features (the bundled TAESD encoder's, :class:`catdiff.metrics.TAESDFeatures`) are of the
  training images: minus the Mahalanobis distance to their Gaussian fit, the per-image term of
  the Fréchet distance.
- :class:`NeighbourScorer`: needs no external weights either. Minus the mean distance of an
  image's TAESD latents to its k nearest training images' (the k-NN density estimate of
  Loftsgaarden & Quesenberry 1965, used as a per-sample realism measure by Kynkäänniemi et al.
  2019): spatial layout counts, so a face whose eyes sit where real faces have them scores high.
  It favours samples close to training images, so check memorisation alongside it.
- :class:`EigenScorer`, the default: minus the Mahalanobis distance within the training images'
  top principal components at 32 px (eigenfaces). Against a person's labels of the bundled
  model's samples it is the one of the three that agrees better than chance (ROC AUC 0.67 on a
  fresh labelled set; ``bench/scorer_agreement.py``, docs/MODEL_CARD.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from catdiff.errors import UserError
from catdiff.io.atomic import write_bytes
from catdiff.io.json_files import read_json
from catdiff.io.open_clip_keys import OPEN_CLIP_WEIGHTS, clip_config_from_open_clip, clip_state_from_open_clip
from catdiff.io.state_dicts import load_state_strict, read_state_file
from catdiff.io.taesd import load_taesd
from catdiff.metrics import TAESDFeatures, batches, resize
from catdiff.models.taesd import TAESD
from catdiff.realism import REALISM_FILE, RealismScorer
from catdiff.sd.tokenizer import CLIPTokenizer, clip_vocabulary

DEFAULT_PROMPT = "a photo of a cat"
TYPICALITY_FILE = "typicality.safetensors"
NEIGHBOURS_FILE = "neighbours.safetensors"
EIGEN_FILE = "eigen.safetensors"
# CLIP's image normalisation (OpenAI's preprocessing, also open_clip's default)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Scorer(Protocol):
    """Images float NCHW in [-1, 1] -> scores ``[N]``; higher is better."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


def first_line(error: BaseException) -> str:
    """The first line of an error's message (third-party loaders write paragraphs)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def clip_pixels(images: Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """CLIP's preprocessing on tensors: bicubic resize of the shorter side to ``size`` (the
    longer one truncated, as CLIP's processors do), centre crop, per-channel normalisation."""
    images = (images.float().clamp(-1, 1) + 1) / 2
    h, w = images.shape[-2:]
    shape = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    resized = F.interpolate(images, size=shape, mode="bicubic", antialias=True)
    top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
    crop = resized[..., top : top + size, left : left + size].clamp(0, 1)
    return (crop - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class CLIPScorer:
    """Cosine similarity between each image and a text prompt in CLIP's embedding space."""

    name = "clip"

    def __init__(
        self,
        encode_image: nn.Module,
        text_embedding: Tensor,
        *,
        image_size: int,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
        batch_size: int = 16,
    ) -> None:
        self.encode_image = encode_image
        self.text_embedding = F.normalize(text_embedding.float().reshape(1, -1), dim=-1)
        self.image_size, self.mean, self.std, self.batch_size = image_size, mean, std, batch_size

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        scores = []
        for batch in batches(images, self.batch_size):
            pixels = clip_pixels(batch, self.image_size, self.mean, self.std)
            embedding = F.normalize(self.encode_image(pixels).float(), dim=-1)
            scores.append((embedding @ self.text_embedding.T).squeeze(-1))
        return torch.cat(scores)

    @classmethod
    def from_pretrained(cls, path: str | Path, prompt: str = DEFAULT_PROMPT) -> CLIPScorer:
        """A CLIP from a local folder: transformers' ``save_pretrained`` layout (``config.json``
        with ``model_type`` "clip", weights, tokenizer files), or open_clip's
        (``open_clip_config.json`` + ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``)."""
        folder = Path(path)
        if not folder.is_dir():
            raise UserError(f"CLIP model not found: {folder} (give a local folder; nothing is downloaded)")
        if (folder / "open_clip_config.json").is_file():
            return cls._from_open_clip(folder, prompt)
        config = folder / "config.json"
        if not config.is_file() or read_json(config, what="CLIP config").get("model_type") != "clip":
            raise UserError(f"not a CLIP model folder: {folder} (needs transformers' or open_clip's files)")
        return cls._from_transformers(folder, prompt)

    @classmethod
    def _from_transformers(cls, folder: Path, prompt: str) -> CLIPScorer:
        _, model_class, tokenizer_class = _transformers_clip()
        try:
            model = model_class.from_pretrained(folder, local_files_only=True).eval()
            tokenizer = tokenizer_class.from_pretrained(folder, local_files_only=True)
        except Exception as error:  # a third party's loader, refusing the folder's files in its own ways
            raise UserError(f"cannot load CLIP from {folder}: {first_line(error)}") from None
        tokens = tokenizer([prompt], padding="max_length", truncation=True, return_tensors="pt")
        return cls._of_model(model, tokens["input_ids"], tokens["attention_mask"])

    @classmethod
    def _from_open_clip(cls, folder: Path, prompt: str) -> CLIPScorer:
        """An open_clip folder, converted into transformers' ``CLIPModel``
        (:mod:`catdiff.io.open_clip_keys`): no open_clip import. The prompt is tokenized with the
        folder's tokenizer files if it has them, else with OpenAI's vocabulary, as open_clip does."""
        config_class, model_class, _ = _transformers_clip()
        config_file = folder / "open_clip_config.json"
        settings = read_json(config_file, what="open_clip config")
        model_cfg = settings.get("model_cfg")
        if not isinstance(model_cfg, dict):
            raise UserError(f"{config_file} has no model_cfg (the open_clip layout of push_to_hf_hub)")
        weights = next((folder / n for n in OPEN_CLIP_WEIGHTS if (folder / n).is_file()), None)
        if weights is None:
            raise UserError(f"no open_clip weights in {folder} (expected {' or '.join(OPEN_CLIP_WEIGHTS)})")
        config = clip_config_from_open_clip(model_cfg, config_file)
        text_config, vocabulary = config["text_config"], clip_vocabulary(folder)
        if max(vocabulary.tokens.values()) >= text_config["vocab_size"]:
            raise UserError(f"{folder}: the tokenizer's vocabulary is larger than the model's")
        tokenizer = CLIPTokenizer.from_vocabulary(vocabulary, text_config["max_position_embeddings"])
        text_config.update(bos_token_id=tokenizer.start_id, eos_token_id=tokenizer.end_id)
        try:
            model = model_class(config_class(**config)).eval()
        except Exception as error:  # transformers' config checks, in their own words
            raise UserError(f"{config_file}: unusable open_clip model config: {first_line(error)}") from None
        load_state_strict(
            model, clip_state_from_open_clip(read_state_file(weights)), weights, what="the open_clip CLIP"
        )
        preprocess = settings.get("preprocess_cfg", {})
        mean, std = tuple(preprocess.get("mean", CLIP_MEAN)), tuple(preprocess.get("std", CLIP_STD))
        return cls._of_model(model, tokenizer([prompt]), None, mean=mean, std=std)

    @classmethod
    def _of_model(
        cls,
        model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        mean: tuple[float, ...] = CLIP_MEAN,
        std: tuple[float, ...] = CLIP_STD,
    ) -> CLIPScorer:
        """The scorer of a transformers ``CLIPModel`` and the prompt's tokens."""
        with torch.inference_mode():
            text = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        image_size = model.config.vision_config.image_size
        return cls(_TransformersImageEncoder(model), _features(text), image_size=image_size, mean=mean, std=std)


def _transformers_clip() -> tuple[type, type, type]:
    """transformers' ``CLIPConfig``, ``CLIPModel`` and ``CLIPTokenizer``, or a one-line error naming the extra."""
    try:
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    except ImportError:
        raise UserError('the CLIP scorer needs transformers: pip install "catdiff[clip]"') from None
    return CLIPConfig, CLIPModel, CLIPTokenizer


def _features(output: Tensor | object) -> Tensor:
    """The embedding tensor of a ``get_*_features`` call (a tensor, or a model output holding it)."""
    return output if isinstance(output, Tensor) else output.pooler_output  # type: ignore[attr-defined]


class _TransformersImageEncoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> Tensor:
        return _features(self.model.get_image_features(pixel_values=pixels))


def save_statistics(folder: Path, file: str, statistics: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> Path:
    """Write a scorer's reference statistics into a pipeline folder."""
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes(folder / file, safetensors_bytes({k: v.to(dtype).contiguous() for k, v in statistics.items()}))
    return folder / file


def load_statistics(folder: Path, file: str, what: str) -> dict[str, Tensor]:
    """A scorer's reference statistics, or a one-line error naming how to make them."""
    if not (folder / file).is_file():
        raise UserError(f"no {what} in {folder} (export it with --reference-images)")
    return load_file(folder / file)


class TypicalityScorer:
    """Minus the Mahalanobis distance of an image's TAESD features to those of the training
    images (a Gaussian fit: mean and covariance, shrunk towards its diagonal for stability)."""

    name = "typicality"

    def __init__(self, mean: Tensor, covariance: Tensor, features: nn.Module | None = None) -> None:
        self.features = features or TAESDFeatures()
        self.mean, self.covariance = mean.double(), covariance.double()
        self.precision = torch.linalg.inv(self.covariance)

    @classmethod
    def fit(cls, images: Tensor, *, shrinkage: float = 0.1, batch_size: int = 64) -> TypicalityScorer:
        """Fit the feature Gaussian to reference images (float NCHW in [-1, 1])."""
        features = TAESDFeatures()
        f = torch.cat([features(batch) for batch in batches(images, batch_size)]).double()
        covariance = f.T.cov()
        covariance = (1 - shrinkage) * covariance + shrinkage * torch.diag(covariance.diagonal())
        return cls(f.mean(0), covariance, features)

    def save(self, folder: Path) -> Path:
        return save_statistics(folder, TYPICALITY_FILE, {"mean": self.mean, "covariance": self.covariance})

    @classmethod
    def load(cls, folder: Path) -> TypicalityScorer:
        return cls(**load_statistics(folder, TYPICALITY_FILE, "typicality statistics"))

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        f = torch.cat([self.features(batch) for batch in batches(images, 64)]).double() - self.mean
        return -((f @ self.precision) * f).sum(-1).sqrt().float()


@torch.inference_mode()
def taesd_latents(images: Tensor, taesd: TAESD, size: int) -> Tensor:
    """Flattened TAESD latents of images (float NCHW in [-1, 1]) resampled to ``size`` pixels."""
    return torch.cat([taesd.encode_latents((resize(b, size) + 1) / 2) for b in batches(images, 64)]).flatten(1)


class NeighbourScorer:
    """Minus the mean Euclidean distance to the ``k`` nearest reference latents (TAESD, 128 px)."""

    name = "neighbours"
    SIZE = 128  # images are encoded at this side: 16x16x4 latents

    def __init__(self, references: Tensor, *, k: int = 5, taesd: TAESD | None = None) -> None:
        self.references = references.flatten(1).float()
        self.k = min(k, len(self.references))
        self.taesd = taesd or load_taesd()

    @classmethod
    def fit(cls, images: Tensor, *, k: int = 5) -> NeighbourScorer:
        """Keep the latents of reference images (float NCHW in [-1, 1])."""
        taesd = load_taesd()
        return cls(taesd_latents(images, taesd, cls.SIZE), k=k, taesd=taesd)

    def save(self, folder: Path) -> Path:
        return save_statistics(folder, NEIGHBOURS_FILE, {"references": self.references}, torch.float16)

    @classmethod
    def load(cls, folder: Path) -> NeighbourScorer:
        return cls(**load_statistics(folder, NEIGHBOURS_FILE, "reference latents"))

    def __call__(self, images: Tensor) -> Tensor:
        distances = torch.cdist(taesd_latents(images, self.taesd, self.SIZE), self.references)
        return -distances.topk(self.k, dim=1, largest=False).values.mean(1)


class EigenScorer:
    """Minus the Mahalanobis distance of an image, at 32 px, within the principal subspace of
    the training images: the "distance in feature space" of eigenfaces (Turk & Pentland 1991;
    Moghaddam & Pentland 1997). How far the image's coarse layout and colours are from what the
    training images vary along, in units of their spread."""

    name = "eigen"
    SIZE = 32
    COMPONENTS = 50

    def __init__(self, mean: Tensor, components: Tensor, variances: Tensor) -> None:
        self.mean, self.components, self.variances = mean.double(), components.double(), variances.double()

    @classmethod
    def fit(cls, images: Tensor, *, components: int = COMPONENTS) -> EigenScorer:
        """Principal components of reference images (float NCHW in [-1, 1])."""
        x = resize(images, cls.SIZE).flatten(1).double()
        mean = x.mean(0)
        _, singular_values, basis = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(components, len(basis))
        return cls(mean, basis[:k], singular_values[:k] ** 2 / (len(x) - 1))

    def save(self, folder: Path) -> Path:
        statistics = {"mean": self.mean, "components": self.components, "variances": self.variances}
        return save_statistics(folder, EIGEN_FILE, statistics)

    @classmethod
    def load(cls, folder: Path) -> EigenScorer:
        return cls(**load_statistics(folder, EIGEN_FILE, "principal components"))

    def __call__(self, images: Tensor) -> Tensor:
        coordinates = (resize(images, self.SIZE).flatten(1).double() - self.mean) @ self.components.T
        return -(coordinates.square() / self.variances).sum(1).sqrt().float()


#: Scorers whose statistics a pipeline folder stores (``catdiff export --reference-images``), by name.
STORED_SCORERS: dict[str, Callable[[Path], Scorer]] = {
    "typicality": TypicalityScorer.load,
    "neighbours": NeighbourScorer.load,
    "eigen": EigenScorer.load,
    "realism": RealismScorer.load,
}
#: The files of a pipeline folder that hold scorer statistics or weights.
STORED_FILES = (TYPICALITY_FILE, NEIGHBOURS_FILE, EIGEN_FILE, REALISM_FILE)
SCORERS = (*STORED_SCORERS, "clip")
DEFAULT_SCORER = "eigen"  # measured against a person's labels (docs/MODEL_CARD.md)


def load_scorer(
    kind: str = DEFAULT_SCORER, *, pipeline: Path, clip_model: Path | None = None, prompt: str = DEFAULT_PROMPT
) -> Scorer:
    """A scorer by name: one of :data:`STORED_SCORERS` from a pipeline folder, or ``"clip"`` (a local CLIP)."""
    if kind in STORED_SCORERS:
        return STORED_SCORERS[kind](pipeline)
    if kind == "clip":
        if clip_model is None:
            raise UserError("the clip scorer needs --clip-model PATH (a local CLIP folder; nothing is downloaded)")
        return CLIPScorer.from_pretrained(clip_model, prompt)
    raise UserError(f"unknown scorer {kind!r}; choose one of {', '.join(SCORERS)}")


def fit_reference_scorers(images_folder: Path, pipeline_folder: Path, *, at_most: int = 2000) -> None:
    """Fit the typicality, neighbours and eigen scorers to (about ``at_most``, evenly spaced) training
    images and store their statistics in a pipeline folder."""
    from catdiff.data.image_folder import ImageFolder, uint8_to_float

    images = ImageFolder(images_folder, NeighbourScorer.SIZE, preload=True).images
    references = uint8_to_float(images[:: max(1, len(images) // at_most)])
    for scorer in (TypicalityScorer, NeighbourScorer, EigenScorer):  # the classes of STORED_SCORERS
        scorer.fit(references).save(pipeline_folder)
