"""Model files: TorchScript with JSON metadata inside the same file.

A model file is a TorchScript archive (``torch.jit.save``) whose extra file
``petsc_neural.json`` holds the metadata.  Loading goes through
``torch.jit.load``, which reads TorchScript code and tensors only: no Python
pickle of arbitrary objects is ever executed.

Metadata schema (format version 2)::

    {
      "format": "petsc-neural-model",
      "format_version": 1,
      "method": "torchscript" | "npo" | "neuralsp" | ...,
      "problem_family": "poisson" | ... | null,     # informative
      "block_size": 1,                             # operator block size the model expects
      "dtype": "float64" | "float32",              # dtype of the network's parameters/inputs
      "n": null | int,                             # local rows the model is tied to (null: any)
      "inputs": ["residual", ...],                 # forward's positional arguments, see below
      "linear": true | false,                      # is forward linear in the residual?
      "training": {...},                           # free-form: configuration, losses, seed
      "content_hash": "sha256:...",                # of the whole file, checked on load
      "torch_version": "2.13.0", "created": "2026-...Z"
    }

``inputs`` names, in order, what ``forward`` receives.  For a network applied
per Krylov iteration (:class:`pcshell.ResidualNetworkPC`) the first is always
``"residual"`` (a 1-D tensor of the local rows).  The others are taken from the
operator once at setup: ``"operator"`` (local diagonal block as a sparse CSR
tensor), ``"diagonal"`` (1-D), ``"coordinates"`` (``(n_nodes, dim)``, or
``(0, 0)`` when the problem has none), ``"near_nullspace"`` (``(n, k)``).
Methods that run their network only at setup document their own inputs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ModelFileError, ModelMismatchError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INPUT_NAMES",
    "ModelMetadata",
    "LoadedModel",
    "save_model",
    "load_model",
    "content_hash",
    "atomic_write_bytes",
    "quiet_jit",
]

FORMAT = "petsc-neural-model"
FORMAT_VERSION = 2
_META_NAME = "petsc_neural.json"
INPUT_NAMES = ("residual", "operator", "diagonal", "coordinates", "near_nullspace")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class ModelMetadata:
    """What a model file says about the model it holds."""

    method: str = "torchscript"
    problem_family: str | None = None
    block_size: int = 1
    dtype: str = "float64"
    n: int | None = None
    inputs: list[str] = field(default_factory=lambda: ["residual"])
    linear: bool = False
    training: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""
    torch_version: str = ""
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def validate(self) -> None:
        if self.format != FORMAT:
            raise ModelFileError(f"not a petsc-neural model (format {self.format!r})")
        if self.format_version != FORMAT_VERSION:
            why = (": its hash covered the forward code and weights only, not the whole "
                   "file; export the model again with this petsc-neural"
                   if self.format_version == 1 else "")
            raise ModelFileError(
                f"model format version {self.format_version} is not supported "
                f"(this petsc-neural reads version {FORMAT_VERSION}){why}"
            )
        if self.dtype not in _DTYPES:
            raise ModelFileError(f"model dtype {self.dtype!r} is not one of {sorted(_DTYPES)}")
        if not isinstance(self.inputs, list) or not all(isinstance(i, str) for i in self.inputs):
            raise ModelFileError(f"model inputs must be a list of names, got {self.inputs!r}")
        if int(self.block_size) < 1:
            raise ModelFileError(f"block size must be >= 1, got {self.block_size}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"model metadata is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelFileError("model metadata is not a JSON object")
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise ModelFileError(f"unknown model metadata keys {extra}")
        meta = cls(**data)
        meta.validate()
        return meta


@dataclass
class LoadedModel:
    """A validated TorchScript module and its metadata."""

    module: torch.jit.ScriptModule
    metadata: ModelMetadata
    path: str


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch 2.13's deprecation warning for ``torch.jit``.

    TorchScript is still what PETSc-embedded and C++ consumers load and the
    format this project ships (``torch.export`` archives need Python to run);
    the warning is silenced only around our own script/save/load calls.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning
        )
        yield


# Records of a TorchScript archive that change on every save without changing the
# model: PyTorch's random serialization id.
_VOLATILE_RECORDS = (".data/serialization_id",)


def _record_name(name: str) -> str:
    """An archive record's name without the archive's top-level folder (the file stem)."""
    return name.split("/", 1)[1] if "/" in name else name


def content_hash(data: bytes | str | os.PathLike) -> str:
    """sha256 over a whole model file: every code unit, constant, tensor and the metadata.

    ``data`` is the file's bytes or its path.  Every record of the TorchScript
    archive (the code of every method of every submodule, constants, tensor
    data, ...) enters the hash by name and content, except PyTorch's random
    serialization id; the metadata enters as canonical JSON with its own
    ``content_hash`` field blank.  Editing any of them, a batched forward or
    one metadata value, changes the hash.
    """
    raw = data if isinstance(data, bytes) else open(os.fspath(data), "rb").read()
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            names = sorted(z.namelist(), key=_record_name)
            for name in names:
                rec = _record_name(name)
                if rec in _VOLATILE_RECORDS:
                    continue
                body = z.read(name)
                if rec == "extra/" + _META_NAME:
                    meta = json.loads(body.decode())
                    meta["content_hash"] = ""
                    body = json.dumps(meta, sort_keys=True).encode()
                h.update(rec.encode() + b"\0" + len(body).to_bytes(8, "little"))
                h.update(body)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ModelFileError(f"model file is corrupt or not a TorchScript archive: {exc}") from None
    return "sha256:" + h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never half."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(
    module: torch.nn.Module | torch.jit.ScriptModule,
    path: str | os.PathLike,
    metadata: ModelMetadata,
) -> ModelMetadata:
    """Script ``module`` (if needed) and save it with ``metadata``, atomically.

    Fills in ``content_hash``, ``torch_version`` and ``created``; returns the
    metadata as written.
    """
    with quiet_jit():
        scripted = (
            module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        )
    scripted = scripted.eval()
    metadata.torch_version = torch.__version__
    metadata.created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    metadata.content_hash = ""
    metadata.validate()

    def archive(meta: ModelMetadata) -> bytes:
        buf = io.BytesIO()
        with quiet_jit():
            torch.jit.save(scripted, buf, _extra_files={_META_NAME: meta.to_json()})
        return buf.getvalue()

    # The hash covers the metadata with its hash field blank, so it is computed
    # on a first archive and written into the second; the records are the same
    # in both (checked: the hash of the bytes written is the hash stored).
    metadata.content_hash = content_hash(archive(metadata))
    data = archive(metadata)
    if content_hash(data) != metadata.content_hash:  # pragma: no cover - torch changed
        raise ModelFileError("TorchScript wrote different archives for the same model; "
                             "cannot hash the file")
    atomic_write_bytes(path, data)
    return metadata


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    method: str | None = None,
) -> LoadedModel:
    """Load and validate a model file.

    Raises :class:`ModelFileError` when the file is missing, unreadable,
    corrupt, lacks metadata or fails its content hash (checked before any of
    its code is loaded), and
    :class:`ModelMismatchError` when it was made for another ``method``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"model file {path!r} does not exist")
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path!r} is not a regular file")
    with open(path, "rb") as f:
        raw = f.read()
    # Metadata and hash are checked from the archive's records before any
    # TorchScript is loaded: a modified file never gets to run.
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            records = {_record_name(n): n for n in z.namelist()}
            meta_name = records.get("extra/" + _META_NAME)
            meta_text = z.read(meta_name).decode() if meta_name else ""
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"model file {path!r} is corrupt or not a TorchScript archive: {exc}"
        ) from None
    if not meta_text:
        kind = "TorchScript" if any(r.startswith("code/") for r in records) else "a zip archive"
        raise ModelFileError(
            f"model file {path!r} is {kind} but has no petsc-neural metadata; "
            "save it with pcshell.save_model (or petsc_neural.TorchScriptPC.export)"
        )
    try:
        meta = ModelMetadata.from_json(meta_text)
    except ModelFileError as exc:
        raise ModelFileError(f"model file {path!r}: {exc}") from None
    actual = content_hash(raw)
    if actual != meta.content_hash:
        raise ModelFileError(
            f"model file {path!r} fails its content hash (stored {meta.content_hash[:19]}..., "
            f"computed {actual[:19]}...): its code, weights or metadata were modified after "
            "it was saved"
        )
    try:
        with quiet_jit():
            module = torch.jit.load(io.BytesIO(raw), map_location=device)
    except Exception as exc:  # torch raises RuntimeError/ValueError for bad archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"model file {path!r} is corrupt or not a TorchScript archive: {first}"
        ) from None
    if method is not None and meta.method != method:
        raise ModelMismatchError(
            f"model file {path!r} holds a {meta.method!r} model, but this preconditioner "
            f"serves {method!r} models"
        )
    return LoadedModel(module=module.eval(), metadata=meta, path=os.path.abspath(path))
