"""The documentation runs: every fenced code block of README.md and docs/*.md is executed, in order, as a reader
would type it, unless the Markdown says why not.

What a block is, by the language of its fence:

* ``python``: executed; the blocks of one page share their names, as in one interpreter session;
* ``bash``, ``sh``, ``console``: each command is run (``console``: the lines starting with ``$ ``; a trailing
  ``\\`` continues a line). ``dltricks ...`` runs the CLI in-process and must exit with status 0;
  ``python -m MODULE ...`` and ``python FILE.py ...`` run the module or script in-process; ``> FILE`` writes the
  output to FILE;
* ``yaml``: parsed (it must be valid YAML), and written to the page's folder when its first line names a file
  (``# space.yaml``), for the commands after it; ``text``: output, layouts and file trees, shown as they are.

A fence without a language is refused, so that nothing escapes by accident. Before a block, the comment
``<!-- not-run: REASON -->`` keeps the whole block from running, and ``<!-- not-run "PREFIX": REASON -->`` the
commands that start with PREFIX (e.g. ``"dltricks serve"``: a web server runs until stopped); a reason is
required.

Every page runs in its own fresh folder (so that a command uses only paths the commands before it created),
beside a link ``../shared`` to the real data sets, so ``--data-dir ../shared/data`` works as written. The
settings are shortened while the docs run (:func:`shortened`): at most 8 training samples and 16 validation
samples per data set (2 and 1 ISBI slices; ``subset`` / ``val_subset`` capped in ``build_task``), batches of at
most 8 (``load_recipe``), at most 2 optimizer steps per ``fit`` (the ``train.max_steps`` cap, so every run stops
early, evaluates and prints its metrics), segmentation windows side by side instead of overlapping
(``predict_sliding_window``), quick timings (``measure_speed``; in ``profile`` / ``compare`` at batch 1 without
memory and receptive-field measurements) and at most 2 trials per ``search``. What the commands compute is then
meaningless; that they run, with the arguments and paths the docs give, is what is tested.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
RUN = {"python", "bash", "sh", "shell", "console"}
SHOWN = {"yaml", "text"}
FENCE = re.compile(r"^```([\w+-]*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*not-run(?:\s+\"([^\"]+)\")?\s*:\s*(.*?)\s*-->", re.S)
# Pages that read the CIFAR-10 zip share one xdist worker with tests/test_data_images.py (one decode, one cache).
CIFAR_PAGES = {"README.md", "training.md", "data.md", "speedrun.md"}


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    body: str
    reason: str | None = None  # the whole block is not run
    skip: dict[str, str] = field(default_factory=dict)  # command prefix -> why it is not run

    @property
    def where(self) -> str:
        return f"{self.doc.name}:{self.line}"


def read_blocks(doc: Path) -> list[Block]:
    """The fenced blocks of ``doc``, each with the not-run comments written right before it (nothing but
    whitespace between them and the fence)."""
    text = doc.read_text(encoding="utf-8")
    blocks, previous_end = [], 0
    for m in FENCE.finditer(text):
        block = Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        before = text[previous_end:m.start()].rstrip()
        while before.endswith("-->") and "<!--" in before:
            start = before.rindex("<!--")
            marker = MARKER.fullmatch(before[start:])
            if marker is not None:
                prefix, reason = marker.groups()
                if prefix:
                    block.skip[prefix] = reason
                else:
                    block.reason = reason
            before = before[:start].rstrip()
        blocks.append(block)
        previous_end = m.end()
    return blocks


def commands(block: Block) -> Iterator[tuple[int, str]]:
    """``(line, command)`` of a shell block: continuation lines joined, comment-only and output lines left out."""
    pending, start = "", 0
    for offset, raw in enumerate(block.body.splitlines()):
        line = raw.rstrip()
        if block.lang == "console" and not pending:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        if not pending:
            start = block.line + 1 + offset
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = (pending + line.strip()).strip()
        pending = ""
        if text and not text.startswith("#"):
            yield start, text


# --- shortened settings --------------------------------------------------------------------------------------

def _replace_everywhere(monkeypatch: pytest.MonkeyPatch, original: Callable, wrapper: Callable) -> None:
    """Replace ``original`` by ``wrapper`` in every loaded dltricks module that holds it (``from X import f``
    copies the name; modules imported later take the replaced one from X)."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("dltricks"):
            for name, value in list(vars(module).items()):
                if value is original:
                    monkeypatch.setattr(module, name, wrapper)


