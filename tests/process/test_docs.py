"""The docs cannot drift from the code. Every `bert-pipeline` command and option and every `make` target and variable
shown in README.md and docs/*.md must exist (read from the click command tree and the Makefile), every relative link
must reach a file and heading, every file and name the pages point into must exist, and the README's quick start is
run as written, on the tiny model, through the real console script. Text inside HTML comments is not checked: it is
where pages that do not exist yet are listed."""

import csv
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import click

from pipeline.cli import cli

from conftest import sentiment_rows, write_csv

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONSOLE = Path(sys.executable).parent / "bert-pipeline"
HELP = {"-h", "--help"}
ROWS = 60  # toy rows per data file of the quick start

COMMENT = re.compile(r"<!--.*?-->", re.S)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
NAME_IN_FILE = re.compile(r"`(\w+)`(?:\s+\w+)?\s+(?:in|\()\s*`((?:pipeline|tests)/[\w/]+\.py)`")
REPO_PATH = re.compile(r"(?:pipeline|tests)/[\w/.-]*")


def page_text(page: Path) -> str:
    return COMMENT.sub("", page.read_text(encoding="utf-8"))


def code_lines(text: str) -> list[str]:
    """What the page shows as code: each line of a fenced block (continuations joined, `#` comments cut) and each
    inline code span (one line, even when it wraps)."""
    lines = []
    for block in FENCE.findall(text):
        lines += [re.split(r"(?:^|\s)#", line, maxsplit=1)[0] for line in block.replace("\\\n", " ").splitlines()]
    return lines + [span.replace("\n", " ") for span in INLINE.findall(FENCE.sub("", text))]


def words(rest: str) -> list[str]:
    """The words of one command, up to the next shell separator; unbalanced quotes fall back to plain splitting."""
    rest = re.split(r"[;|&]", rest, maxsplit=1)[0]
    try:
        return shlex.split(rest)
    except ValueError:
        return rest.split()


def invocations(program: str) -> list[tuple[str, list[str]]]:
    """(page name, words after `program`) for every command line of `program` shown in the docs."""
    found = []
    for page in PAGES:
        for line in code_lines(page_text(page)):
            for match in re.finditer(rf"(?:^|[\s/(]){re.escape(program)}\s+(\S.*)", line):
                found.append((page.name, words(match.group(1))))
    return found


def command_problem(argv: list[str]) -> str | None:
    """Why `bert-pipeline <argv>` would be refused for an unknown command or option; None when it is known. Words in
    <angle brackets> or an ellipsis stand for any command."""
    command, path = cli, ["bert-pipeline"]
    rest = list(argv)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        if rest[0].startswith(("<", "...")):
            return None
        sub = command.commands.get(rest[0])
        if sub is None:
            return f"{' '.join(path)} has no command {rest[0]!r}"
        command, path, rest = sub, [*path, rest.pop(0)], rest
    known = HELP | {name for p in command.params for name in (*p.opts, *p.secondary_opts)}
    unknown = [w.split("=")[0] for w in rest if re.match(r"--?[a-zA-Z]", w) and w.split("=")[0] not in known]
    return f"{' '.join(path)} has no option {unknown[0]}" if unknown else None


@cache
def makefile() -> tuple[dict[str, str], dict[str, str]]:
    """The Makefile's variable definitions (name -> value) and rules (target -> prerequisites and recipe)."""
    definitions, rules, current = {}, {}, None
    for line in (ROOT / "Makefile").read_text().replace("\\\n", " ").splitlines():
        if line.startswith("\t") and current:
            rules[current] += "\n" + line
        elif match := re.match(r"^(\w+)\s*[?:]?=\s*(.*)$", line):
            definitions[match.group(1)], current = match.group(2), None
        elif match := re.match(r"^([^\s#][^:=]*?)\s*:(?!=)\s*(.*)$", line):
            current = match.group(1)
            rules[current] = match.group(2)
        else:
            current = None
    return definitions, rules


def variables_read(target: str) -> set[str]:
    """Every variable `make <target>` reads: named in its rule, in the rules it depends on, and in the definitions
    those name, transitively."""
    definitions, rules = makefile()
    pending, names, seen_rules = [rules[target]], set(), {target}
    while pending:
        text = pending.pop()
        for prerequisite in text.split("\n", 1)[0].split():
            if prerequisite in rules and prerequisite not in seen_rules:
                seen_rules.add(prerequisite)
                pending.append(rules[prerequisite])
        for name in re.findall(r"\$\((\w+)\)|call opt,(\w+),|origin (\w+)", text):
            name = "".join(name)
            if name not in names:
                names.add(name)
                pending.append(definitions.get(name, ""))
    return names


def make_problem(argv: list[str]) -> str | None:
    """Why `make <argv>` names a target the Makefile lacks, or sets a variable that none of its targets reads."""
    _, rules = makefile()
    targets = [w for w in argv if "=" not in w and not w.startswith("-")]
    if missing := [t for t in targets if t not in rules or t.startswith(".")]:
        return f"the Makefile has no target {missing[0]!r}"
    default = next(t for t in rules if not t.startswith((".", "$")))  # make's default goal
    read = set().union(*(variables_read(t) for t in targets or [default]))
    unread = [w.split("=")[0] for w in argv if "=" in w and w.split("=")[0] not in read]
    return f"make {' '.join(targets)} reads no variable {unread[0]}" if unread else None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#+\s+(.*)$", FENCE.sub("", page_text(page)), re.M):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def link_problems(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(INLINE.sub("", FENCE.sub("", page_text(page)))):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.name}: link to missing {path}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{page.name}: no heading #{anchor} in {file.name}")
    return problems


