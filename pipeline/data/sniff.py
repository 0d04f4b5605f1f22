"""Tell what a file really is when it is not what its name says: a workbook or UTF-16 file named .csv, binary
data, a semicolon-separated CSV, one JSON array named .jsonl, a text file named .parquet. A reader that fails on such
a file would give a misleading error (a decode error at byte 0, 'no text column'); these checks name the real problem
and the fix.
"""

import json
import re
from pathlib import Path

from pipeline.errors import PipelineError

RESAVE = "re-save it as UTF-8, e.g. iconv -f {source} -t utf-8 {name} > fixed{suffix}"
EXPORT = "open it in Excel and export it as CSV (File > Save As > CSV UTF-8)"

# Leading bytes of files that often get a .csv/.tsv/.jsonl name by mistake: what the file really is, and the fix
# (UTF-32 before UTF-16, whose byte-order mark it starts with).
SIGNATURES = (
    (b"\xff\xfe\x00\x00", "UTF-32 text, not UTF-8", RESAVE.replace("{source}", "utf-32")),
    (b"\x00\x00\xfe\xff", "UTF-32 text, not UTF-8", RESAVE.replace("{source}", "utf-32")),
    (b"\xff\xfe", "UTF-16 text, not UTF-8", RESAVE.replace("{source}", "utf-16")),
    (b"\xfe\xff", "UTF-16 text, not UTF-8", RESAVE.replace("{source}", "utf-16")),
    (b"PK\x03\x04", "an Excel workbook (a zip archive), not a text table", EXPORT),
    (b"\xd0\xcf\x11\xe0", "an old-style Excel workbook (.xls), not a text table", EXPORT),
    (b"PAR1", "a Parquet file", "rename it to end in .parquet"),
    (b"\x1f\x8b", "gzip-compressed", "unpack it first, e.g. gzip -dc {name} > unpacked{suffix}"),
)


def not_utf8(path: Path, raw: bytes, exc: UnicodeDecodeError) -> PipelineError:
    """The error for a file that is not UTF-8, naming the line and the likely real encoding (shared by all readers)."""
    line = raw[: exc.start].count(b"\n") + 1
    # Bytes 0x80-0x9f are control codes in latin-1 but curly quotes, dashes and the euro sign in Windows-1252.
    source = "windows-1252" if re.search(rb"[\x80-\x9f]", raw) else "latin1"
    fix = RESAVE.format(source=source, name=path.name, suffix=path.suffix or ".txt")
    return PipelineError(f"{path} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}): {fix}")


def refuse_non_text(path: Path, raw: bytes, fmt: str) -> None:
    """Name what a wrong file really is (a workbook, UTF-16, binary) instead of a misleading decode or parse error."""
    for magic, what, fix in SIGNATURES:
        if raw.startswith(magic):
            raise PipelineError(f"{path} is {what}: {fix.format(name=path.name, suffix=path.suffix)}")
    nul = raw.find(b"\x00")
    if nul < 0:
        return
    utf16 = _utf16_without_bom(raw)
    if utf16:
        fix = RESAVE.format(source=utf16, name=path.name, suffix=path.suffix)
        raise PipelineError(f"{path} looks like UTF-16 text without a byte-order mark, not UTF-8: {fix}")
    line = raw[:nul].count(b"\n") + 1
    raise PipelineError(f"{path} holds binary data (a NUL byte on line {line}), not {fmt.upper()} text: "
                        "export the data as a UTF-8 CSV, TSV or JSON Lines file")


def _utf16_without_bom(raw: bytes) -> str | None:
    """'utf-16be' or 'utf-16le' when the bytes look like mostly-ASCII UTF-16 (a NUL in every other byte), else None."""
    sample = raw[:2000]
    if len(sample) < 4:
        return None
    for encoding, half in (("utf-16be", sample[0::2]), ("utf-16le", sample[1::2])):
        if half.count(0) > 0.9 * len(half):
            return encoding
    return None


def separator_hint(names: list[str]) -> str | None:
    """What a one-column header says about the file's real separator (None when nothing), for reader and loader."""
    if len(names) != 1:
        return None
    name = names[0]
    if "\t" in name:
        return "the file looks tab-separated: name it .tsv"
    if ";" in name:
        return ("the file is semicolon-separated: re-export it with commas (.csv) or tabs (.tsv) as the separator "
                "(or quote the header if ';' belongs in the column name)")
    if "," in name:
        return "the file looks comma-separated: name it .csv"
    return None


def refuse_single_document(path: Path, text: str) -> None:
    """A .json file holding one array, or one object spread over lines, is JSON but not JSON Lines: say that rather
    than 'line 1 is not valid JSON'. A JSON Lines file with more than one record fails this parse at line 2."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError):  # too deep: the line reader names the line
        return
    if isinstance(document, list):
        raise PipelineError(f"{path} holds one JSON array, not JSON Lines: write one object per line, "
                            f"e.g. jq -c '.[]' {path.name} > data.jsonl")
    if isinstance(document, dict) and "\n" in text.strip():
        raise PipelineError(f"{path} holds one JSON object spread over several lines, not JSON Lines: "
                            f"write one object per line, e.g. jq -c . {path.name} > data.jsonl")


def refuse_non_parquet(path: Path) -> None:
    """A text or workbook file named .parquet: say what it is instead of 'check that the file is complete'."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise PipelineError(f"cannot read {path}: {exc.strerror or exc} (check its permissions)") from None
    if head.startswith((b"PAR1", b"PARE")):  # PARE: an encrypted footer, left to pyarrow
        return
    if not head:
        raise PipelineError(f"data file is empty: {path} (write the table to it again)")
    for magic, what, fix in SIGNATURES:
        if head.startswith(magic) and magic != b"PAR1":
            raise PipelineError(f"{path} is {what}: {fix.format(name=path.name, suffix='.csv')}")
    raise PipelineError(f"{path} is not a Parquet file (it does not start with PAR1): "
                        "give it the suffix of its real format (.csv, .tsv or .jsonl)")
