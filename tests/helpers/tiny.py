"""Tiny models, their configs and files, as several test modules build them."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CLASS_UNET = {
    "type": "class_unet",
    "num_classes": 3,
    "in_channels": 4,
    "out_channels": 4,
    "sample_size": 4,
    "block_out_channels": [16, 32],
    "cross_attention": [False, True],
    "layers_per_block": 1,
    "attention_heads": 2,
    "cross_attention_dim": 8,
    "norm_groups": 8,
}

# Flags that shrink the bundled cats recipe's U-Net to a test size (4x4 latents of 32 px images).
TINY_LATENT = ["--size", "32", "--channels", "32", "--channel-mult", "1,2", "--attention-levels", "1",
               "--batch-size", "8", "--preview-every", "0", "--mixed-precision", "no", "--no-channels-last",
               "--no-eval"]  # fmt: skip


def save_tiny_clip(folder: Path) -> Path:
    """A randomly initialised CLIP, small, saved as `save_pretrained` writes it, with a real
    CLIP BPE tokenizer over a tiny vocabulary (every byte, alone and word-final)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 520, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513},  # the tokens below
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=16,
    )  # fmt: skip
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    chars = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    return folder


def compvis_vae_shapes(
    ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int = 4, in_channels: int = 3, out_ch: int = 3
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a CompVis ``AutoencoderKL`` (ldm/modules/diffusionmodules/model.py with
    attn_resolutions=[], double_z=True, embed_dim=z_channels), built independently of catdiff."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout, k=3):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, k=1)

    def mid(part, c):
        resnet(f"{part}.mid.block_1", c, c)
        norm(f"{part}.mid.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{part}.mid.attn_1.{proj}", c, c, k=1)
        resnet(f"{part}.mid.block_2", c, c)

    levels = len(ch_mult)
    in_ch_mult = (1, *ch_mult)
    conv("encoder.conv_in", in_channels, ch)
    for i in range(levels):
        block_in = ch * in_ch_mult[i]
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in)
    mid("encoder", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", block_in, 2 * z_channels)

    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", z_channels, block_in)
    mid("decoder", block_in)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", block_in, out_ch)
    conv("quant_conv", 2 * z_channels, 2 * z_channels, k=1)
    conv("post_quant_conv", z_channels, z_channels, k=1)
    return shapes
