"""GGUF variant files for demo weights: the demo's own denoisers written in GGML's block formats, at the paths the
manifest names for the real files, so a pinned GGUF variant loads on demo weights through the same code as on
real ones.

The `gguf` package writes the legacy block formats (Q8_0, Q5_0, Q4_0) but not the K-quants, so a demo folder has
the Q8_0 variants only; Q5_K/Q4_K on demo weights are reported as "not here" (and fall back) like any variant whose
files were not pulled. Tensors are written under diffusers' own names (the loader's key conversion for the
original layouts assumes full-size widths).
"""

from __future__ import annotations

import json
from pathlib import Path

from weights.locate import LOCK_FILE as LOCK
from weights.manifest import VARIANTS_FOLDER, WeightsEntry
from weights.variant_bytes import quantizable

WRITABLE = ("Q8_0", "Q5_0", "Q4_0")


def demo_variant_names(entry: WeightsEntry) -> list[str]:
    """The entry's from-files variants a demo build writes."""
    from pipelines.variants import VARIANTS

    return [name for name in entry.variants if VARIANTS[name].gguf_type in WRITABLE]


def write_gguf(state: dict[str, object], path: Path, quant_type: str) -> None:
    """Write a state dict as GGUF: linear weights whose rows fill whole blocks in `quant_type`, the rest F32."""
    import gguf
    import numpy as np

    qtype = getattr(gguf.GGMLQuantizationType, quant_type)
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="darkroom-demo")
    for name, tensor in state.items():
        array = tensor.float().numpy()  # type: ignore[attr-defined]
        if quantizable(name, array.shape) and array.shape[-1] % block == 0:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build_demo_variants(entry: WeightsEntry, folder: Path) -> None:
    """Write `entry`'s writable GGUF variants from the demo denoisers in `folder` (a finished demo build)."""
    names = demo_variant_names(entry)
    if not names:
        return
    import diffusers
    import torch

    from pipelines.variants import VARIANTS

    index = json.loads((folder / "model_index.json").read_text())
    for name in names:
        files = entry.variants[name].files
        target = folder / VARIANTS_FOLDER / name
        for component, rel in files.items():
            cls = getattr(diffusers, index[component][1])
            module = cls.from_pretrained(folder, subfolder=component, torch_dtype=torch.float32)
            write_gguf(module.state_dict(), target / rel, VARIANTS[name].gguf_type or "Q8_0")
        (target / LOCK).write_text(json.dumps({"demo": True, "variant": name, "components": files}, indent=2))


def demo_variants_ready(folder: Path, entry: WeightsEntry) -> bool:
    """Whether a demo build has the variant files this code writes (older builds lack them)."""
    return all((folder / VARIANTS_FOLDER / name / LOCK).is_file() for name in demo_variant_names(entry))
