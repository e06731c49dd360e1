"""The variant planner on the card profiles (configs/cards.toml) with the packaged line-up's full-size bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.variants import QUALITY_FLOORS, VARIANTS, meets_floor, why_not_on
from server.config import DarkroomConfig
from server.engine.policy import GB, ModelFootprint, Placement
from server.engine.variant_plan import VariantOption, card_for, plan_variants
from server.engine.variant_setup import card_table, full_size_options
from weights.manifest import load_manifest
from weights.variant_bytes import quantizable

CONFIG = DarkroomConfig.packaged()
CARDS = CONFIG.cards


def _table(card: str) -> dict[str, dict[str, object]]:
    return {row.model_id: row.describe() | {"quality": VARIANTS[row.describe()["variant"]].quality
                                            if row.describe()["variant"] else None}
            for row in card_table(CONFIG, CARDS[card])}


def test_every_id_of_the_line_up_runs_on_one_24_gb_card() -> None:
    table = _table("rtx4090")
    assert set(table) == set(CONFIG.catalog.ids()) | set(CONFIG.catalog.video_ids())
    for model_id, row in table.items():
        assert row["variant"] is not None, (model_id, row["why_not"])
        assert row["peak_gb"] <= 22.0, row  # type: ignore[operator]
        assert row["seconds"] and row["seconds"] > 0  # type: ignore[operator]
    # Wan 2.2 A14B at 720p x 81 frames needs more than a 24 GB card's activations: it is planned at 480p.
    assert table["sora-2-pro"]["tier"] == "480p"
    assert all(row["tier"] is None for m, row in table.items() if m != "sora-2-pro")


@pytest.mark.parametrize("card", ["rtx4090", "rtx5090", "rtx6000-ada", "a6000", "h100", "h200"])
def test_quality_floors_hold_on_every_card(card: str) -> None:
    for model_id, row in _table(card).items():
        floor = CONFIG.acceleration.quality_floor(CONFIG.catalog.any_spec(model_id).weights)
        assert row["floor"] == floor
        if row["variant"] is not None:
            assert meets_floor(VARIANTS[row["variant"]], floor), (card, model_id, row)  # type: ignore[index]
    # Quality tiers never go below 8-bit; Kontext's fast and quality ids share one load at the stricter floor.
    assert CONFIG.acceleration.quality_floor("flux1-kontext-dev") == "8bit"
    assert CONFIG.acceleration.quality_floor("flux2-klein-4b") == "4bit"


def test_ampere_never_gets_fp8_and_hopper_never_gets_nunchaku() -> None:
    a6000 = card_table(CONFIG, CARDS["a6000"])
    assert all(row.plan.chosen is None or not row.plan.chosen.variant.startswith("fp8") for row in a6000)
    kontext = next(r for r in a6000 if r.model_id == "flux-kontext-max")
    fp8 = next(r for r in kontext.plan.rows if r.variant == "fp8_dynamic")
    assert fp8.why_not and "compute capability >= 8.9" in fp8.why_not
    h100 = card_table(CONFIG, CARDS["h100"])
    kontext = next(r for r in h100 if r.model_id == "flux-kontext-pro")
    four_bit = plan_variants(CARDS["h100"], full_size_options(CONFIG, "flux1-kontext-dev"), "4bit", GB, 10.0, 28)
    svdq = next(r for r in four_bit.rows if r.variant == "svdq_int4")
    assert svdq.why_not and "this GPU is 9.0" in svdq.why_not
    # An 80 GB card keeps Kontext resident; a 24 GB one must offload or quantize.
    assert kontext.plan.chosen is not None and kontext.plan.chosen.placement is Placement.RESIDENT
    small = next(r for r in card_table(CONFIG, CARDS["rtx4090"]) if r.model_id == "flux-kontext-pro")
    assert small.plan.chosen is not None and small.plan.chosen.variant != "bf16"


def test_the_fastest_plan_wins_and_offload_costs_link_seconds() -> None:
    card = CARDS["rtx4090"]
    big = VariantOption("bf16", ModelFootprint("m", (30 * GB, 5 * GB)), 30 * GB)
    small = VariantOption("int8_weight", ModelFootprint("m", (15 * GB, 3 * GB)), 15 * GB)
    plan = plan_variants(card, [big, small], "8bit", 2 * GB, 10.0, 28)
    assert plan.chosen is not None and plan.chosen.variant == "int8_weight"
    assert plan.chosen.placement is Placement.RESIDENT and plan.order[0] == "int8_weight"
    bf16 = next(r for r in plan.rows if r.variant == "bf16")
    assert bf16.placement is Placement.GROUP_OFFLOAD  # 30 GB of denoiser fits neither resident nor model offload
    assert bf16.seconds is not None and plan.chosen.seconds is not None and bf16.seconds > plan.chosen.seconds
    # 28 steps x 30 GB over the card's 22 GB/s link outweigh its compute: group offload is link-bound.
    assert bf16.seconds >= 28 * 30 / card.pcie_gb_per_s
    with pytest.raises(ValueError, match="quality floor"):
        plan_variants(card, [big], "3bit", 0, 1.0, 1)


def test_a_pin_is_alone_in_the_order_even_when_it_cannot_run() -> None:
    options = full_size_options(CONFIG, "flux2-klein-4b")
    plan = plan_variants(CARDS["cpu"], options, "8bit", GB, 1.0, 30, pinned="nf4", installed=frozenset())
    assert plan.chosen is None and plan.order == ("nf4",) and plan.pinned
    nf4 = next(r for r in plan.rows if r.variant == "nf4")
    assert nf4.why_not and "needs an NVIDIA GPU" in nf4.why_not
    auto = plan_variants(CARDS["cpu"], options, "8bit", GB, 1.0, 30, installed=frozenset())
    assert auto.chosen is not None and auto.chosen.variant == "bf16"
    int8 = next(r for r in auto.rows if r.variant == "int8_weight")
    assert int8.why_not and "needs torchao" in int8.why_not


def test_full_size_variant_bytes_shrink_with_bits() -> None:
    options = {o.variant: o.footprint.bytes for o in full_size_options(CONFIG, "flux1-kontext-dev")}
    assert options["bf16"] > options["int8_weight"] > options["gguf_q5_k"] > options["gguf_q4_k"]
    assert 33 * GB < options["bf16"] < 35 * GB and 17 * GB < options["int8_weight"] < 19 * GB
    assert "gguf_q8_0" not in {o.variant for o in full_size_options(CONFIG, "flux2-klein-4b")}  # no files declared
    # SDXL with its IP-Adapter add-on stays bf16 (diffusers' IP-Adapter loader refuses a quantized UNet).
    assert [o.variant for o in full_size_options(CONFIG, "sdxl-base-1.0")] == ["bf16"]
    sdxl = plan_variants(CARDS["h100"], full_size_options(CONFIG, "sdxl-base-1.0"), "8bit", GB, 1.0, 30,
                         pinned="int8_weight")
    assert sdxl.chosen is None and "not available for these weights" in (sdxl.rows[-1].why_not or "")


def test_a_real_device_is_matched_to_its_card() -> None:
    rtx = card_for(CARDS, "NVIDIA GeForce RTX 4090", 23.6, (8, 9))
    assert rtx.name == "rtx4090" and rtx.memory_gb == 23.6
    unknown = card_for(CARDS, "NVIDIA L4", 23.0, (8, 9))
    assert unknown.capability == (8, 9) and unknown.memory_gb == 23.0  # a listed Ada card's speeds, its own memory
    assert unknown.label == "NVIDIA L4"
    assert card_for(CARDS, None, None, None).memory_gb is None


def test_requirements_and_floors() -> None:
    assert why_not_on(VARIANTS["fp8_dynamic"], (8, 6)) is not None
    assert why_not_on(VARIANTS["fp8_dynamic"], (9, 0)) is None
    assert why_not_on(VARIANTS["nvfp4"], (9, 0)) is not None and why_not_on(VARIANTS["nvfp4"], (12, 0)) is None
    assert why_not_on(VARIANTS["int8_weight"], None, installed=("torchao",)) is None
    assert why_not_on(VARIANTS["gguf_q8_0"], None, installed=("gguf",), files_present=False) is not None
    assert [f for f in QUALITY_FLOORS if meets_floor(VARIANTS["gguf_q5_k"], f)] == ["4bit", "5bit"]


def test_header_counting_skips_embedding_tables_only() -> None:
    assert quantizable("transformer_blocks.0.attn.to_q.weight", (3072, 3072))
    assert quantizable("time_text_embed.timestep_embedder.linear_1.weight", (3072, 256))
    assert quantizable("x_embedder.weight", (3072, 64))
    assert not quantizable("shared.weight", (32128, 4096))
    assert not quantizable("encoder.embed_tokens.weight", (32128, 4096))
    assert not quantizable("text_model.embeddings.token_embedding.weight", (49408, 768))
    assert not quantizable("transformer_blocks.0.attn.to_q.bias", (3072,))


def test_the_manifest_takes_only_variants_read_from_files(tmp_path: Path) -> None:
    bad = tmp_path / "manifest.toml"
    bad.write_text('[weights.x]\nfamily = "sdxl"\nrepo = "a/b"\nrevision = "main"\nlicense = "l"\nlicense_url = "u"\n'
                   'commercial_use = true\nallow_patterns = ["*.json"]\n'
                   '[weights.x.variants.int8_weight]\nrepo = "a/c"\nrevision = "main"\nfiles = { unet = "u.gguf" }\n')
    with pytest.raises(ValueError, match="not a variant read from files"):
        load_manifest(bad)
    assert set(CONFIG.manifest["flux1-kontext-dev"].variants) >= {"gguf_q8_0", "gguf_q4_k", "svdq_int4"}


def test_the_readme_gpu_table_is_the_planner_s() -> None:
    from benchmarks.gpu_table import readme_with_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert readme_with_table(readme, CONFIG) == readme, "run python -m benchmarks.gpu_table --write"


def test_pins_apply_to_the_shared_load_and_must_agree(tmp_path: Path) -> None:
    from configs import packaged_dir
    from server.acceleration_config import Acceleration

    text = (Path(packaged_dir()) / "acceleration.toml").read_text()
    pinned = text.replace('[models."flux-kontext-pro"]\n', '[models."flux-kontext-pro"]\nvariant = "int8_weight"\n')
    (tmp_path / "one.toml").write_text(pinned)
    accel = Acceleration.load(tmp_path / "one.toml", CONFIG.catalog)
    profile = accel.load_profile("flux1-kontext-dev")  # flux-kontext-max shares the load, so the pin covers it
    assert profile.variants == ("int8_weight",) and profile.variant_pinned
    (tmp_path / "two.toml").write_text(pinned + '\n[models."flux-kontext-max"]\nvariant = "gguf_q8_0"\n')
    with pytest.raises(ValueError, match="pin different variants"):
        Acceleration.load(tmp_path / "two.toml", CONFIG.catalog)
