"""`darkroom loras pull`: a LoRA from the Hugging Face Hub into the server's LoRA folder, safetensors only."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pipelines.lora_format import LoraFormatError, LoraHeader, inspect, refuse_pickle_name

_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class LoraPullError(RuntimeError):
    """The adapter could not be fetched or is not a usable LoRA; the message says why."""


def pull_lora(repo: str, folder: Path, filename: str | None = None, revision: str | None = None,
              name: str | None = None, token: str | None = None) -> tuple[Path, LoraHeader]:
    """Download `repo`'s safetensors LoRA (the one named, or the only one), check it from its header, and place it
    as `<folder>/<name>.safetensors`."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        if filename is None:
            files = [f for f in HfApi(token=token).list_repo_files(repo, revision=revision)
                     if f.endswith(".safetensors")]
            if len(files) != 1:
                raise LoraPullError(f"{repo} has {len(files)} .safetensors files"
                                    f"{': ' + ', '.join(files[:8]) if files else ''}; name one with --file")
            filename = files[0]
        refuse_pickle_name(filename)
        if not filename.endswith(".safetensors"):
            raise LoraPullError(f"{filename} is not a .safetensors file; darkroom loads safetensors only")
        local = Path(hf_hub_download(repo, filename, revision=revision, token=token))
    except LoraFormatError as exc:
        raise LoraPullError(exc.message) from None
    except (HfHubHTTPError, OSError) as exc:
        raise LoraPullError(f"could not download {repo}: {exc}") from None
    try:
        header = inspect(local.read_bytes())
    except LoraFormatError as exc:
        raise LoraPullError(f"{repo}/{filename}: {exc.message}") from None
    stem = _NAME.sub("-", name or repo.rsplit("/", 1)[-1]).strip(".-")[:120] or "adapter"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}.safetensors"
    tmp = target.with_suffix(".part")
    shutil.copyfile(local, tmp)
    tmp.replace(target)
    return target, header
