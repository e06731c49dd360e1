"""Download real weights from the Hugging Face Hub (safetensors only) and verify them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weights.locate import LOCK_FILE
from weights.manifest import PICKLE_SUFFIXES, VARIANTS_FOLDER, WeightsEntry
from weights.safetensors_header import tensor_sizes


class PullError(RuntimeError):
    """A download or verification failure, phrased as one sentence for the operator."""


def verify(entry: WeightsEntry, path: Path) -> list[str]:
    """Check a downloaded folder: model_index.json, every component's safetensors readable, no pickles."""
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise PullError(f"{entry.name}: model_index.json is missing in the download")
    pickles = [p for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise PullError(f"{entry.name}: refusing pickled files in the download ({len(pickles)} found)")
    files = []
    index = json.loads(index_path.read_text())
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[1] is None:
            continue
        folder = path / name
        if not folder.is_dir():
            raise PullError(f"{entry.name}: component folder {name}/ is missing")
        for st in sorted(folder.glob("*.safetensors")):
            try:
                tensor_sizes(st)
            except (OSError, ValueError) as exc:
                raise PullError(f"{entry.name}: {name}/{st.name} is not a readable safetensors file") from exc
            files.append(f"{name}/{st.name}")
    for addon in entry.addons:
        for rel in addon.files:
            f = path / addon.folder / rel
            if not f.is_file():
                raise PullError(f"{entry.name}: add-on file {addon.folder}/{rel} is missing")
            if f.suffix == ".safetensors":
                try:
                    tensor_sizes(f)
                except (OSError, ValueError) as exc:
                    raise PullError(f"{entry.name}: {addon.folder}/{rel} is not a readable safetensors file") from exc
            files.append(f"{addon.folder}/{rel}")
    return files


def describe_plan(repo: str, commit: str, plan: Any) -> str:
    """The files a download will fetch, with sizes, and the total (files already on disk are marked)."""
    files = sorted(plan, key=lambda f: f.filename)
    todo = sum(f.file_size for f in files if f.will_download)
    lines = [f"{repo}@{commit[:12]}: {len(files)} files, {todo / 1e9:.2f} GB to download"]
    lines += [f"  {f.file_size / 1e6:>10.1f} MB  {f.filename}{'' if f.will_download else '  (already here)'}"
              for f in files]
    return "\n".join(lines)


def _download(repo: str, revision: str, patterns: list[str], folder: Path, token: str | None,
              say: Callable[[str], None]) -> str:
    """Fetch `patterns` of `repo` at `revision` into `folder` (after saying what will come); the commit fetched."""
    # Imported here so serving never imports the hub client.
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        commit = HfApi().repo_info(repo, revision=revision, token=token).sha
        plan = snapshot_download(repo_id=repo, revision=commit, allow_patterns=patterns, local_dir=folder,
                                 token=token, dry_run=True)
        say(describe_plan(repo, commit, plan))
        snapshot_download(repo_id=repo, revision=commit, allow_patterns=patterns, local_dir=folder, token=token)
    except GatedRepoError:
        raise PullError(f"{repo} is gated: accept its licence on the Hub, then set HF_TOKEN and pull again") from None
    except RepositoryNotFoundError:
        raise PullError(f"{repo} was not found on the Hub (or needs a token)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        kind = type(exc).__name__
        raise PullError(
            f"could not download {repo} ({kind}); check the network connection to the Hugging Face Hub "
            "(or HF_ENDPOINT) and try again"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the hub client raises many transport types; the operator needs one line
        kind = type(exc).__name__
        raise PullError(f"could not download {repo} ({kind}); check the network and try again") from None
    return str(commit)


def pull(entry: WeightsEntry, weights_dir: Path, token: str | None = None,
         say: Callable[[str], None] = print) -> Path:
    """Download `entry` into `weights_dir/<name>` with progress bars (bytes and files), verify it, then write the
    lock file. Before each repo downloads, `say` gets its files with their sizes (a dry run of the same call)."""
    from huggingface_hub.utils import enable_progress_bars

    enable_progress_bars()
    target = weights_dir / entry.name
    target.mkdir(parents=True, exist_ok=True)
    commits: dict[str, str] = {}
    # The main repo, then each add-on repo into its own sub-folder.
    for repo, revision, patterns, folder in [
        (entry.repo, entry.revision, entry.allow_patterns, target),
        *((a.repo, a.revision, a.allow_patterns, target / a.folder) for a in entry.addons),
    ]:
        commits[repo] = _download(repo, revision, patterns, folder, token, say)
    files = verify(entry, target)
    lock = {"repo": entry.repo, "revision": entry.revision, "commit": commits[entry.repo], "files": files,
            "license": entry.license, "pulled_at": time.time(),
            "addons": {a.folder: {"repo": a.repo, "commit": commits[a.repo], "license": a.license}
                       for a in entry.addons}}
    (target / LOCK_FILE).write_text(json.dumps(lock, indent=2))
    return target


def verify_variant(entry: WeightsEntry, variant: str, folder: Path) -> None:
    """Check a pulled variant's files: each one present and readable by its format's header reader."""
    for component, rel in entry.variants[variant].files.items():
        path = folder / rel
        if not path.is_file():
            raise PullError(f"{entry.name}: {variant} file {rel} (for {component}) is missing in the download")
        try:
            if path.suffix == ".gguf":
                from gguf import GGUFReader

                GGUFReader(path)
            else:
                tensor_sizes(path)
        except (OSError, ValueError) as exc:
            raise PullError(f"{entry.name}: {variant} file {rel} is not a readable {path.suffix} file") from exc


def pull_variant(entry: WeightsEntry, variant: str, weights_dir: Path, token: str | None = None,
                 say: Callable[[str], None] = print) -> Path:
    """Download a variant read from its own files (manifest `variants.<variant>`) into
    `weights_dir/<name>/variants/<variant>`, verify it, then write its lock (which names each component's file:
    what the loader reads). The entry's own weights are pulled separately (the variant replaces only some
    components)."""
    if variant not in entry.variants:
        raise PullError(f"{entry.name} has no files for variant {variant!r}; it has "
                        f"{', '.join(entry.variants) or 'none'} (the others are made at load, nothing to pull)")
    files = entry.variants[variant]
    target = weights_dir / entry.name / VARIANTS_FOLDER / variant
    target.mkdir(parents=True, exist_ok=True)
    commit = _download(files.repo, files.revision, sorted(files.files.values()), target, token, say)
    verify_variant(entry, variant, target)
    lock = {"repo": files.repo, "revision": files.revision, "commit": commit, "variant": variant,
            "components": files.files, "license": files.license or entry.license, "pulled_at": time.time()}
    (target / LOCK_FILE).write_text(json.dumps(lock, indent=2))
    return target
