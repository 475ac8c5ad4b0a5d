"""Settings from flags and the environment, and the command line generated from them.

Every setting is one field of a pydantic-settings model. Its description is both its
``--help`` text and its line in the README, with its unit (bytes, seconds). Its
environment variables are ``env_prefix`` + the field name in capitals, or the names
an :func:`Env` marker lists: the canonical one first, then older names still
accepted. :class:`CommandLine` has pydantic-settings generate the parser of a
program from its root model (kebab-case flags, ``--x/--no-x`` for booleans, one
parser per subcommand) and adds each flag's variables to its help.

A flag beats the environment, which beats the default.

It imports nothing of the project, so ``rtc-signaling`` uses it too without loading
the worker, the client or the WebRTC stack.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any, Generic, NoReturn, Protocol, TypeVar, get_args

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSettingsSource,
    PydanticBaseSettingsSource,
    get_subcommand,
)

__all__ = [
    "FLAG_ONLY",
    "CommandLine",
    "Commands",
    "Env",
    "EnvSettings",
    "EnvironmentSource",
    "env_names",
]


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
    """Base of the settings models: given values (flags), then the environment, then defaults."""

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
        args = None if argv is None else list(argv)
        return CliApp.run(self.model, cli_args=args, cli_settings_source=self.source)

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
