"""Typed settings and the Qolaba wire schema's mapping to an ImageAsk."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.api.errors import from_validation_errors
from server.api.qolaba import GenerateBody, _to_ask
from server.settings import Settings


def test_env_prefix_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_PORT", "9001")
    monkeypatch.setenv("DARKROOM_URL_ALLOWLIST", "10.0.0.0/8, assets.lan")
    monkeypatch.setenv("DARKROOM_API_KEY", "s3cret-zq")
    s = Settings()
    assert s.server.port == 9001 and s.files.url_allowlist == ["10.0.0.0/8", "assets.lan"]
    assert s.auth.api_key is not None and s.auth.api_key.get_secret_value() == "s3cret-zq"
    assert "s3cret-zq" not in repr(s)  # the key never lands in logs


@pytest.mark.parametrize(("host", "key", "ok"), [
    ("127.0.0.1", None, True), ("localhost", None, True), ("::1", None, True), ("127.0.0.2", None, True),
    ("0.0.0.0", None, False), ("192.168.1.10", None, False), ("gpu1.lan", None, False), ("0.0.0.0", "k", True),
])
def test_bind_safety(host: str, key: str | None, ok: bool) -> None:
    s = Settings(host=host, api_key=key)
    if ok:
        s.check_bind_safety()
    else:
        with pytest.raises(ValueError, match="API key"):
            s.check_bind_safety()


@pytest.mark.parametrize(("bucket", "shared", "ok"), [(None, False, False), ("b", False, True), (None, True, True)])
def test_a_shared_job_store_needs_shared_files(bucket: str | None, shared: bool, ok: bool) -> None:
    from server.doctor import Doctor, machine

    s = Settings(database_url="postgresql://u@db/x", s3_bucket=bucket, shared_data_dir=shared)
    doctor = Doctor(s)
    machine.sharing(doctor)
    (finding,) = doctor.findings
    if ok:
        s.check_file_sharing()
        assert finding.level == "ok"
    else:
        with pytest.raises(ValueError, match="DARKROOM_SHARED_DATA_DIR"):
            s.check_file_sharing()
        assert finding.level == "error" and "DARKROOM_S3_BUCKET" in (finding.fix or "")
    Settings().check_file_sharing()  # SQLite: each front end has its own queue and files


def test_wire_to_ask() -> None:
    body = GenerateBody.model_validate({
        "model": "flux-kontext-pro", "prompt": "p", "image_urls": ["https://a/x.png"], "output_format": "JPG",
        "temperature": 1.0, "reference_images": ["https://a/r.png"], "seed": 9,
    })
    ask = _to_ask(body, {"image_urls": [b"raw"]})
    assert ask.output_format == "jpeg" and ask.seed == 9
    assert [s.field for s in ask.sources] == ["image_urls[0]", "image"]
    assert ask.sources[1].data == b"raw" and ask.references[0].url == "https://a/r.png"
    assert len(ask.warnings) == 1 and "temperature" in ask.warnings[0]


def test_wire_errors_map_to_stable_codes() -> None:
    cases = {
        "unknown_field": {"model": "m", "prompt": "p", "n": 1},
        "missing_field": {"prompt": "p"},
        "prompt_too_long": {"model": "m", "prompt": "x" * 4001},
        "invalid_request": {"model": "m", "prompt": "p", "num_images": 0},
    }
    for code, data in cases.items():
        with pytest.raises(ValidationError) as exc:
            GenerateBody.model_validate(data)
        assert from_validation_errors(exc.value.errors()).code == code
