"""Pretrained weights: resolve, download, verify, cache and load checkpoints safely.

Resolution order for a pretrained cfg (a timm ``pretrained_cfg`` dict): its ``file`` (a local path), then the
cache, then its ``url``. Downloads stream into a temporary file inside the cache folder, are hashed while they
arrive and are renamed into place only after the sha256 matched, so a failed, interrupted or corrupt download
leaves nothing behind.

Environment:
    SSMZOO_HOME           cache root (default ``~/.cache/ssmzoo``); files live in ``$SSMZOO_HOME/hub/<host>/<path>``.
    SSMZOO_OFFLINE=1      never touch the network; a missing file is an error naming where it was looked for.
    SSMZOO_REQUIRE_HASH=1 refuse weights whose cfg carries no ``sha256``.

Checkpoints of the official repositories pickle non-tensor objects (argparse Namespaces, yacs CfgNodes, Lightning
objects). They are never unpickled as such: ``load_checkpoint`` tries ``torch.load(weights_only=True)`` and, when
that refuses a class, re-reads the file with an unpickler that imports only an allow-list of tensor-rebuilding
globals and turns every other class or function into an inert :class:`Placeholder`.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = [
    "ChecksumError",
    "DownloadError",
    "NotACheckpointError",
    "OfflineError",
    "Placeholder",
    "apply_checkpoint_filter",
    "cache_path",
    "download",
    "get_home",
    "load_checkpoint",
    "load_state_dict",
    "pick_state_dict",
    "resolve",
    "sha256_file",
]

_CHUNK = 1 << 20
_SIDECAR = ".sha256"
_warned_unhashed: set[str] = set()


class ChecksumError(ValueError):
    """A file's sha256 differs from the expected one."""


class DownloadError(OSError):
    """A download failed (network error, HTTP error, connection dropped)."""


class OfflineError(FileNotFoundError):
    """Weights are not on disk and ``SSMZOO_OFFLINE=1`` forbids downloading them."""


