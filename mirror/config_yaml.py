"""Reading images.yaml (and a --map-file): the YAML document as PyYAML's node tree, lines kept,
so that every error names file:line and the key (Ctx: a mapping's keys checked, a scalar's
type, a choice, a list); what the keys mean is mirror.config's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mirror.errors import ConfigError

if TYPE_CHECKING:
    import yaml
else:
    class _Yaml:
        """PyYAML, imported when a config file is first read: a run given its images on the
        command line does not need it (0.9 MiB of a pull's memory). mirror.config holds this
        proxy, not the module: each name it looks up becomes the proxy's own the first time."""

        def __getattr__(self, name: str) -> Any:
            import yaml as module

            globals()["yaml"] = module
            value = getattr(module, name)
            setattr(self, name, value)
            return value

    yaml = _Yaml()


def _close(word: str, choices: tuple[str, ...]) -> list[str]:
    """The choice closest to a misspelt `word`, if any (difflib: imported for an error)."""
    import difflib

    return difflib.get_close_matches(word, choices, n=1)


class Ctx:
    """One file's reader: its path, for the messages."""

    def __init__(self, path: str) -> None:
        self.path = path

    def err(self, node: yaml.Node | None, msg: str, hint: str | None = None) -> ConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return ConfigError(f"{self.path}{line}: {msg}", hint=hint)

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]
                ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, f"{what} must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = str(k.value)
            if allowed and key not in allowed:
                close = _close(key, allowed)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.err(k, f"unknown key {key!r} in {what}{hint}",
                               hint="allowed: " + ", ".join(allowed))
            if key in out:
                raise self.err(k, f"duplicate key {key!r} in {what}")
            out[key] = (k, v)
        return out

    def scalar(self, node: yaml.Node, key: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.value == "":
            raise self.err(node, f"{key!r} must be a non-empty string")
        return str(node.value)

    def typed(self, node: yaml.Node, key: str, kind: str, expected: str) -> str:
        """The text of a scalar of YAML type `kind` (bool, int): a quoted "true" or "1" is a
        string, refused as such (file:line, the key, the type expected)."""
        if isinstance(node, yaml.ScalarNode) and node.tag == f"tag:yaml.org,2002:{kind}":
            return str(node.value)
        hint = None
        if not isinstance(node, yaml.ScalarNode):
            got = "a list or a mapping"
        elif node.tag.endswith(":str") and node.style in ("'", '"'):
            got = f'the string "{node.value}"'
            hint = f"write it without quotes: {key}: {node.value}"
        elif node.tag.endswith(":null"):
            got = "nothing"
        else:
            got = repr(node.value)
        raise self.err(node, f"{key!r} must be {expected}, not {got}", hint)

    def boolean(self, node: yaml.Node, key: str) -> bool:
        # YAML 1.1 (PyYAML) reads true/false, yes/no and on/off as booleans
        v = self.typed(node, key, "bool", "true or false (a boolean)").lower()
        return v in ("true", "yes", "on")

    def integer(self, node: yaml.Node, key: str) -> int:
        v = self.typed(node, key, "int", "an integer")
        try:
            return int(v)
        except ValueError:  # YAML 1.1 ints Python does not read (0x1f, 0o7, 1:30)
            raise self.err(node, f"{key!r} must be a decimal integer, not {v!r}") from None

    def choice(self, node: yaml.Node, key: str, choices: tuple[str, ...]) -> str:
        v = self.scalar(node, key)
        if v not in choices:
            close = _close(v, choices)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.err(node, f"{key!r} must be one of {', '.join(choices)}, not {v!r}{hint}")
        return v

    def str_list(self, node: yaml.Node, key: str) -> list[str]:
        if isinstance(node, yaml.ScalarNode):
            return [self.scalar(node, key)]
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.err(node, f"{key!r} must be a string or a non-empty list")
        return [self.scalar(n, key) for n in node.value]


def compose(text: str, path: str) -> yaml.Node:
    """The YAML document's node tree (lines kept for messages); not empty."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {e.problem}") from None
    if root is None:
        raise ConfigError(f"{path}: empty file", hint="list images under `images:`")
    return root
