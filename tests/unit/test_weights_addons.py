"""Add-on weights (the SDXL IP-Adapter): manifest checks, pull verification, demo readiness."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.packaged import packaged_config
from weights.locate import demo_weights_ready
from weights.manifest import load_manifest
from weights.pull import PullError, verify

MANIFEST = packaged_config().manifest


def test_addons_are_safetensors_only(tmp_path: Path) -> None:
    text = (packaged_config().directory / "manifest.toml").read_text()
    bad = tmp_path / "m.toml"
    bad.write_text(text.replace('"sdxl_models/ip-adapter_sdxl.safetensors",\n    "sdxl_models/image_encoder/config.json"',
                                '"sdxl_models/ip-adapter_sdxl.bin",\n    "sdxl_models/image_encoder/config.json"', 1))
    with pytest.raises(ValueError, match="pickled"):
        load_manifest(bad)


def test_verify_and_readiness_cover_addons(tmp_path: Path, demo_dir: Path) -> None:
    entry = MANIFEST["sdxl-base-1.0"]
    copy = tmp_path / "sdxl"
    shutil.copytree(demo_dir / "sdxl-base-1.0", copy)
    assert demo_weights_ready(copy, entry)
    files = verify(entry, copy)
    assert "ip_adapter/sdxl_models/ip-adapter_sdxl.safetensors" in files
    (copy / "ip_adapter" / "sdxl_models" / "image_encoder" / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(PullError, match="image_encoder/model.safetensors is not a readable safetensors"):
        verify(entry, copy)
    shutil.rmtree(copy / "ip_adapter")
    assert not demo_weights_ready(copy, entry)  # an older demo build without the adapter gets rebuilt
    with pytest.raises(PullError, match="add-on file"):
        verify(entry, copy)


def test_licence_of_what_runs_includes_addons() -> None:
    entry = MANIFEST["sdxl-base-1.0"]
    assert entry.addons[0].repo == "h94/IP-Adapter" and entry.all_commercial
    assert not entry.model_copy(update={"addons": [entry.addons[0].model_copy(update={"commercial_use": False})]}
                                ).all_commercial


def test_a_pulled_variant_is_verified_by_its_header(tmp_path: Path, demo_dir: Path) -> None:
    from weights.pull import verify_variant

    entry = packaged_config().manifest["flux1-kontext-dev"]
    built = demo_dir / entry.name / "variants" / "gguf_q8_0"
    verify_variant(entry, "gguf_q8_0", built)  # the demo build's file, at the manifest's path
    folder = tmp_path / "gguf_q8_0"
    folder.mkdir()
    with pytest.raises(PullError, match="is missing in the download"):
        verify_variant(entry, "gguf_q8_0", folder)
    (folder / entry.variants["gguf_q8_0"].files["transformer"]).write_bytes(b"GGUF-not-really")
    with pytest.raises(PullError, match="not a readable .gguf file"):
        verify_variant(entry, "gguf_q8_0", folder)