class NotACheckpointError(ValueError):
    """A file is neither a safetensors file nor a torch checkpoint."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def get_home() -> Path:
    """The cache root: ``$SSMZOO_HOME`` or ``~/.cache/ssmzoo``."""
    return Path(os.environ.get("SSMZOO_HOME") or Path.home() / ".cache" / "ssmzoo").expanduser()


def cache_path(url: str) -> Path:
    """Where ``url`` is cached: ``$SSMZOO_HOME/hub/<host>/<url path>`` (readable, and unique per URL)."""
    parsed = urllib.parse.urlsplit(url)
    parts = [p for p in urllib.parse.unquote(parsed.path).split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"URL {url!r} names no file")
    host = parsed.netloc.replace(":", "_") or "local"
    return get_home().joinpath("hub", host, *parts)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str, source: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(f"sha256 mismatch for {source}: expected {expected.lower()}, got {actual} ({path})")


def download(url: str, sha256: str | None = None, *, progress: bool = True) -> Path:
    """Download ``url`` into the cache and return the path.

    The body goes to a temporary file beside the destination; it is renamed into place only after it arrived
    whole and, when ``sha256`` is given, matched it. On any failure the temporary file is removed.
    Without ``sha256`` the measured hash is written to ``<file>.sha256`` so later uses can detect corruption.
    """
    if _env_flag("SSMZOO_OFFLINE"):
        raise OfflineError(f"SSMZOO_OFFLINE=1: not downloading {url}")
    target = cache_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "ssmzoo"})
            with urllib.request.urlopen(request, timeout=60) as response, os.fdopen(fd, "wb") as out:
                expected_size = response.headers.get("Content-Length")
                expected_size = int(expected_size) if expected_size is not None else None
                received = 0
                with tqdm(total=expected_size, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                          desc=target.name) as bar:
                    while block := response.read(_CHUNK):
                        out.write(block)
                        digest.update(block)
                        received += len(block)
                        bar.update(len(block))
        except (OSError, ValueError, http.client.HTTPException) as err:  # URLError and IncompleteRead included
            raise DownloadError(f"download of {url} failed: {err!r}") from err
        if expected_size is not None and received != expected_size:
            raise DownloadError(
                f"download of {url} failed: connection closed after {received} of {expected_size} bytes"
            )
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise ChecksumError(f"sha256 mismatch for {url}: expected {sha256.lower()}, got {actual}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sha256 is None:
        _record_hash(target, actual, url)
    return target


def _record_hash(path: Path, digest: str, url: str) -> None:
    Path(str(path) + _SIDECAR).write_text(digest + "\n")
    if url not in _warned_unhashed:
        _warned_unhashed.add(url)
        warnings.warn(
            f"No sha256 is known for {url}; recorded {digest} in {path}{_SIDECAR}. "
            "Set SSMZOO_REQUIRE_HASH=1 to refuse weights without a known hash.",
            stacklevel=3,
        )


def resolve(cfg: Mapping[str, Any], *, progress: bool = True) -> Path:
    """Local path of the weights a pretrained cfg names: its ``file``, else the cache, else a download of ``url``."""
    file, url, sha256 = cfg.get("file"), cfg.get("url"), cfg.get("sha256")
    if file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} does not exist")
        return path
    if not url:
        raise ValueError(f"pretrained cfg of {cfg.get('architecture')!r} names neither a file nor a url")
    if sha256 is None and _env_flag("SSMZOO_REQUIRE_HASH"):
        raise ChecksumError(f"SSMZOO_REQUIRE_HASH=1 and no sha256 is known for {url}")
    cached = cache_path(url)
    if cached.is_file():
        sidecar = Path(str(cached) + _SIDECAR)
        expected = sha256 or (sidecar.read_text().strip() if sidecar.is_file() else None)
        if expected is not None:
            _verify(cached, expected, url)
        return cached
    if _env_flag("SSMZOO_OFFLINE"):
        raise OfflineError(f"SSMZOO_OFFLINE=1 and the weights for {url} are not cached (looked for {cached})")
    return download(url, sha256, progress=progress)


# --- safe loading -------------------------------------------------------------------------------------------------


class Placeholder:
    """Inert stand-in for a class or function a checkpoint pickled but we do not import.

    Calling it, instantiating it and restoring its state only record arguments; nothing of the original runs.
    ``target`` names what was pickled (``"argparse.Namespace"``); ``args``, ``state`` and ``items`` keep the data,
    so tensors pickled inside foreign objects remain reachable.
    """

    target = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, {}

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<Placeholder for {self.target}>"


_placeholder_classes: dict[str, type] = {}


def _placeholder_class(target: str) -> type:
    if target not in _placeholder_classes:
        _placeholder_classes[target] = type(f"Placeholder[{target}]", (Placeholder,), {"target": target})
    return _placeholder_classes[target]


def _allowed_globals() -> dict[str, Any]:
    """Globals a checkpoint may import: torch's own weights-only allow-list plus plain numpy/builtin data types."""
    allowed: dict[str, Any] = {}
    try:
        from torch import _weights_only_unpickler

        allowed.update(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - private API moved; the explicit list below remains
        pass
    for obj in torch.serialization.get_safe_globals():
        if not isinstance(obj, tuple):
            allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    import collections

    import numpy

    allowed.update({
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set, "builtins.frozenset": frozenset, "builtins.slice": slice, "builtins.complex": complex,
        "numpy.dtype": numpy.dtype, "numpy.ndarray": numpy.ndarray,
    })
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{core}.scalar"] = numpy._core.multiarray.scalar
        allowed[f"{core}._reconstruct"] = numpy._core.multiarray._reconstruct
    for name in dir(numpy.dtypes):
        if name.endswith("DType"):
            allowed[f"numpy.dtypes.{name}"] = getattr(numpy.dtypes, name)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    _allowed: dict[str, Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        key = f"{module}.{name}"
        if key in self._allowed:
            return self._allowed[key]
        return _placeholder_class(key)


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: an ``Unpickler`` class and a ``load`` function."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = "ssmzoo.hub.restricted_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a ``.safetensors`` file or a torch checkpoint (``.pth``/``.pt``/``.ckpt``/``.bin``) on the CPU.

    Torch checkpoints load with ``weights_only=True``; if that refuses a pickled class, the file is re-read with
    the restricted unpickler (unknown classes become :class:`Placeholder` objects, never imported or run).
    Raises ``FileNotFoundError`` for a missing file and :class:`NotACheckpointError` for anything unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise NotACheckpointError(f"{path} is not a valid safetensors file: {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # a pickled class outside the weights-only allow-list: retry with placeholders
    except Exception as err:
        raise NotACheckpointError(f"{path} is not a torch checkpoint: {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as err:
        raise NotACheckpointError(f"{path} is not a torch checkpoint: {err}") from err


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()
    )


def pick_state_dict(checkpoint: Any, key: str | None = None, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint.

    Args:
        checkpoint: what :func:`load_checkpoint` returned.
        key: the entry holding the weights (``"model"``, ``"state_dict"``, ``"params"``, ``"model_ema"`` ...);
            ``None`` takes the checkpoint itself if it is a flat tensor dict, else the first of
            ``model``/``state_dict``/``params``/``module`` that is.
        prefix: removed from every key that starts with it (``"module."``, ``"model."``); keys without it are
            dropped (a Lightning ``state_dict`` mixes the network with other modules).
    """
    if key is not None:
        if not isinstance(checkpoint, Mapping) or key not in checkpoint:
            found = list(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise KeyError(f"checkpoint has no entry {key!r} (entries: {found})")
        state_dict = checkpoint[key]
    elif _is_state_dict(checkpoint):
        state_dict = checkpoint
    else:
        candidates = ("model", "state_dict", "params", "module")
        state_dict = next((checkpoint[k] for k in candidates if isinstance(checkpoint, Mapping)
                           and _is_state_dict(checkpoint.get(k))), None)
        if state_dict is None:
            found = list(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise KeyError(f"no state_dict found in checkpoint (looked for {candidates}; entries: {found})")
    state_dict = {k: v for k, v in state_dict.items() if torch.is_tensor(v)}
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise KeyError(f"no checkpoint key starts with prefix {prefix!r}")
    return state_dict


def load_state_dict(
    path: str | os.PathLike, key: str | None = None, prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """``pick_state_dict(load_checkpoint(path), key, prefix)``."""
    return pick_state_dict(load_checkpoint(path), key=key, prefix=prefix)


def apply_checkpoint_filter(
    state_dict: dict[str, torch.Tensor],
    model: torch.nn.Module,
    filter_fn: Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]] | None,
) -> dict[str, torch.Tensor]:
    """Map an official state_dict to ``model``'s keys with a family's ``checkpoint_filter_fn`` (timm signature)."""
    return filter_fn(state_dict, model) if filter_fn is not None else state_dict
