"""Settings from flags and the environment, and the command line generated from them.

Every setting is one field of a pydantic-settings model. Its description is both its
``--help`` text and its line in the README, with its unit (bytes, seconds). Its
environment variables are ``env_prefix`` + the field name in capitals, or the names
an :func:`Env` marker lists: the canonical one first, then older names still
accepted. :class:`CommandLine` has pydantic-settings generate the parser of a
program from its root model (kebab-case flags, ``--x/--no-x`` for booleans, one
parser per subcommand) and adds each flag's variables to its help.

A flag beats the environment, which beats the default.

Secrets (tokens, keys) are ``SecretStr`` fields: their values never appear in a
``repr``, a log line, a validation error (every model sets ``hide_input_in_errors``) or
``--help``. Each can also be read from a file (:func:`load_secret_files`); one given as
a flag still works but :class:`CommandLine` warns, since the process list shows it to
every user.

It imports nothing of the project, so ``rtc-signaling`` uses it too without loading
the worker, the client or the WebRTC stack.
"""

from __future__ import annotations

import inspect
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, NoReturn, Protocol, TypeVar, get_args

from loguru import logger
from pydantic import BaseModel, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    get_subcommand,
)

__all__ = [
    "FLAG_ONLY",
    "CommandLine",
    "Commands",
    "Env",
    "EnvSettings",
    "EnvironmentSource",
    "empty_is_none",
    "env_names",
    "expand_home",
    "is_secret",
    "load_secret_files",
    "read_secret_file",
]


def expand_home(value: Path | None) -> Path | None:
    """``~`` at the start of a path setting means the user's home (a validator)."""
    return None if value is None else value.expanduser()


def empty_is_none(value: Any) -> Any:
    """An empty path setting means unset (a ``mode="before"`` validator)."""
    return None if value == "" else value


def Env(*names: str) -> FieldInfo:
    """The environment variables of one setting, as field metadata.

    ``Annotated[str, Env("RTC_WORKER_ID")]``: the first name is the canonical one,
    the others are older names still accepted (the first one set wins). ``Env()``
    (see :data:`FLAG_ONLY`): the value comes from the command line only. The names
    are kept as plain data in the field's JSON schema extra (``"env"``).
    """
    marker: FieldInfo = Field(json_schema_extra={"env": list(names)})
    return marker


FLAG_ONLY = Env()
"""Marks a command-line argument that no environment variable sets."""


def env_names(model: type[BaseModel], field_name: str) -> tuple[str, ...]:
    """The environment variables of ``model.field_name``, the canonical one first.

    Returns:
        The names its :func:`Env` marker gives, else ``env_prefix`` + the field name in
        capitals; empty for a flag-only field.
    """
    extra = model.model_fields[field_name].json_schema_extra
    names = extra.get("env") if isinstance(extra, dict) else None
    if isinstance(names, list):
        return tuple(str(name) for name in names)
    prefix = str(model.model_config.get("env_prefix") or "")
    return (f"{prefix}{field_name}".upper(),)


def is_secret(field: FieldInfo) -> bool:
    """Whether the field holds a secret (its type is ``SecretStr``, optional or not)."""
    return field.annotation is SecretStr or SecretStr in get_args(field.annotation)


def read_secret_file(path: Path, what: str) -> SecretStr:
    """The secret held in the file ``path``: its text without surrounding whitespace
    (a trailing line break is usual).

    A file any user may read is accepted with a warning (``chmod 600`` it).

    Raises:
        ValueError: the file cannot be read, is not UTF-8 text, or is empty (the
            message names the file, never its content).
    """
    try:
        text = path.read_text("utf-8")
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"the {what} file {path} is not UTF-8 text") from None
    value = text.strip()
    if not value:
        raise ValueError(f"the {what} file {path} is empty")
    if mode & stat.S_IROTH:
        logger.warning("the {} file {} is readable by every user: chmod 600 it", what, path)
    return SecretStr(value)