@contextlib.contextmanager
def shortened(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import dltricks.commands.compare  # noqa: F401  (loaded, so that their imported names are replaced too)
    import dltricks.experiments.leaderboard as leaderboard
    import dltricks.measure.latency as latency
    import dltricks.measure.profile as profile
    import dltricks.search as searching
    import dltricks.tasks.base as tasks
    import dltricks.tasks.segmentation.evaluate  # noqa: F401  (loaded, so that its imported names are replaced too)
    import dltricks.tasks.segmentation.inference as inference
    import dltricks.train.recipe as recipes
    import dltricks.train.trainer as trainer
    from dltricks.train.recipe import Recipe

    build_task, fit, profile_model, compare_models, load_recipe = (
        tasks.build_task, trainer.fit, profile.profile_model, leaderboard.compare_models, recipes.load_recipe)
    measure_speed, search = latency.measure_speed, searching.search
    sliding_window = inference.predict_sliding_window

    def small_recipe(*args: Any, **kwargs: Any) -> Any:
        recipe = load_recipe(*args, **kwargs)
        if recipe.train.batch_size > 8:  # batches of at most 8
            recipe = load_recipe(recipe, [("train.batch_size", 8)] +
                                 ([("train.eval_batch_size", 16)] if recipe.train.eval_batch_size else []))
        return recipe

    def small_task(name: str, **options: Any) -> Any:
        # 16 validation samples (an evaluation that halves them still has some); ISBI slices are 512 x 512 px.
        isbi = name.startswith("isbi")
        for key, cap in (("subset", 2 if isbi else 8), ("val_subset", 1 if isbi else 16)):
            options[key] = min(options.get(key) or cap, cap)
        return build_task(name, **options)

    def short_fit(model: Any, task: Any, recipe: Any = None, **kwargs: Any) -> Any:
        recipe = recipe if isinstance(recipe, Recipe) else small_recipe(recipe)
        if not recipe.train.overfit_batch:
            recipe = load_recipe(recipe, [("train.max_steps", min(recipe.train.max_steps or 2, 2))])
        return fit(model, task, recipe, **kwargs)

    def quick_profile(*args: Any, **kwargs: Any) -> Any:
        return profile_model(*args, **{**kwargs, "quick": True, "batch": 1, "memory": False,
                                       "receptive_field": False})

    def quick_compare(*args: Any, **kwargs: Any) -> Any:
        return compare_models(*args, **{**kwargs, "quick": True})

    def quick_speed(*args: Any, **kwargs: Any) -> Any:
        return measure_speed(*args, **{**kwargs, "min_run_time": 0.01, "warmup": 1, "min_runs": 2})

    def short_search(*args: Any, **kwargs: Any) -> Any:
        return search(*args, **{**kwargs, "trials": min(kwargs.get("trials", 2), 2)})

    def tiled(*args: Any, **kwargs: Any) -> Any:
        # Windows side by side: 4 tiles of 256 px per 512 px slice instead of 9 (each run 8 times with flips).
        return sliding_window(*args, **{**kwargs, "overlap": 0.0})

    for original, wrapper in ((build_task, small_task), (fit, short_fit), (profile_model, quick_profile),
                              (compare_models, quick_compare), (load_recipe, small_recipe),
                              (measure_speed, quick_speed), (search, short_search), (sliding_window, tiled)):
        _replace_everywhere(monkeypatch, original, wrapper)
    yield


# --- running a page ------------------------------------------------------------------------------------------

def run_command(text: str, where: str) -> None:
    from dltricks.cli import main

    argv = shlex.split(text, comments=True)
    target = None
    if ">" in argv:
        target, argv = argv[argv.index(">") + 1], argv[:argv.index(">")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if target else contextlib.nullcontext():
        if argv[0] == "dltricks":
            status = main(argv[1:])
        elif argv[0] == "python" and len(argv) > 2 and argv[1] == "-m":
            status = _run_python(lambda: runpy.run_module(argv[2], run_name="__main__", alter_sys=True),
                                 [argv[2], *argv[3:]])
        elif argv[0] == "python" and len(argv) > 1 and argv[1].endswith(".py"):
            status = _run_python(lambda: runpy.run_path(argv[1], run_name="__main__"), argv[1:])
        else:
            pytest.fail(f"{where}: the doc runner cannot run `{text}`; write a command it runs, or mark the block "
                        f"(<!-- not-run: reason -->) or the command (<!-- not-run \"{argv[0]}\": reason -->)")
    if target:
        Path(target).write_text(out.getvalue())
    assert status == 0, f"{where}: `{text}` exited with status {status}"


def _run_python(call: Callable[[], Any], argv: list[str]) -> int:
    saved = sys.argv
    sys.argv = argv
    try:
        call()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def run_page(doc: Path, folder: Path) -> list[str]:
    """Run every block of ``doc`` in ``folder``; returns what was run (for the failure messages)."""
    namespace: dict[str, Any] = {"__name__": f"docs_{doc.stem}"}
    done = []
    for block in read_blocks(doc):
        if block.reason is not None or block.lang not in RUN | {"yaml"}:
            continue
        if block.lang == "yaml":
            yaml.safe_load(block.body)
            named = re.match(r"#\s*(\S+\.ya?ml)\s*\n", block.body)  # `# space.yaml` on the first line: a file
            if named:                                                 # the next commands read
                (folder / named.group(1)).write_text(block.body)
            continue
        if block.lang == "python":
            start = time.perf_counter()
            exec(compile(block.body, block.where, "exec"), namespace)  # noqa: S102 - the page's own snippet
            done.append(f"{block.where} {time.perf_counter() - start:.1f} s")
            print(done[-1], file=sys.__stderr__)
            continue
        for line, text in commands(block):
            if any(text.startswith(prefix) for prefix in block.skip):
                continue
            start = time.perf_counter()
            run_command(text, f"{doc.name}:{line}")
            done.append(f"{doc.name}:{line} {time.perf_counter() - start:.1f} s")
            print(done[-1], file=sys.__stderr__)
    return done


def test_every_block_says_what_it_is():
    problems = []
    for doc in DOCS:
        for block in read_blocks(doc):
            if block.lang not in RUN | SHOWN:
                problems.append(f"{block.where}: fence language {block.lang!r}; expected one of "
                                f"{', '.join(sorted(RUN | SHOWN))}")
            if block.reason is not None and not block.reason:
                problems.append(f"{block.where}: not-run without a reason")
            if any(not reason for reason in block.skip.values()):
                problems.append(f"{block.where}: a not-run command without a reason")
            if block.lang in RUN and block.reason is None and re.search(r"<\w+>", block.body):
                problems.append(f"{block.where}: a placeholder such as runs/<run> cannot run; use the path an "
                                "earlier command creates")
    assert not problems, "\n".join(problems)


def test_markers_are_read(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("intro\n\n<!-- not-run: needs a GPU -->\n```bash\nx\n```\n\ntext\n\n"
                   "<!-- not-run \"dltricks serve\": a server -->\n```bash\ndltricks serve\n```\n\n"
                   "```python\npass\n```\n")
    first, second, third = read_blocks(doc)
    assert first.reason == "needs a GPU" and second.reason is None and second.skip == {"dltricks serve": "a server"}
    assert third.reason is None and not third.skip and third.lang == "python"
    assert list(commands(Block(doc, 1, "console", "$ dltricks a \\\n    --b\noutput\n$ dltricks c\n"))) == \
        [(2, "dltricks a --b"), (5, "dltricks c")]


@pytest.mark.slow
@pytest.mark.parametrize("doc", [pytest.param(d, marks=pytest.mark.xdist_group("cifar10-zip"))
                                 if d.name in CIFAR_PAGES else d for d in DOCS], ids=lambda p: p.name)
def test_doc_runs(doc, tmp_path, monkeypatch, shared_data):
    (tmp_path / "shared").symlink_to(shared_data.parent, target_is_directory=True)
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with shortened(monkeypatch):
        run_page(doc, folder)
    os.chdir(ROOT)
