"""Capability URLs for outputs: a signature over the file's path and expiry, checked in constant time."""

from __future__ import annotations

from server.media.signing import UrlSigner, Verdict


def test_a_signed_url_is_valid_until_it_expires_and_only_for_its_file() -> None:
    signer = UrlSigner("a" * 64)
    query = dict(part.split("=") for part in signer.query("abc.png", 2_000).split("&"))
    assert signer.check("abc.png", query["exp"], query["sig"], now=1_999) is Verdict.VALID
    assert signer.check("abc.png", query["exp"], query["sig"], now=2_001) is Verdict.EXPIRED
    assert signer.check("abd.png", query["exp"], query["sig"], now=1_000) is Verdict.INVALID  # another file
    assert signer.check("abc.png", "3000", query["sig"], now=1_000) is Verdict.INVALID  # a longer life
    assert UrlSigner("b" * 64).check("abc.png", query["exp"], query["sig"], now=1_000) is Verdict.INVALID
    assert signer.check("abc.png", None, None) is Verdict.UNSIGNED
    assert signer.check("abc.png", "x1", query["sig"]) is Verdict.INVALID
    assert signer.check("abc.png", query["exp"], None) is Verdict.INVALID


def test_exp_zero_never_expires() -> None:
    signer = UrlSigner("c" * 64)
    assert signer.query("f.mp4", None).startswith("exp=0&")
    exp, sig = (p.split("=")[1] for p in signer.query("f.mp4", None).split("&"))
    assert signer.check("f.mp4", exp, sig, now=4e9) is Verdict.VALID


def test_links_sign_until_the_files_expire_unless_files_need_a_key() -> None:
    from server.api.links import Links
    from server.jobs.store import JobRecord, JobStatus

    record = JobRecord("t", JobStatus.COMPLETED, "m", "k", {}, {}, None, 0, 0, 1, None, 0.0, 1.0, 100.0)
    signer = UrlSigner("d" * 64)
    signed = Links("http://h", signer, 3600.0).file("n.png", record)
    assert signed == f"http://h/files/n.png?{signer.query('n.png', 3700.0)}"
    assert Links("http://h", signer, None).file("n.png", record).startswith("http://h/files/n.png?exp=0&")
    assert Links("http://h", None, 3600.0).file("n.png", record) == "http://h/files/n.png"
