"""The memory planner: arithmetic, the settings search, the command and the auto mode."""

import argparse
import json

import pytest

from comfy_kiwi.errors import InputError
from comfy_kiwi.memory.plan_command import add_plan_parser
from comfy_kiwi.memory.planner import (GiB, dit_sizes, format_plan, latent_tokens, plan,
                                       settings_for_vram)


def test_token_counts_follow_vae_stride_and_patch():
    assert latent_tokens("wan2.2-ti2v-5b", 1280, 704, 81) == 21 * (1280 // 32) * (704 // 32)
    assert latent_tokens("wan2.1-t2v-1.3b", 832, 480, 81) == 21 * (832 // 16) * (480 // 16)
    assert latent_tokens("wan2.2-ti2v-5b", 1280, 704, 81, reference=True) == 22 * 40 * 22
    with pytest.raises(InputError, match="4k\\+1"):
        latent_tokens("wan2.2-ti2v-5b", 1280, 704, 80)
    with pytest.raises(InputError, match="multiples of 32"):
        latent_tokens("wan2.2-ti2v-5b", 1000, 704, 81)
    with pytest.raises(InputError, match="knows"):
        plan("sd15", 512, 512, 1, 8)


def test_dit_sizes_match_the_published_parameter_counts():
    for name, billions in (("wan2.1-t2v-1.3b", 1.3), ("wan2.2-ti2v-5b", 5.0), ("wan2.1-t2v-14b", 14.0)):
        s = dit_sizes(name)
        total = s["block"] * s["layers"] + s["rest"]
        assert abs(total / 1e9 - billions) / billions < 0.15, (name, total)
        assert s["block_linear"] / s["block"] > 0.99          # fp8 covers nearly all block weights


def test_more_vram_needs_fewer_savings():
    big = plan("wan2.2-ti2v-5b", 1280, 704, 81, 24)
    small = plan("wan2.2-ti2v-5b", 1280, 704, 81, 8)
    tiny = plan("wan2.1-t2v-14b", 832, 480, 81, 6)
    assert big.fits and big.settings["block_swap"] == 0 and not big.settings["fp8"]
    assert small.fits and (small.settings["block_swap"] > 0 or small.settings["fp8"])
    assert small.stages[2].peak <= 8 * GiB < big.stages[2].peak + 1 * GiB
    assert tiny.settings["fp8"] and tiny.settings["block_swap"] > 0
    text = format_plan(small)
    for stage in ("encode", "VAE encode", "DiT sampling", "VAE decode", "never built", "B/token"):
        assert stage in text
    impossible = plan("wan2.1-t2v-14b", 1280, 704, 81, 1)
    assert not impossible.fits and "DOES NOT FIT" in format_plan(impossible)


def test_cfg_doubles_dit_activations_and_fixed_choices_are_kept():
    one = plan("wan2.2-ti2v-5b", 832, 480, 49, 48)
    two = plan("wan2.2-ti2v-5b", 832, 480, 49, 48, cfg=True)
    assert two.stages[2].peak > one.stages[2].peak
    fixed = plan("wan2.2-ti2v-5b", 832, 480, 49, 48, block_swap=10, fp8=True)
    assert fixed.settings["block_swap"] == 10 and fixed.settings["fp8"]


def test_auto_mode_and_command(capsys):
    s = settings_for_vram("wan2.2-ti2v-5b", 1280, 704, 81, 10)
    assert set(s) >= {"fp8", "block_swap", "vae_tiling", "offload_encoder", "fits", "peak_gb"}
    parser = argparse.ArgumentParser()
    add_plan_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["plan", "--model", "wan2.2-ti2v-5b", "--size", "1280x704", "--frames", "81",
                              "--vram", "12", "--json"])
    assert args.run(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [st["name"].split(" (")[0] for st in data["stages"]] == ["encode", "VAE encode", "DiT sampling",
                                                                     "VAE decode"]
    bad = parser.parse_args(["plan", "--model", "wan2.2-ti2v-5b", "--size", "big", "--vram", "12"])
    with pytest.raises(InputError, match="WIDTHxHEIGHT"):
        bad.run(bad)


def test_block_swap_for_a_loaded_model():
    from comfy_kiwi.memory.planner import block_swap_for
    from comfy_kiwi.models.wan_config import preset
    cfg = preset("wan2.2-ti2v-5b")
    assert block_swap_for(cfg, (1, 48, 21, 44, 80), 24) == 0
    assert 0 < block_swap_for(cfg, (1, 48, 21, 44, 80), 8) <= 30
    with pytest.raises(InputError, match="by hand"):
        block_swap_for(preset("tiny-wan2.1"), (1, 16, 2, 4, 4), 8)
