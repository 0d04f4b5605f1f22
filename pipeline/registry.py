"""One parser for every comma list the user gives: poolings, heads, tasks, sizes."""

from collections.abc import Iterable

from pipeline.errors import PipelineError


def parse_names(spec: str | Iterable[str], registry: Iterable[str] | None, kind: str) -> list[str]:
    """'a,b' or 'all' -> the names, validated against `registry` and in its order (None: any names, as given).

    The option is named after `kind` (--pooling, --head, --tasks, --sizes) so the message fits a caller and a CLI
    user alike. Empty lists (',' or '') and unknown names are refused with the known ones."""
    names = list(dict.fromkeys(n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)
                               if n.strip()))
    known = None if registry is None else list(registry)
    choices = f"choose from {', '.join(known)} or 'all'" if known is not None else "give a comma list"
    if not names:
        raise PipelineError(f"no {kind} given in {spec!r}: {choices}")
    if known is None:
        return names
    if names == ["all"]:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PipelineError(f"unknown {kind} {', '.join(map(repr, unknown))}: {choices}")
    return [n for n in known if n in names]


def parse_sizes(spec: str, kind: str = "size") -> list[int]:
    """'1000,4000' -> [1000, 4000]; anything but positive whole numbers is refused with the offending item."""
    sizes = []
    for name in parse_names(spec, None, kind):
        if not name.isdigit() or int(name) < 1:
            raise PipelineError(f"{kind} {name!r} in {spec!r} is not a positive whole number: "
                                "give a comma list like 1000,4000")
        sizes.append(int(name))
    return sizes
