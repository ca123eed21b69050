"""Per-module overrides as data: an ordered list of `(pattern, rule)` pairs in `Recipe.overrides`.

A pattern selects modules by name or role; the **first** pattern that matches a module decides, later ones are not
consulted (so put the specific rules first):

- `"role:<role>"`: every module the adapter gives that role (`role:head`, `role:matmul_av`, …);
- `"re:<regex>"`: module names the regular expression matches as a whole (`re:blocks\\.(0|11)\\..*`);
- anything else: a shell-style glob on the module name (`head`, `blocks.0.*`, `*.mlp.fc2`); a plain name is an
  exact match.

A rule is `None` (the module stays float: not swapped, no quantizer) or a dict from quantizer slot to spec:
`weight`, `input` (Linear/Conv input), `a` and `b` (the two operands of a matmul), each a `QuantSpec`, its dict form,
or `None` (that slot stays float). Slots a rule does not name keep the recipe's own spec.
"""
import fnmatch
import re

from .errors import ConfigError
from .spec import QuantSpec, Role

SLOTS = ("weight", "input", "a", "b")


def _check_pattern(pattern, where):
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where}: an override pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith("role:"):
        try:
            Role(pattern[5:])
        except ValueError:
            raise ConfigError(f"{where}: unknown role in override {pattern!r}; known: "
                              f"{', '.join(r.value for r in Role)}") from None
    elif pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ConfigError(f"{where}: bad regular expression in override {pattern!r}: {exc}") from None


def _check_rule(pattern, rule, where):
    if rule is None:
        return None
    if not isinstance(rule, dict):
        raise ConfigError(f"{where}: override {pattern!r} must map to None (keep float) or a dict of slots "
                          f"({', '.join(SLOTS)}), got {type(rule).__name__}")
    out = {}
    for slot, spec in rule.items():
        if slot not in SLOTS:
            raise ConfigError(f"{where}: override {pattern!r} has unknown slot {slot!r}; known: {', '.join(SLOTS)}")
        if isinstance(spec, dict):
            try:
                spec = QuantSpec.from_dict(spec)
            except TypeError as exc:
                raise ConfigError(f"{where}: override {pattern!r} slot {slot!r}: {exc}") from None
        if spec is not None and not isinstance(spec, QuantSpec):
            raise ConfigError(f"{where}: override {pattern!r} slot {slot!r} must be a QuantSpec, its dict or None")
        out[slot] = spec
    return out


def normalize_overrides(overrides, where="recipe"):
    """Checked `[(pattern, rule), …]` with dict specs turned into QuantSpecs; raises ConfigError on bad entries."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):  # {pattern: rule} keeps its order too
        overrides = list(overrides.items())
    out = []
    for entry in overrides:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ConfigError(f"{where}: each override is a (pattern, rule) pair, got {entry!r}")
        pattern, rule = entry
        _check_pattern(pattern, where)
        out.append((pattern, _check_rule(pattern, rule, where)))
    return out


def matches(pattern, name, role):
    if pattern.startswith("role:"):
        return Role(role).value == pattern[5:]
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def find_override(overrides, name, role):
    """(True, rule) of the first override matching the module, else (False, None)."""
    for pattern, rule in overrides:
        if matches(pattern, name, role):
            return True, rule
    return False, None


def overrides_to_dict(overrides):
    return [[p, None if r is None else {s: (v.to_dict() if v is not None else None) for s, v in r.items()}]
            for p, r in overrides]