def pointer_problems(page: Path) -> list[str]:
    """Files the page names (`pipeline/...`, `tests/...`) and names it places in them (`HEADS` in `pipeline/...py`)."""
    text = re.sub(r"\s+", " ", FENCE.sub("", page_text(page)))
    spans = INLINE.findall(text)
    problems = [f"{page.name}: no file {s}" for s in spans if REPO_PATH.fullmatch(s) and not (ROOT / s).exists()]
    for name, file in NAME_IN_FILE.findall(text):
        source = (ROOT / file).read_text() if (ROOT / file).is_file() else ""
        if not re.search(rf"^(?:def |class )?{name}\b", source, re.M):
            problems.append(f"{page.name}: {file} defines no {name}")
    return problems


def test_the_checks_refuse_what_does_not_exist(tmp_path):
    assert command_problem(["embed", "--pooling", "mean"]) is None
    assert command_problem(["bench", "speed", "--sizes=1000", "-h"]) is None
    assert command_problem(["<command>", "--help"]) is None and command_problem(["..."]) is None
    assert "no command 'serve2'" in command_problem(["serve2"])
    assert "no command 'fast'" in command_problem(["bench", "fast"])
    assert "no option --batch-size" in command_problem(["embed", "--batch-size", "8"])
    assert "no option --runtime" in command_problem(["predict", "--runtime", "torch"])
    assert make_problem(["demo", "TORCH_SPEC=torch", "DTYPE=fp32"]) is None
    assert "no target 'deploy'" in make_problem(["deploy"])
    assert "reads no variable ENGINE" in make_problem(["train", "ENGINE=ray"])
    assert slug("Score a labelled file: `--label-col`") == "score-a-labelled-file---label-col"
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](#top) [bad](#nowhere) [gone](missing.md) <!-- [later](later.md) -->\n"
                    "`HEADS` in `pipeline/train/heads.py`, `NOPE` in `pipeline/train/heads.py`, `pipeline/nope.py`\n")
    assert link_problems(page) == ["page.md: no heading #nowhere in page.md", "page.md: link to missing missing.md"]
    assert pointer_problems(page) == ["page.md: no file pipeline/nope.py",
                                      "page.md: pipeline/train/heads.py defines no NOPE"]


def test_every_documented_command_and_option_exists():
    shown = invocations("bert-pipeline")
    assert len(shown) > 30 and {w[0] for _, w in shown if w} >= {"embed", "train", "predict", "export", "bench"}
    problems = [f"{page}: bert-pipeline {' '.join(argv)}: {why}" for page, argv in shown
                if (why := command_problem(argv))]
    assert not problems, "\n".join(problems)


def test_every_documented_make_target_and_variable_exists():
    shown = [(page, argv) for page, argv in invocations("make") if argv]
    assert len(shown) > 30
    problems = [f"{page}: make {' '.join(argv)}: {why}" for page, argv in shown if (why := make_problem(argv))]
    assert not problems, "\n".join(problems)


def test_every_relative_link_and_named_file_exists():
    problems = [p for page in PAGES for p in (*link_problems(page), *pointer_problems(page))]
    assert not problems, "\n".join(problems)


def test_readme_links_every_docs_page_and_stays_short():
    readme = page_text(ROOT / "README.md")
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def quick_start() -> list[list[str]]:
    """The `bert-pipeline` lines of the first code block under the README's "Quick start" heading."""
    section = page_text(ROOT / "README.md").split("\n## Quick start", 1)[1]
    block = FENCE.search(section).group(1)
    return [words(line)[1:] for line in code_lines(f"```\n{block}```\n") if line.startswith("bert-pipeline ")]


def test_readme_quick_start_runs_as_written(tiny_bert, tmp_path):
    commands = quick_start()
    assert [argv[0] for argv in commands][:2] == ["embed", "train"] and commands[-1][0] == "predict"
    # this checkout's code, and the test session's private $XDG_CACHE_HOME (set by conftest) for hashes and graphs
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for argv in commands:
        options = dict(zip(argv, argv[1:], strict=False))
        for data in (options.get("--data"), options.get("--input")):
            if data and not (tmp_path / data).exists():
                write_csv(tmp_path / data, sentiment_rows(ROWS))
        model = ["--model", str(tiny_bert)] if argv[0] in ("embed", "train") and "--model" not in argv else []
        done = subprocess.run([str(CONSOLE), *argv, *model], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"bert-pipeline {' '.join(argv)}:\n{done.stderr[-2000:]}"
        if "--text" in argv:
            assert done.stdout.split("\t")[0] in ("positive", "negative"), done.stdout
        if "--output" in argv:
            with (tmp_path / options["--output"]).open() as f:
                rows = list(csv.DictReader(f))
            assert len(rows) == ROWS and {r["predicted_label"] for r in rows} <= {"positive", "negative"}
