"""Command-line flags from a TOML file: ``--config FILE.toml``, the command line wins.

Order of precedence (lowest first): the parser's defaults, the TOML file, the
flags typed on the command line.  A TOML key is a flag name with or without
dashes (``micro-batch = 32`` or ``micro_batch = 32``); the file is flat (no
tables).  ``write_toml`` writes the resolved flags back (``OUT/config.toml``)
so a run can be repeated with ``--config OUT/config.toml``.

TOML is read with the standard library's ``tomllib`` (Python >= 3.11) and
written by the small writer below, which covers what flags hold: strings,
booleans, integers, floats and flat lists of those (TOML 1.0 syntax).
"""
import argparse
import math
import os
import tomllib


def _actions(parser):
    return {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}


def toml_defaults(parser, path, flag="--config"):
    """Read ``path`` and return ``{dest: value}`` checked against ``parser``'s flags.

    A value must already have the TOML type of its flag: an ``int`` flag takes
    an integer (not a boolean), a ``float`` flag an integer or a float, a string
    flag a string, ``store_true``/``store_false`` flags a boolean; nothing is
    converted from a string.  It is then checked against the flag's ``choices``.
    Calls ``parser.error`` (exit 2) for a missing/unreadable file, a TOML syntax
    error, a table, an unknown key or a value of the wrong type (the message
    names the file, the key, the TOML type given and the type expected); ``flag``
    names the source of the file in those messages.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        parser.error(f"{flag} {path!r}: no such file")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        # TOML is UTF-8; tomllib raises UnicodeDecodeError (not TOMLDecodeError) otherwise
        parser.error(f"{flag} {path!r}: {e}")
    actions = _actions(parser)
    out = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        where = f"{flag} {path!r}: key {key!r}"
        if isinstance(value, dict):
            parser.error(f"{where}: tables are not supported, expected a flat file of flags")
        if dest == "config" or dest not in actions:
            known = ", ".join(sorted(d.replace("_", "-") for d in actions if d != "config"))
            parser.error(f"{where} is not a flag of this script; expected one of: {known}")
        out[dest] = _convert(parser, actions[dest], value, where)
    return out


def _convert(parser, action, value, where):
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            parser.error(f"{where} = {value!r} is a TOML {_toml_type(value)}: expected true "
                         "or false (a boolean)")
        return value
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        values = value if isinstance(value, list) else [value]
        return [_convert_one(parser, action, v, where) for v in values]
    if isinstance(value, list):
        parser.error(f"{where} = {value!r} is a TOML array: expected a single value")
    return _convert_one(parser, action, value, where)


# TOML types a flag of each argparse ``type`` accepts; any other type (None is argparse's
# default, or a callable such as a KEY=VALUE parser) takes the command line's text, a
# string.  Nothing is converted between them: tomllib has already typed the value, so
# ``steps = "10"`` is a mix-up to report, not to coerce.
_ACCEPTED = {int: ((int,), "an integer"), float: ((int, float), "a number (integer or float)")}
_TEXT = ((str,), "a string")


def _toml_type(value):
    """The TOML name of a value ``tomllib`` returned (``"string"``, ``"integer"`` ...)."""
    if isinstance(value, bool):           # before int: bool is an int subclass
        return "boolean"
    names = {str: "string", int: "integer", float: "float", list: "array", dict: "table"}
    return next((n for t, n in names.items() if isinstance(value, t)),
                f"date/time ({type(value).__name__})")


def _convert_one(parser, action, value, where):
    accepted, expected = _ACCEPTED.get(action.type, _TEXT)
    if isinstance(value, bool) or not isinstance(value, accepted):
        parser.error(f"{where} = {value!r} is a TOML {_toml_type(value)}: expected {expected}")
    try:
        converted = action.type(value) if action.type is not None else value
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        parser.error(f"{where} = {value!r}: {e}")
    if action.choices is not None and converted not in action.choices:
        parser.error(f"{where} = {value!r}: expected one of {list(action.choices)}")
    return converted


def parse_with_config(parser, argv=None):
    """``parser.parse_args(argv)`` with defaults taken from ``--config FILE`` when given.

    The parser must define ``--config``.  Returns the argparse Namespace.
    """
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        parser.set_defaults(**toml_defaults(parser, pre.config))
    return parser.parse_args(argv)


def typed_dests(parser, argv):
    """The ``dest`` of every flag typed in ``argv`` (whatever the defaults say).  Call it
    before ``parser.set_defaults``: argparse fills a namespace from those too."""
    actions = list(_actions(parser).values())
    saved = [a.default for a in actions]
    try:
        for a in actions:
            a.default = argparse.SUPPRESS      # a flag not typed leaves no attribute
        typed, _ = parser.parse_known_args(argv, argparse.Namespace())
    finally:
        for a, default in zip(actions, saved):
            a.default = default
    return set(vars(typed))


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)   # shortest round-trip form, always with '.' or 'e'
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        for ch, esc in (("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r")):
            escaped = escaped.replace(ch, esc)
        if any(ord(c) < 0x20 or ord(c) == 0x7f for c in escaped):
            escaped = "".join(c if ord(c) >= 0x20 and ord(c) != 0x7f else f"\\u{ord(c):04x}"
                              for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a TOML value")


def dumps_toml(flat, header=None):
    """TOML text of the flat dict ``flat``; keys with value None are left out
    (TOML has no null: an absent key means the flag's default)."""
    lines = [f"# {line}" for line in (header or "").splitlines()]
    for key, value in flat.items():
        if value is None:
            continue
        name = key.replace("_", "-")
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_toml(path, flat, header=None):
    """Write ``dumps_toml(flat, header)`` to ``path`` atomically (a temporary file in the
    same folder, then ``os.replace``); ``tomllib`` reads it back to ``flat``."""
    text = dumps_toml(flat, header)
    write_text_atomic(path, text)
    return text


def write_text_atomic(path, text):
    """Replace ``path`` by ``text`` in one step: readers see the old or the new file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