def load_secret_files(settings: BaseModel, pairs: Iterable[tuple[str, str, str]]) -> None:
    """Fill secret fields from their file fields (call it from an "after" validator).

    Args:
        settings: the validated model, changed in place.
        pairs: ``(secret field, file field, what it is)``, e.g.
            ``("token", "token_file", "token")``.

    Raises:
        ValueError: a secret is given both directly (flag or environment) and by a
            file, or its file cannot be used (:func:`read_secret_file`).
    """
    for secret_field, file_field, what in pairs:
        path = getattr(settings, file_field)
        if path is None:
            continue
        read = read_secret_file(Path(path), what)
        given = getattr(settings, secret_field)
        if given is not None and given != read:  # (equal: validated a second time)
            raise ValueError(
                f"the {what} is given twice, directly and by {file_field}: give one of them"
            )
        setattr(settings, secret_field, read)


def _input_name(field_name: str, field: FieldInfo) -> str:
    """The key a value of the field is given under: its alias when it has one."""
    alias = field.validation_alias
    return alias if isinstance(alias, str) else field_name


class EnvironmentSource(PydanticBaseSettingsSource):
    """Values from the process environment, under the names :func:`env_names` gives.

    Names match exactly, case included. Values stay strings: the model's validators
    parse them (numbers, booleans, comma-separated lists).
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The value of the first variable of the field that is set, else None."""
        for name in env_names(self.settings_cls, field_name):
            if name in os.environ:
                return os.environ[name], _input_name(field_name, field), False
        return None, _input_name(field_name, field), False

    def __call__(self) -> dict[str, Any]:
        """Every field that has a variable set, by input name."""
        values: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[key] = value
        return values


