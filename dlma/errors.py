"""One exception type for everything a user can fix; the CLI prints its message as one line."""


class DLMAError(Exception):
    """Bad input or environment: the message says what is wrong and where (file, line, field)."""


def where(file: object, line: int | None = None, field: str | None = None) -> str:
    """`file:line: field 'x'` prefix for error messages."""
    out = str(file)
    if line is not None:
        out += f":{line}"
    if field is not None:
        out += f": field '{field}'"
    return out
