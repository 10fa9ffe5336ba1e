"""Request parameters checked against stripe-python's own TypedDicts for the pinned API version.

The SDK's ``stripe/params`` classes are generated from Stripe's OpenAPI spec: they are the
contract. A parameter they do not name is ``parameter_unknown``; a value of the wrong type is
``parameter_invalid_integer`` / ``parameter_invalid_boolean`` / ...; a missing required one is
``parameter_missing``. Values come back converted (ints, bools, Decimals, lists).
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
import typing
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Literal, NotRequired, Required, Union

import typing_extensions

from billsync.emulator.errors import StripeError
from billsync.emulator.forms import display

# Keys of the SDK's RequestOptions: client-side options, never sent as parameters.
_REQUEST_OPTIONS = frozenset(
    {
        "api_key",
        "stripe_version",
        "stripe_account",
        "stripe_context",
        "max_network_retries",
        "idempotency_key",
        "content_type",
        "headers",
    }
)


class _Any:
    """Stands for types the emulator accepts as-is (e.g. SDK-internal helper types)."""


def _namespace(cls: type) -> dict[str, Any]:
    module = sys.modules[cls.__module__]
    namespace: dict[str, Any] = dict(vars(typing))
    namespace.update(vars(module))
    namespace["UntypedStripeObject"] = _UntypedObject
    return namespace


class _UntypedObject:
    """``UntypedStripeObject[str]``: a free-form mapping of strings (metadata)."""

    def __class_getitem__(cls, item: Any) -> Any:
        return dict[str, item]


@cache
def fields_of(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """(name → resolved type, required names) of a TypedDict, RequestOptions excluded."""
    fields: dict[str, Any] = {}
    required: set[str] = set()
    for klass in reversed(cls.__mro__):
        annotations = inspect.get_annotations(klass)
        if not annotations:
            continue
        namespace = _namespace(klass)
        for name, annotation in annotations.items():
            if name in _REQUEST_OPTIONS:
                continue
            resolved = _resolve(annotation, namespace)
            origin = typing.get_origin(resolved)
            if origin is NotRequired:
                resolved = typing.get_args(resolved)[0]
            elif origin is Required:
                resolved = typing.get_args(resolved)[0]
                required.add(name)
            else:
                required.add(name)
            fields[name] = resolved
    return fields, frozenset(required)


def _resolve(annotation: Any, namespace: dict[str, Any]) -> Any:
    if isinstance(annotation, str):
        return _resolve(eval(annotation, namespace), namespace)  # noqa: S307 - SDK source
    if isinstance(annotation, typing.ForwardRef):
        return _resolve(annotation.__forward_arg__, namespace)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is None or not args:
        return annotation
    resolved_args = tuple(arg if origin is Literal else _resolve(arg, namespace) for arg in args)
    if origin in (Union, types.UnionType):
        return Union[resolved_args]  # noqa: UP007 - built at run time
    if origin in (NotRequired, Required):
        return origin[resolved_args[0]]
    if origin is Literal:
        return annotation
    if origin in (list, typing.List):  # noqa: UP006
        return list[resolved_args[0]]  # type: ignore[valid-type]
    if origin in (dict, typing.Dict):  # noqa: UP006
        return dict[resolved_args[0], resolved_args[1]]  # type: ignore[valid-type]
    return annotation


def _is_typed_dict(tp: Any) -> bool:
    return isinstance(tp, type) and typing_extensions.is_typeddict(tp)


class _Mismatch(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _convert(value: Any, tp: Any, path: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    where = display(path)
    if tp is Any or tp is _Any:
        return value
    if origin in (Union, types.UnionType):
        literals = [arg for arg in args if typing.get_origin(arg) is Literal]
        others = [arg for arg in args if typing.get_origin(arg) is not Literal]
        allowed = [v for literal in literals for v in typing.get_args(literal)]
        if isinstance(value, str) and value in allowed:
            return value
        # `Literal[...] | str` is an open enum in the SDK; the server knows the closed set.
        enum_like = literals and all(arg is str for arg in others)
        if enum_like and any(v != "" for v in allowed):
            raise _Mismatch(
                "",
                f"Invalid {where}: must be one of " + ", ".join(str(v) for v in allowed if v != ""),
            )
        errors: list[_Mismatch] = []
        for arg in others:
            try:
                return _convert(value, arg, path)
            except _Mismatch as error:
                errors.append(error)
        if errors:
            raise errors[0]
        raise _Mismatch("", f"Invalid {where}: must be one of {', '.join(map(str, allowed))}")
    if origin is Literal:
        if value in args:
            return value
        raise _Mismatch("", f"Invalid {where}: must be one of {', '.join(map(str, args))}")
    if _is_typed_dict(tp):
        if not isinstance(value, dict):
            raise _Mismatch("parameter_invalid_object", f"Invalid object: {where} must be a hash")
        return convert_params(value, tp, path)
    if origin is list:
        (item_type,) = args
        if isinstance(value, dict) and all(key.isdigit() for key in value):
            items = [value[key] for key in sorted(value, key=int)]
        elif isinstance(value, list):
            items = value
        else:
            raise _Mismatch("parameter_invalid_array", f"Invalid array: {where} must be an array")
        return [_convert(item, item_type, [*path, str(index)]) for index, item in enumerate(items)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch("parameter_invalid_object", f"Invalid object: {where} must be a hash")
        return {key: _convert(item, args[1], [*path, key]) for key, item in value.items()}
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch("parameter_invalid_string", f"Invalid string: {where} must be a string")
        return value
    if tp is bool:
        if value in ("true", "false"):
            return value == "true"
        raise _Mismatch("parameter_invalid_boolean", f"Invalid boolean: {value}")
    if tp is int:
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        raise _Mismatch("parameter_invalid_integer", f"Invalid integer: {value}")
    if tp is Decimal:
        try:
            number = Decimal(value) if isinstance(value, str) else None
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            raise _Mismatch("parameter_invalid_decimal", f"Invalid decimal: {value}")
        return number
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _Mismatch("parameter_invalid_float", f"Invalid float: {value}") from None
    return value


def convert_params(
    values: dict[str, Any], cls: type, path: list[str] | None = None
) -> dict[str, Any]:
    """Check decoded form ``values`` against the TypedDict ``cls``; return them converted."""
    fields, required = fields_of(cls)
    path = path or []
    result: dict[str, Any] = {}
    for name, value in values.items():
        where = [*path, name]
        if name not in fields:
            raise StripeError(
                400,
                f"Received unknown parameter: {display(where)}",
                code="parameter_unknown",
                param=display(where),
            )
        try:
            result[name] = _convert(value, fields[name], where)
        except _Mismatch as error:
            raise StripeError(
                400, error.message, code=error.code or None, param=display(where)
            ) from None
    missing = sorted(required - set(values))
    if missing:
        name = display([*path, missing[0]])
        raise StripeError(
            400, f"Missing required param: {name}.", code="parameter_missing", param=name
        )
    return result


@cache
def params_class(dotted: str) -> type:
    """``"_invoice_create_params.InvoiceCreateParams"`` → the SDK's TypedDict."""
    module_name, _, class_name = dotted.rpartition(".")
    module = importlib.import_module(f"stripe.params.{module_name}")
    cls: type = getattr(module, class_name)
    return cls
