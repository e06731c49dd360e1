"""Weight variants on tiny real pipelines: int8 weight-only (torchao) and GGUF Q8_0 files load through the same code
as full-size ones, render within a stated PSNR of the unquantized render, and take measurably fewer bytes; variants
that cannot run here fall back with the reason, or fail the job `unsupported_feature` when pinned; a server
records the variant on every job and shows its plan per id."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from pipelines.acceleration import AccelerationRefused, LoadProfile
from pipelines.base import RenderParams, RenderSpec, Task
from pipelines.flux_kontext import FluxKontextFamily
from pipelines.quantize import parameter_bytes
from pipelines.variants import VARIANTS, why_not_on
from tests.support import ServerProcess, task_when_done

pytest.importorskip("torchao")
pytest.importorskip("gguf")

# Measured on the tiny FLUX.1 Kontext (benchmarks/results/cpu/quant_quality.json): int8 ~58 dB, Q8_0 ~60 dB at
# 64 px and 2 steps. 40 dB is the bound these tests hold them to: far below both, far above what a wrong load gives.
PSNR_BOUND_DB = 40.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(1.0 / mse)


def _render(demo_dir: Path, profile: LoadProfile) -> tuple[np.ndarray, FluxKontextFamily]:
    fam = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32, profile)
    fam.load()
    params = RenderParams(Task.GENERATE, "a red hat", 64, 64, 1, (3,), 2, 2.5, 1.0)
    image = fam.render(RenderSpec(params=params), lambda *_: None, {}).images[0]
    return np.asarray(image, dtype=np.float32) / 255, fam


@pytest.fixture(scope="module")
def plain(demo_dir: Path) -> tuple[np.ndarray, FluxKontextFamily]:
    return _render(demo_dir, LoadProfile())


@pytest.mark.parametrize("variant", ["int8_weight", "gguf_q8_0"])
def test_a_variant_loads_renders_close_to_the_plain_render_and_takes_fewer_bytes(
        demo_dir: Path, plain: tuple[np.ndarray, FluxKontextFamily], variant: str) -> None:
    reference, plain_fam = plain
    image, fam = _render(demo_dir, LoadProfile(variants=(variant,), variant_pinned=True))
    record = fam.applied.record()["quantization"]  # type: ignore[union-attr]
    assert record["variant"] == variant and record["pinned"] and not record["passed_over"]
    assert record["components"]["transformer"] == variant
    assert record["components"]["text_encoder_2"] == "int8_weight"  # GGUF variants: int8 text encoders
    assert _psnr(image, reference) >= PSNR_BOUND_DB
    assert 0.0 < np.abs(image - reference).max()  # it really ran quantized weights
    # Parameter bytes counted on the loaded modules (torchao's tensors by their inner int8 data, GGUF by its blocks).
    transformer, plain_transformer = fam.pipeline("edit").transformer, plain_fam.pipeline("edit").transformer
    assert parameter_bytes(transformer) < 0.6 * parameter_bytes(plain_transformer)
    assert record["weight_bytes"] < plain_fam.applied.record()["quantization"]["weight_bytes"]  # type: ignore[union-attr]
    # The memory model's count from the file headers is within 15% of the loaded modules' bytes.
    estimated = {c.name: c.bytes for c in fam.components(variant)}
    for name in ("transformer", "text_encoder_2"):
        counted = parameter_bytes(getattr(fam.pipeline("edit"), name))
        assert abs(estimated[name] - counted) <= 0.15 * counted, (name, estimated[name], counted)


def test_variants_that_cannot_load_here_fall_back_with_the_reason(demo_dir: Path) -> None:
    # Q4_K files are not in a demo build (the gguf package cannot write K-quants); nf4 needs CUDA.
    _image, fam = _render(demo_dir, LoadProfile(variants=("gguf_q4_k", "nf4", "int8_weight")))
    record = fam.applied.record()["quantization"]  # type: ignore[union-attr]
    assert record["variant"] == "int8_weight" and record["requested"] == "auto"
    assert "gguf_q4_k is read from its own files, which are not here" in record["passed_over"][0]
    assert "nf4 needs an NVIDIA GPU" in record["passed_over"][1]
    pinned = FluxKontextFamily(demo_dir / "flux1-kontext-dev", "cpu", torch.float32,
                               LoadProfile(variants=("gguf_q4_k",), variant_pinned=True))
    with pytest.raises(AccelerationRefused, match="darkroom weights pull --variant gguf_q4_k"):
        pinned.load()


def test_nf4_where_bitsandbytes_runs(demo_dir: Path) -> None:
    reason = why_not_on(VARIANTS["nf4"], None if not torch.cuda.is_available() else (8, 0))
    if not torch.cuda.is_available():
        pytest.skip(f"nf4 not tested here: {reason}")
    pytest.importorskip("bitsandbytes")
    _image, fam = _render(demo_dir, LoadProfile(variants=("nf4",), variant_pinned=True))
    assert fam.applied.record()["quantization"]["variant"] == "nf4"  # type: ignore[union-attr]


# ---- the server ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pinned_server(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[ServerProcess]:
    """Kontext's ids pinned to GGUF Q8_0 in a copy of the config dir; FLUX.2 klein's pinned to nf4 (no CUDA here)."""
    from configs import packaged_dir

    root = tmp_path_factory.mktemp("variants")
    config = root / "config"
    shutil.copytree(packaged_dir(), config, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    accel = config / "acceleration.toml"
    text = accel.read_text().replace('[models."flux-kontext-pro"]\n', '[models."flux-kontext-pro"]\n'
                                     'variant = "gguf_q8_0"\n')
    accel.write_text(text.replace('[models."nano-banana-2"]\n', '[models."nano-banana-2"]\nvariant = "nf4"\n'))
    proc = ServerProcess(root / "data", demo_dir, env={"DARKROOM_CONFIG_DIR": str(config),
                                                       "DARKROOM_MODELS": "flux-kontext-pro,flux-kontext-max,"
                                                                          "nano-banana-2"})
    try:
        proc.wait_listening()
        yield proc
    finally:
        proc.stop()


def _finished(c: httpx.Client, body: dict[str, object]) -> dict[str, Any]:
    return task_when_done(c, c.post("/api/v1/images/generate", json={**body, "celery": True}).json()["task_id"])


def test_the_server_records_the_variant_and_refuses_a_pin_it_cannot_run(pinned_server: ServerProcess) -> None:
    with pinned_server.client() as c:
        done = _finished(c, {"model": "flux-kontext-max", "prompt": "x", "quality": "512",
                             "num_inference_steps": 2})
        assert done["status"] == "completed", done
        quant = done["darkroom"]["runtime"]["acceleration"]["quantization"]  # type: ignore[index]
        assert quant["variant"] == "gguf_q8_0" and quant["pinned"] is True
        assert done["darkroom"]["runtime"]["variant"] == "gguf_q8_0"  # type: ignore[index]

        failed = _finished(c, {"model": "nano-banana-2", "prompt": "x", "num_inference_steps": 1})
        assert failed["status"] == "failed"
        error = failed["error"]
        assert error["code"] == "unsupported_feature" and "nf4 needs an NVIDIA GPU" in error["message"]  # type: ignore[index]
        assert "Traceback" not in str(failed) and "/tmp" not in str(error)

        engine = c.get("/api/v1/engine").json()
        plans = {p["model"]: p for p in engine["workers"][0]["variant_plans"]}
        assert plans["flux-kontext-pro"]["variant"] == "gguf_q8_0" and plans["flux-kontext-pro"]["pinned"]
        assert plans["nano-banana-2"]["variant"] is None and "nf4 needs an NVIDIA GPU" in plans["nano-banana-2"]["why_not"]
        assert engine["workers"][0]["card"] == "CPU"
