"""MLflow's model registry as a model source, through ``mlflow-skinny``'s ``MlflowClient``.

Calls per model (prefix ``/api/2.0/mlflow``): ``registered-models/get`` returns every alias at once
(what the poller asks each poll); ``model-versions/get`` gives a version's status; a version is
materialized from ``model-versions/get-download-uri`` through MLflow's artifact repositories (so
every artifact store MLflow supports works) into the model cache. Only READY versions load.

What a version carries (``mlflow.onnx.log_model(..., extra_files=[...])`` puts extras under
``extra_files/``): the ONNX file named by ``MLmodel``'s ``flavors.onnx.data``, optional
``model.toml`` / ``reference.json`` / ``model.int8``, and ``input_example.json`` when an example
was logged. The extras are placed next to the model file in the cached folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from headrace.errors import (
    ConfigError,
    HeadraceError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from headrace.registry.base import (
    CONFIG_FILE,
    MODEL_FILES,
    REFERENCE_FILE,
    MaterializedVersion,
    ModelDescription,
    ModelReference,
    VersionInfo,
    VersionStatus,
)
from headrace.registry.cache import ModelCache, VerificationError, VersionLayout

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'headrace[mlflow]'"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# MLflow retries a failed request 7 times with exponential backoff (minutes against a server that
# is down). The poller retries itself with its own backoff, so each request fails fast instead.
DEFAULT_HTTP_RETRIES = 0
DEFAULT_HTTP_TIMEOUT_S = 10
# Files headrace reads from a version, wherever MLflow put them (root or extra_files/).
_CARRIED = (CONFIG_FILE, REFERENCE_FILE, "model.int8")
_STATUS = {
    "READY": VersionStatus.READY,
    "PENDING_REGISTRATION": VersionStatus.PENDING,
    "FAILED_REGISTRATION": VersionStatus.FAILED,
}


def import_mlflow_client() -> type[MlflowClient]:
    """MLflow's client class, or ConfigError naming the extra that installs it."""
    try:
        from mlflow import MlflowClient
    except ImportError as error:
        raise ConfigError(
            f"the MLflow model source needs the MLflow client ({error}); install it with "
            f"{INSTALL_HINT}"
        ) from None
    return MlflowClient


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``; ConfigError when neither is set."""
    resolved = uri or os.environ.get(TRACKING_URI_ENV, "")
    if not resolved:
        raise ConfigError(f"no MLflow server: pass --mlflow-uri or set {TRACKING_URI_ENV}")
    return resolved


def _status(raw: str | None) -> VersionStatus:
    return _STATUS.get(raw or "", VersionStatus.PENDING)


class MlflowSource:
    """Versions of the referenced models, from one MLflow server, through ``cache``.

    Every method blocks on the network: call it from a worker thread. Errors: NotFoundError (no
    such model, version or alias), UnavailableError (MLflow unreachable or failing),
    VerificationError (a corrupt or incomplete artifact; nothing cached).
    """

    kind = "mlflow"

    def __init__(
        self,
        references: Sequence[ModelReference | str],
        *,
        cache: ModelCache,
        tracking_uri: str | None = None,
        http_timeout_s: int = DEFAULT_HTTP_TIMEOUT_S,
        http_retries: int = DEFAULT_HTTP_RETRIES,
        client: MlflowClient | None = None,
    ) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        self.references = tuple(
            r if isinstance(r, ModelReference) else ModelReference.parse(r) for r in references
        )
        self.cache = cache
        client_type = import_mlflow_client()
        # MLflow reads these per request from the environment, its only knob; a value the
        # operator set wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(http_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(http_timeout_s))
        self._client = client or client_type(tracking_uri=self.uri, registry_uri=self.uri)

    def __repr__(self) -> str:
        return f"MlflowSource({self.uri!r}, {[str(r) for r in self.references]})"

    # -- the Source protocol -------------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted({reference.name for reference in self.references})

    def aliases(self, model: str) -> dict[str, int]:
        """The model's alias map (one ``registered-models/get``); remembered in the cache."""
        registered = self._call(f"model '{model}'", self._client.get_registered_model, model)
        aliases = {str(alias): int(version) for alias, version in registered.aliases.items()}
        self.cache.save_aliases(model, self.uri, aliases)
        return aliases

    def version(self, model: str, version: int) -> VersionInfo:
        """One version's status (one ``model-versions/get``)."""
        found = self._call(
            f"model '{model}' version {version}",
            self._client.get_model_version,
            model,
            str(version),
        )
        return self._info(found)

    def describe(self, model: str) -> ModelDescription:
        aliases = self.aliases(model)
        by_version: dict[int, list[str]] = {}
        for alias, version in sorted(aliases.items()):
            by_version.setdefault(version, []).append(alias)
        escaped = model.replace("'", "\\'")
        found: list[Any] = []
        token: str | None = None
        while True:
            page = self._call(
                f"versions of model '{model}'",
                self._client.search_model_versions,
                f"name='{escaped}'",
                max_results=1000,
                page_token=token,
            )
            found.extend(page)
            token = page.token
            if not token:
                break
        versions = sorted(
            (
                VersionInfo(
                    model,
                    int(v.version),
                    _status(v.status),
                    v.status_message or "",
                    tuple(by_version.get(int(v.version), ())),
                )
                for v in found
            ),
            key=lambda info: info.version,
        )
        return ModelDescription(model, aliases, tuple(versions))

    def resolve(self, reference: ModelReference) -> VersionInfo:
        if reference.alias is not None:
            # Through the alias map rather than registered-models/alias, which answers an unknown
            # alias with INVALID_PARAMETER_VALUE instead of "not found".
            aliases = self.aliases(reference.name)
            if reference.alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise NotFoundError(
                    f"model '{reference.name}' has no alias '{reference.alias}' in MLflow at "
                    f"{self.uri} (aliases: {known})"
                )
            return self.version(reference.name, aliases[reference.alias])
        if reference.version is not None:
            return self.version(reference.name, reference.version)
        ready = [v for v in self.describe(reference.name).versions if v.status == "READY"]
        if not ready:
            raise NotFoundError(f"model '{reference.name}' has no READY version in {self.uri}")
        return ready[-1]

    def materialize(self, model: str, version: int) -> MaterializedVersion:
        """The version from the cache when it is there (no network), else downloaded into it.
        InvalidArgumentError for a version that is not READY."""
        cached = self.cache.get(model, version, self.uri)
        if cached is not None:
            return cached
        info = self.version(model, version)
        if info.status != VersionStatus.READY:
            raise InvalidArgumentError(
                f"model '{model}' version {version} is {info.status}, not READY"
                + (f": {info.status_message}" if info.status_message else "")
            )
        return self.cache.install(model, version, self.uri, lambda d: self._fill(model, version, d))

    # -- what the poller uses when MLflow is down ----------------------------------------------

    def cached(self, model: str, version: int) -> MaterializedVersion | None:
        return self.cache.get(model, version, self.uri)

    def cached_aliases(self, model: str) -> dict[str, int] | None:
        return self.cache.load_aliases(model, self.uri)

    # -- internals ---------------------------------------------------------------------------

    def _info(self, found: Any) -> VersionInfo:
        return VersionInfo(
            str(found.name),
            int(found.version),
            _status(found.status),
            found.status_message or "",
            tuple(found.aliases or ()),
        )

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException, RestException

        try:
            return method(*args, **kwargs)
        except RestException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFoundError(f"{what} is not in MLflow at {self.uri}") from None
            if error.error_code == "INVALID_PARAMETER_VALUE":
                raise InvalidArgumentError(f"{what}: MLflow at {self.uri}: {error}") from None
            raise UnavailableError(f"{what}: MLflow at {self.uri} failed: {error}") from None
        except (MlflowException, OSError) as error:
            raise UnavailableError(f"{what}: MLflow at {self.uri} unreachable: {error}") from None

    def _fill(self, model: str, version: int, directory: Path) -> VersionLayout:
        """Download the version's artifacts into ``directory`` and lay them out for headrace."""
        from mlflow.models import Model
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        what = f"model '{model}' version {version}"
        uri = self._call(what, self._client.get_model_version_download_uri, model, str(version))
        repository = get_artifact_repository(uri, tracking_uri=self.uri, registry_uri=self.uri)
        listed = self._call(what, lambda: dict(_listing(repository, "")))
        self._call(what, repository.download_artifacts, "", dst_path=str(directory))
        try:
            mlmodel = Model.load(str(directory / "MLmodel"))
        except Exception as error:  # a missing or unreadable MLmodel: not a model version
            raise VerificationError(f"{what}: no readable MLmodel ({error})") from None
        onnx_flavor = mlmodel.flavors.get("onnx")
        for relative in _extra_files(onnx_flavor):
            listed = _move_next_to(directory, relative, onnx_flavor, listed)
        for relative in _extra_files(onnx_flavor):
            with contextlib.suppress(OSError):  # emptied by the moves above
                (directory / relative).parent.rmdir()
        model_dir = PurePosixPath(_onnx_data(onnx_flavor) or ".").parent
        config = (
            str(model_dir / CONFIG_FILE)
            if (directory / model_dir / CONFIG_FILE).is_file()
            else None
        )
        backend, model_file = self._choose_backend(directory, model_dir, onnx_flavor, config, what)
        example_info = mlmodel.saved_input_example_info or {}
        example = example_info.get("artifact_path")
        reference = model_dir / REFERENCE_FILE
        return VersionLayout(
            model_file=model_file,
            backend=backend,
            config_file=config,
            reference_file=str(reference) if (directory / reference).is_file() else None,
            input_example_file=(
                str(example)
                if isinstance(example, str) and (directory / example).is_file()
                else None
            ),
            expected_sizes=listed,
            extras={
                "run_id": str(mlmodel.run_id or ""),
                "model_id": str(getattr(mlmodel, "model_id", "") or ""),
                "artifact_uri": str(uri),
            },
        )

    @staticmethod
    def _choose_backend(
        directory: Path,
        model_dir: PurePosixPath,
        onnx_flavor: Mapping[str, Any] | None,
        config: str | None,
        what: str,
    ) -> tuple[str, str]:
        declared = None
        if config is not None:
            from headrace.config import load_model_config

            try:
                declared = load_model_config("", directory / config).backend
            except HeadraceError as error:
                raise VerificationError(f"{what}: {error.message}") from None
        int8 = model_dir / "model.int8"
        if declared == MODEL_FILES["model.int8"] or (
            onnx_flavor is None and (directory / int8).is_file()
        ):
            if not (directory / int8).is_file():
                raise VerificationError(
                    f"{what}: model.toml asks for int8 but carries no model.int8"
                )
            return MODEL_FILES["model.int8"], str(int8)
        data = _onnx_data(onnx_flavor)
        if data is None:
            raise VerificationError(
                f"{what}: MLmodel has no onnx flavor with a data file (headrace serves ONNX "
                "models logged with mlflow.onnx.log_model, or a model.int8 extra file)"
            )
        return MODEL_FILES["model.onnx"], data


def _onnx_data(flavor: Mapping[str, Any] | None) -> str | None:
    data = flavor.get("data") if flavor else None
    return data if isinstance(data, str) and data else None


def _extra_files(flavor: Mapping[str, Any] | None) -> Iterable[str]:
    for entry in (flavor or {}).get("extra_files") or ():
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str) and PurePosixPath(path).name in _CARRIED:
            yield path


def _move_next_to(
    directory: Path, relative: str, flavor: Mapping[str, Any] | None, listed: dict[str, int]
) -> dict[str, int]:
    """Move a carried extra file next to the model file (where the engine looks for it)."""
    target = PurePosixPath(_onnx_data(flavor) or ".").parent / PurePosixPath(relative).name
    source_path, target_path = directory / relative, directory / target
    if not source_path.is_file() or target_path.exists():
        return listed
    shutil.move(source_path, target_path)
    moved = dict(listed)
    if relative in moved:
        moved[str(target)] = moved.pop(relative)
    return moved


def _listing(repository: Any, path: str) -> Iterable[tuple[str, int]]:
    for entry in repository.list_artifacts(path):
        if entry.is_dir:
            yield from _listing(repository, entry.path)
        elif entry.file_size is not None:
            yield entry.path, int(entry.file_size)
