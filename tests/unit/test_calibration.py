"""Calibration: the fit and the 5% check on known numbers, TOML write-back, and the script's path on demo weights."""

from __future__ import annotations

import json
import random
import tomllib
from pathlib import Path

import pytest

from benchmarks import calibrate
from benchmarks.calibration_fit import PeakSample, check_estimates, estimate, fit_coefficients, set_toml_value
from tests.packaged import packaged_config

MEMORY_PATH = packaged_config().directory / "memory.toml"
COSTS_PATH = packaged_config().directory / "costs.toml"
from weights.full_size import FULL_CONFIGS


def test_fit_recovers_known_coefficients_and_covers_every_sample() -> None:
    rng = random.Random(3)
    samples = []
    for tokens, vae in [(4_000, 250_000), (16_000, 1_000_000), (32_000, 1_000_000), (8_000, 250_000)]:
        # A peak that is the formula plus up to 3% of allocator noise.
        samples.append(PeakSample(tokens, vae, int((300_000 * tokens + 1_500 * vae) * rng.uniform(1.0, 1.03))))
    fit = fit_coefficients(samples)
    assert all(estimate(fit, s) >= s.measured for s in samples)
    assert fit.bytes_per_token == pytest.approx(300_000, rel=0.06)
    assert fit.vae_bytes == pytest.approx(1_500, rel=0.25)
    assert 1.0 <= fit.cover_scale < 1.05


def test_fit_with_a_term_that_never_varies_uses_the_other() -> None:
    samples = [PeakSample(t, 0, 2 * t) for t in (10, 20, 40)]
    fit = fit_coefficients(samples)
    assert (fit.bytes_per_token, fit.vae_bytes) == (2, 0)
    with pytest.raises(ValueError):
        fit_coefficients([PeakSample(0, 0, 5)])


def test_the_check_fails_beyond_five_percent_under() -> None:
    assert check_estimates([(100, 100), (96, 100)])["within_5_percent"]
    result = check_estimates([(100, 100), (94, 100)])
    assert not result["within_5_percent"] and result["worst_ratio"] == 0.94


def test_values_are_written_into_the_real_config_files_keeping_their_comments() -> None:
    memory = MEMORY_PATH.read_text()
    out = set_toml_value(memory, "wan2.2-ti2v-5b", "bytes_per_token", 123, "calibrated on X")
    out = set_toml_value(out, "sdxl", "text_tokens", 77)  # a key the section lacks is added to it
    parsed = tomllib.loads(out)
    assert parsed["wan2.2-ti2v-5b"]["bytes_per_token"] == 123
    assert parsed["wan2.2-i2v-a14b"] == tomllib.loads(memory)["wan2.2-i2v-a14b"]
    assert parsed["sdxl"]["text_tokens"] == 77
    assert "# calibrated on X" in out and out.count("NOT YET CALIBRATED") == memory.count("NOT YET CALIBRATED")
    costs = set_toml_value(COSTS_PATH.read_text(), "families.wan2.2-ti2v-5b", "job_s", 95.5)
    costs = set_toml_value(costs, "transfer", "disk_gb_per_s", 3.1)
    parsed = tomllib.loads(costs)
    assert parsed["families"]["wan2.2-ti2v-5b"]["job_s"] == 95.5 and parsed["transfer"]["disk_gb_per_s"] == 3.1
    with pytest.raises(KeyError):
        set_toml_value(memory, "no-such-family", "bytes_per_token", 1)


def test_quick_run_on_demo_weights_measures_and_refuses_to_write_configs(
        demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_DEMO_WEIGHTS_PATH", str(demo_dir))
    before = (MEMORY_PATH.read_text(), COSTS_PATH.read_text())
    code = calibrate.main(["--device", "cpu", "--quick", "--families", "flux2-klein", "--data-dir", str(tmp_path),
                           "--out", str(tmp_path / "out"), "--write-configs"])
    assert code == 2  # demo weights on a CPU: figures that describe nothing real are never written
    assert (MEMORY_PATH.read_text(), COSTS_PATH.read_text()) == before
    report = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert report["device"].startswith("cpu") and report["weights"] == {"flux2-klein": "demo"}
    assert set(report["versions"]) == {"torch", "diffusers", "transformers"}
    (family,) = report["families"]
    assert family["memory"].startswith("not measured") and family["fit"] is None
    assert family["loads"]["bytes"] > 0 and family["loads"]["disk_s"] > 0
    assert [p["holdout"] for p in family["points"]] == [False, False, True]
    for point in family["points"]:
        assert point["step_s"] > 0 and point["tokens_term"] > 0 and point["estimate_before"] > 0
    assert family["costs"]["job_s"] > 0 and 0 <= family["costs"]["batch_marginal"] <= 1


# Published parameter counts (../shared/reference/tiny-models.md section 3, counted on the meta device; the
# Qwen-Image VAE is the Wan 2.1 VAE's architecture, Qwen2.5-VL-7B's count is its model card's).
PUBLISHED = {
    "flux-kontext": {"transformer": 11_901_408_320, "vae": 83_819_683, "text_encoder": 123_060_480,
                     "text_encoder_2": 4_762_310_656},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
    "flux2-klein": {},  # no exact published counts: the cost-table check below still applies
    "qwen-image-edit": {"vae": 126_892_531},
    "wan2.2-ti2v-5b": {"text_encoder": 5_680_910_336},
}


@pytest.mark.parametrize("family", sorted(FULL_CONFIGS))
def test_full_size_configs_have_the_published_parameter_counts_and_match_the_cost_table(family: str) -> None:
    from weights.full_size import parameter_counts

    counts = parameter_counts(family)
    assert set(counts) == set(FULL_CONFIGS[family])
    assert {k: counts[k] for k in PUBLISHED[family]} == PUBLISHED[family]
    table = sorted(packaged_config().costs.families[family].components, reverse=True)
    assert len(table) == len(counts)
    for listed, params in zip(table, sorted(counts.values(), reverse=True), strict=True):
        assert listed == pytest.approx(2 * params, abs=0.05e9)  # bf16 bytes, as configs/costs.toml lists them


def test_a_folder_named_by_hand_is_classified_and_needs_one_family(tmp_path: Path) -> None:
    from weights.full_size import RANDOM_MARKER

    (tmp_path / RANDOM_MARKER).write_text(json.dumps({"family": "sdxl", "depth": None}))
    assert calibrate.weights_kind(tmp_path) == "random full-size"
    (tmp_path / RANDOM_MARKER).write_text(json.dumps({"family": "sdxl", "depth": 1}))
    assert calibrate.weights_kind(tmp_path).startswith("random full-width, depth 1")
    assert calibrate.weights_kind(tmp_path / "nothing") == "unverified folder"
    with pytest.raises(SystemExit):
        calibrate.main(["--families", "sdxl,flux2-klein", "--weights-path", str(tmp_path), "--device", "cpu"])