class EnvSettings(BaseSettings):
    """Base of the settings models: given values (flags), then the environment, then defaults.

    Validation errors never quote the values given (``hide_input_in_errors``): a
    secret in a refused configuration is not printed.
    """

    model_config = SettingsConfigDict(hide_input_in_errors=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Given values, then :class:`EnvironmentSource`; no dotenv or secret files."""
        return init_settings, EnvironmentSource(settings_cls)


class Commands(BaseSettings):
    """Base of a root model that holds subcommands: it reads nothing from the environment.

    Each subcommand's model reads its own variables when it is built.
    """

    model_config = SettingsConfigDict(hide_input_in_errors=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Given values only (the command line)."""
        return (init_settings,)


M = TypeVar("M", bound=BaseSettings)


class Parser(Protocol):
    """What this module uses of the parser pydantic-settings builds."""

    prog: str
    description: str | None

    def error(self, message: str) -> NoReturn:
        """Print the usage and ``message`` to stderr and exit with status 2."""

    def format_help(self) -> str:
        """The text ``--help`` prints."""


def _cleandoc(text: str | None) -> str | None:
    """A docstring as ``--help`` shows it: its line breaks kept, its indentation not."""
    return None if text is None else inspect.cleandoc(text)


def _model_of(field: FieldInfo) -> type[BaseModel] | None:
    """The model a subcommand field holds, or None for a plain field."""
    for member in get_args(field.annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


class CommandLine(Generic[M]):
    """The command line of one program, generated from its root model by pydantic-settings.

    Args:
        model: the root model: a settings model, or :class:`Commands` with
            ``CliSubCommand`` fields.
        prog: the program name shown in usage and errors.

    Attributes:
        flags: every option string of every argument, by its destination
            (``"serve.peer_id"`` for a subcommand's field, ``"host"`` at the root).
        variables: the environment variables of every argument, by its destination,
            the canonical one first (empty for a flag-only argument).
    """

    def __init__(self, model: type[M], prog: str) -> None:
        self.model = model
        self.flags: dict[str, tuple[str, ...]] = {}
        self.variables: dict[str, tuple[str, ...]] = {}
        self.source: CliSettingsSource[Parser] = CliSettingsSource(
            model,
            cli_prog_name=prog,
            cli_kebab_case=True,
            cli_implicit_flags=True,
            cli_hide_none_type=True,
            cli_avoid_json=True,
            cli_enforce_required=True,
            add_argument_method=self._add_argument,
            add_parser_method=self._add_parser,
        )
        self.parser.description = _cleandoc(self.parser.description)

    @property
    def parser(self) -> Parser:
        """The root parser."""
        return self.source.root_parser

    def parse(self, argv: Sequence[str] | None = None) -> M:
        """Parse ``argv`` (default: ``sys.argv[1:]``) into the root model.

        Raises:
            SystemExit: 2 on a usage error (unknown flag, missing argument), 0 after
                ``--help``.
            pydantic.ValidationError: a flag or environment value is invalid.
            pydantic_settings.SettingsError: a flag value cannot be parsed.
        """
        args = sys.argv[1:] if argv is None else list(argv)
        parsed = CliApp.run(self.model, cli_args=args, cli_settings_source=self.source)
        self.warn_secret_flags(args)
        return parsed

    def secret_flags(self, argv: Sequence[str]) -> dict[str, str]:
        """The flags of secret fields (``SecretStr``) that ``argv`` uses, each with what
        to use instead (its environment variables and its file flag)."""
        used: dict[str, str] = {}
        for dest, flags in self.flags.items():
            found = self.field_at(dest)
            if found is None or not is_secret(found[0].model_fields[found[1]]):
                continue
            for flag in flags:
                if flag in used or not any(a == flag or a.startswith(flag + "=") for a in argv):
                    continue
                command = dest.rpartition(".")[0]
                files = [
                    other
                    for key, others in self.flags.items()
                    if key.rpartition(".")[0] == command
                    for other in others
                    if other.endswith("-file") and flag.endswith(other[1:-5])
                ]
                used[flag] = " or ".join([*self.variables.get(dest, ()), *files])
        return used

    def warn_secret_flags(self, argv: Sequence[str]) -> None:
        """Warn on stderr for each secret given as a flag: it works, but every user of
        the machine (and every job) can read it in the process list."""
        for flag, instead in self.secret_flags(argv).items():
            print(
                f"{self.parser.prog}: warning: {flag} puts a secret on the command line, "
                "where every user and process of this machine can read it (ps, "
                f"/proc/PID/cmdline); use {instead or 'the environment'} instead",
                file=sys.stderr,
            )

    def command(self, parsed: BaseModel) -> object:
        """The chosen subcommand's model; a usage error (exit 2) when none was given."""
        chosen = get_subcommand(parsed, is_required=False)
        if chosen is None:
            names = [name for name, field in self.model.model_fields.items() if _model_of(field)]
            self.parser.error(f"the following arguments are required: {{{','.join(names)}}}")
        return chosen

    def field_at(self, dest: str) -> tuple[type[BaseModel], str] | None:
        """The model and field name behind an argument's destination, if it is a field."""
        model: type[BaseModel] = self.model
        *commands, name = dest.split(".")
        for command in commands:
            field = model.model_fields.get(command)
            sub = None if field is None else _model_of(field)
            if sub is None:
                return None
            model = sub
        for field_name, field in model.model_fields.items():
            if _input_name(field_name, field) == name:
                return model, field_name
        return None

    def _add_argument(self, container: Any, *names: str, **kwargs: Any) -> Any:
        """Add an argument as pydantic-settings asks, naming its variables in its help."""
        dest = kwargs.get("dest")
        found = self.field_at(dest) if isinstance(dest, str) else None
        variables = env_names(*found) if found is not None else ()
        if variables and isinstance(kwargs.get("help"), str):
            kwargs["help"] += f" [env: {', '.join(variables)}]"
        action = container.add_argument(*names, **kwargs)
        if isinstance(dest, str):
            self.flags[dest] = tuple(action.option_strings)
            self.variables[dest] = variables
        return action

    @staticmethod
    def _add_parser(subparsers: Any, *names: str, **kwargs: Any) -> Any:
        """Add a subcommand's parser, its description being its model's docstring."""
        kwargs["description"] = _cleandoc(kwargs.get("description"))
        return subparsers.add_parser(*names, **kwargs)
