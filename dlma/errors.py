"""One exception type for everything a user can fix; the CLI prints its message as one line."""
import difflib


class DLMAError(Exception):
    """Bad input or environment: the message says what is wrong and where (file, line, field), on one line (a
    line break that came with a user's value or a library's text is written as \\n)."""

    def __str__(self) -> str:
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")

    def _render_traceback_(self) -> list[str]:
        """How IPython (a notebook's kernel, hence papermill) shows it: the one line, not a traceback of dlma's
        internals in front of it."""
        return [f"DLMAError: {self}"]


def did_you_mean(word: str, names, quote: str = "'", cutoff: float = 0.6) -> str:
    """` (did you mean 'x'?)` for the name of `names` nearest to a misspelt `word`; "" when none is near."""
    near = difflib.get_close_matches(word, list(names), n=1, cutoff=cutoff)
    return f" (did you mean {quote}{near[0]}{quote}?)" if near else ""


def where(file: object, line: int | None = None, field: str | None = None) -> str:
    """`file:line: field 'x'` prefix for error messages."""
    out = str(file)
    if line is not None:
        out += f":{line}"
    if field is not None:
        out += f": field '{field}'"
    return out


def check_fields(obj: object, rules: list[tuple[bool, tuple[str, ...], str]]) -> None:
    """Raise on the first rule that does not hold: `Config: field=value: rule`. Rules are
    (holds, the fields it is about, what must hold), so each config states its checks as a table."""
    for holds, names, rule in rules:
        if not holds:
            got = ", ".join(f"{n}={getattr(obj, n)!r}" for n in names)
            raise DLMAError(f"{type(obj).__name__}: {got}: {rule}")
