"""The grouped per-row LoRA update on plain torch modules: each row gets only its own adapters, classifier-free
guidance's doubled batch keeps the rows' adapters, fused projections take their thirds, and the original modules
come back after the call. The adapter cache drops the least recently used past its budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipelines.base import AdapterUse, ParamError
from pipelines.lora_runtime import AdapterCache, LayerDelta, LoadedAdapter, adapters_applied


def _adapter(sha: str, layers: dict[str, tuple[int, int]], rank: int, seed: int, factor: float = 1.0
             ) -> LoadedAdapter:
    g = torch.Generator().manual_seed(seed)
    deltas = {name: LayerDelta(torch.randn(rank, i, generator=g), torch.randn(o, rank, generator=g), factor)
              for name, (o, i) in layers.items()}
    return LoadedAdapter(sha, deltas, rank, sum(d.a.numel() + d.b.numel() for d in deltas.values()) * 4)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k, self.to_v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.fused_projections = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_projections:
            return self.to_qkv(x)
        return torch.cat([self.to_q(x), self.to_k(x), self.to_v(x)], dim=-1)

    def fuse(self) -> None:
        self.to_qkv = nn.Linear(8, 24)
        with torch.no_grad():
            self.to_qkv.weight.copy_(torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight]))
            self.to_qkv.bias.copy_(torch.cat([self.to_q.bias, self.to_k.bias, self.to_v.bias]))
        self.fused_projections = True


def _expected(block: Block, x: torch.Tensor, adapter: LoadedAdapter | None, scale: float) -> torch.Tensor:
    out = []
    for name in ("to_q", "to_k", "to_v"):
        y = getattr(block, name)(x)
        if adapter is not None and name in adapter.layers:
            d = adapter.layers[name]
            y = y + scale * d.factor * (x @ d.a.T @ d.b.T)
        out.append(y)
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("fused", [False, True])
def test_each_row_gets_its_own_adapters(fused: bool) -> None:
    torch.manual_seed(0)
    block = Block()
    a = _adapter("a" * 64, {"to_q": (8, 8), "to_v": (8, 8)}, rank=2, seed=1, factor=2.0)
    b = _adapter("b" * 64, {"to_q": (8, 8), "to_k": (8, 8)}, rank=3, seed=2)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        want = [_expected(block, x[0:1], a, 1.0), _expected(block, x[1:2], b, 0.5), _expected(block, x[2:3], None, 0)]
        if fused:
            block.fuse()
        originals = {n: getattr(block, n) for n in ("to_q", "to_k", "to_v", "to_qkv") if hasattr(block, n)}
        per_image = ((AdapterUse(a.sha256, 1.0),), (AdapterUse(b.sha256, 0.5),), ())
        with adapters_applied({"transformer": block}, per_image, {a.sha256: a, b.sha256: b}, "cpu",
                              torch.float32) as applied:
            got = block(x)
            doubled = block(torch.cat([x, x]))  # [uncond rows, cond rows], as true CFG stacks them
            assert applied.adapters == 2 and applied.layers == (1 if fused else 3)
        assert {n: getattr(block, n) for n in originals} == originals  # the model is as it was
    for i in range(3):
        assert torch.allclose(got[i:i + 1], want[i], atol=1e-5), i
        assert torch.allclose(doubled[i:i + 1], want[i], atol=1e-5) and torch.allclose(doubled[3 + i:4 + i],
                                                                                       want[i], atol=1e-5)


def test_a_layer_the_model_lacks_is_a_parameter_error() -> None:
    block = Block()
    wrong = _adapter("c" * 64, {"to_out": (8, 8)}, rank=2, seed=3)
    with pytest.raises(ParamError, match="another model family"), adapters_applied(
            {"transformer": block}, ((AdapterUse(wrong.sha256),),), {wrong.sha256: wrong}, "cpu", torch.float32):
        pass
    shape = _adapter("d" * 64, {"to_q": (8, 16)}, rank=2, seed=4)
    with pytest.raises(ParamError, match="does not fit"), adapters_applied(
            {"transformer": block}, ((AdapterUse(shape.sha256),),), {shape.sha256: shape}, "cpu", torch.float32):
        pass
    assert isinstance(block.to_q, nn.Linear)


def test_the_cache_drops_least_recently_used_past_its_budget() -> None:
    one = _adapter("1" * 64, {"to_q": (8, 8)}, rank=2, seed=1)
    cache = AdapterCache(budget_bytes=one.nbytes * 2)
    for sha in ("1", "2", "3"):
        cache.put("fam", _adapter(sha * 64, {"to_q": (8, 8)}, rank=2, seed=1))
        if sha == "2":
            assert cache.get("1" * 64, "fam") is not None  # used: now the most recent
    assert {k.split(":")[1][0] for k in cache.held()} == {"1", "3"}
    cache.put("fam", _adapter("4" * 64, {"to_q": (8, 8)}, rank=2, seed=1), keep=frozenset({"1" * 64}))
    assert {k.split(":")[1][0] for k in cache.held()} == {"1", "4"}
    assert cache.get("4" * 64, "other-family") is None
