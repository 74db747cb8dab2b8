"""One table of a TOML config file being read, with errors that name the
file, the table and the key (the sections parsed outside ``gateway.config``:
``[digest]``, ``[crm]``). Raises ValueError; ``gateway.config`` words it as a
ConfigError."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class Table:
    """One TOML table being read: every error names its table and key."""

    def __init__(self, data: Any, where: str, label: str) -> None:
        self.where, self.label = where, label  # "[digest]", "[[digest.recipients]] #2"
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: {label}: expected a table, got {data!r}")
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    def fail(self, key: str, expected: str, got: Any) -> ValueError:
        return ValueError(f"{self.where}: {self.label} {key}: expected {expected}, got {got!r}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, expected: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int to Python, not to a config file.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.fail(key, expected, value)
        return value

    def secret(self, name: str, environ: Mapping[str, str], what: str, base: Path | None = None) -> str | None:
        """``{name}_env`` names an environment variable (or, given ``base``, the
        directory of the config, ``{name}_file`` a file) holding the secret; its
        value is never in a message. None when neither is set."""
        key, file_key = f"{name}_env", f"{name}_file"
        if name in self.data:
            raise ValueError(f"{self.where}: {self.label} {name}: secrets are not kept in the file; "
                             f"set {key} to the name of an environment variable holding {what}")
        env_name = self.get(key, str, None, "the name of an environment variable")
        file_name = self.get(file_key, str, None, "a file path") if base is not None else None
        if env_name is not None and file_name is not None:
            raise ValueError(f"{self.where}: {self.label} {key}, {file_key}: set one of them, not both")
        if file_name is not None:
            assert base is not None
            path = Path(file_name) if Path(file_name).is_absolute() else base / file_name
            try:
                return path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{self.where}: {self.label} {file_key}: cannot read {path}: {exc.strerror}") from exc
        if env_name is None:
            return None
        if env_name not in environ:
            raise ValueError(f"{self.where}: {self.label} {key}: expected an environment variable holding "
                             f"{what}, got {env_name!r}, which is not set")
        return environ[env_name]

    def required_secret(self, name: str, environ: Mapping[str, str], what: str, base: Path | None = None) -> str:
        value = self.secret(name, environ, what, base)
        if not value:
            raise self.fail(f"{name}_env", f"the name of an environment variable holding {what}", None)
        return value

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], f"one of {', '.join(sorted(self.used))}", self.data[unknown[0]])
