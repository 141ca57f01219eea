"""Docs that run: the fenced ```bash and ```python blocks of README.md and
docs/**/*.md are executed, page by page in document order, from the root of a
temporary copy of the repository where ``python tools/make_demo_data.py --out
data/demo`` has been run (``python`` is this interpreter).

Conventions of the pages (docs/notes/faq.md and the pages themselves use them):

- ``<!-- not-run: REASON -->`` on the line just before a fence: the block is
  not executed (it needs COCO, a GPU, more time than CI has); the reason is
  required. Commands of such blocks that start a ``tools/*.py`` script are
  still checked: their arguments must parse (the script's own argparse
  parser, stopped right after parsing).
- ``<!-- checked-output -->`` before a ```text block right after a run block:
  every line of that text must appear, in order, in the block's output.
- ``<!-- measured-table: FILE ... -->`` on the line before a table: a long
  measurement's table; each header cell must be a column name that FILE
  (the script, or the module that formats its table) prints.
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = ('bash', 'python')
BLOCK_TIMEOUT_S = 300
README_LIMIT = 12 * 1024
NOT_RUN = re.compile(r'^<!--\s*not-run:(.*?)-->\s*$')
CHECKED = re.compile(r'^<!--\s*checked-output\s*-->\s*$')
MEASURED = re.compile(r'^<!--\s*measured-table:(.*?)-->\s*$')
FENCE = re.compile(r'^(`{3,})\s*([^`\s]*)')
# Not copied into the sandbox: git data, environments, outputs.
SKIP_TOP = {'.git', '.venv', 'work_dirs', 'data', 'build', 'vis', 'outputs', '.pytest_cache',
            '.ruff_cache'}


def doc_pages() -> List[Path]:
    """README.md and the docs tree's pages (not the build, not script outputs)."""
    pages = [ROOT / 'README.md']
    for path in sorted((ROOT / 'docs').rglob('*.md')):
        rel = path.relative_to(ROOT / 'docs').parts
        if rel[0] not in ('_build', 'benchmarks'):
            pages.append(path)
    return pages


@dataclass
class Block:
    page: Path
    line: int            # 1-based line of the opening fence
    lang: str
    code: str
    not_run: Optional[str] = None    # the reason, when marked not-run
    expected: Optional[str] = None   # the checked output, if any

    @property
    def where(self) -> str:
        return f'{self.page.relative_to(ROOT)}:{self.line}'


def parse_page(path: Path) -> List[Block]:
    """Every fenced block of a page, with its markers."""
    lines = path.read_text(encoding='utf-8').split('\n')
    blocks: List[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        if end == len(lines):
            raise AssertionError(f'{path}:{i + 1}: fence never closed')
        block = Block(path, i + 1, lang, '\n'.join(lines[i + 1:end]))
        marker = NOT_RUN.match(lines[i - 1]) if i > 0 else None
        if marker:
            block.not_run = marker.group(1).strip()
        blocks.append(block)
        i = end + 1
    # Attach each checked output to the block before it.
    for k, block in enumerate(blocks):
        start = block.line - 1
        before = [ln for ln in lines[:start]][::-1]
        prev_nonblank = next((ln for ln in before if ln.strip()), '')
        if CHECKED.match(prev_nonblank):
            assert block.lang == 'text', f'{block.where}: checked-output needs a ```text block'
            assert k > 0 and blocks[k - 1].lang in RUN_LANGS and blocks[k - 1].not_run is None, (
                f'{block.where}: checked output must follow a block that is run')
            blocks[k - 1].expected = block.code
    return blocks


PAGES = doc_pages()
BLOCKS: Dict[Path, List[Block]] = {page: parse_page(page) for page in PAGES}
RUN_PAGES = [page for page in PAGES
             if any(b.lang in RUN_LANGS and b.not_run is None for b in BLOCKS[page])]


def _ids(pages: List[Path]) -> List[str]:
    return [str(p.relative_to(ROOT)) for p in pages]


# ---------------------------------------------------------------- static checks

def test_readme_is_short():
    size = (ROOT / 'README.md').stat().st_size
    assert size <= README_LIMIT, f'README.md is {size} bytes, more than {README_LIMIT}'


def test_markers_are_well_formed():
    """Every not-run marker gives a reason and stands on the line just before
    a bash/python fence; no marker is misspelt into silence."""
    problems = []
    for page in PAGES:
        lines = page.read_text(encoding='utf-8').split('\n')
        for n, line in enumerate(lines):
            where = f'{page.relative_to(ROOT)}:{n + 1}'
            if 'not-run' in line:
                m = NOT_RUN.match(line)
                if not m or not m.group(1).strip():
                    problems.append(f'{where}: not-run marker without a reason: {line!r}')
                    continue
                fence = FENCE.match(lines[n + 1]) if n + 1 < len(lines) else None
                if not fence or fence.group(2) not in RUN_LANGS:
                    problems.append(f'{where}: not-run marker not right before a bash/python fence')
            elif line.lstrip().startswith('<!--') and not (
                    CHECKED.match(line) or MEASURED.match(line)):
                problems.append(f'{where}: unknown marker {line!r}')
        for block in BLOCKS[page]:
            if block.lang == '' :
                problems.append(f'{block.where}: fence without a language (bash, python, text)')
    assert not problems, '\n'.join(problems)


def test_every_page_has_runnable_or_explained_blocks():
    """At least the quick variants run: the docs are not all marked not-run."""
    run = sum(b.lang in RUN_LANGS and b.not_run is None for bs in BLOCKS.values() for b in bs)
    assert run >= 20, f'only {run} blocks are run'


LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def test_relative_links_resolve():
    """Links and images between pages point at files that exist (Sphinx
    checks the docs tree too; README is not part of its build)."""
    missing = []
    for page in PAGES:
        text = re.sub(r'```.*?```', '', page.read_text(encoding='utf-8'), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r'^[a-z]+:', target) or target.startswith('#'):
                continue
            path = (page.parent / target.split('#')[0]).resolve()
            if not path.exists():
                missing.append(f'{page.relative_to(ROOT)}: {target}')
    assert not missing, 'broken links:\n' + '\n'.join(missing)


# ------------------------------------------------------------ measured tables

def _column_patterns(path: Path) -> List[re.Pattern]:
    """What a file can print as a column name: its string constants and
    f-strings (placeholders match anything), also split at '|'."""
    patterns = []

    def add(parts: List[str]) -> None:
        text = ''.join(parts)
        for piece in (text, *text.split('|')):
            piece = piece.strip()
            # An f-string that is mostly placeholders would match any name.
            if piece and ('\0' not in piece
                          or sum(ch.isalnum() for ch in piece.replace('\0', '')) >= 3):
                patterns.append(re.compile(re.escape(piece).replace(re.escape('\0'), '.+')))

    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.JoinedStr):
            add([v.value if isinstance(v, ast.Constant) else '\0' for v in node.values])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            add([node.value])
    return patterns


def _measured_tables():
    for page in PAGES:
        lines = page.read_text(encoding='utf-8').split('\n')
        for n, line in enumerate(lines):
            m = MEASURED.match(line)
            if m:
                yield page, n + 1, m.group(1).split(), lines[n + 1]


MEASURED_TABLES = list(_measured_tables())


def test_measured_tables_exist():
    assert len(MEASURED_TABLES) >= 8, 'the measurement tables lost their markers'


@pytest.mark.parametrize('page,line,files,header', MEASURED_TABLES,
                         ids=[f'{p.relative_to(ROOT)}:{n}' for p, n, _, _ in MEASURED_TABLES])
def test_measured_table_header_matches_script(page, line, files, header):
    assert header.startswith('|'), f'{page}:{line}: a measured-table marker must precede a table'
    patterns = []
    for name in files:
        assert (ROOT / name).is_file(), f'{page}:{line}: {name} does not exist'
        patterns += _column_patterns(ROOT / name)
    cells = [c.strip().replace('`', '') for c in header.strip().strip('|').split('|')]
    unknown = [c for c in cells if not any(p.fullmatch(c) for p in patterns)]
    assert not unknown, (f'{page.relative_to(ROOT)}:{line}: columns {unknown} are not printed by '
                         f'{", ".join(files)}')


# ------------------------------------------------- not-run commands still parse

PARSE_ONLY = r'''
import argparse, json, os, runpy, sys, traceback


class Parsed(Exception):
    pass


depth = [0]


def stop(parse):
    # parse_args calls parse_known_args (then rejects extra arguments): stop
    # only when the outermost call returns.
    def parse_and_stop(self, *args, **kwargs):
        depth[0] += 1
        try:
            result = parse(self, *args, **kwargs)
        finally:
            depth[0] -= 1
        if depth[0]:
            return result
        raise Parsed
    return parse_and_stop


argparse.ArgumentParser.parse_args = stop(argparse.ArgumentParser.parse_args)
argparse.ArgumentParser.parse_known_args = stop(argparse.ArgumentParser.parse_known_args)
failures = []
for argv in json.load(open(sys.argv[1])):
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    try:
        runpy.run_path(argv[0], run_name='__main__')
        failures.append([argv, 'finished without parsing arguments'])
    except Parsed:
        pass
    except SystemExit as e:
        failures.append([argv, f'exit {e.code} while parsing its arguments'])
    except Exception:
        failures.append([argv, traceback.format_exc(limit=3)])
    finally:
        sys.path.pop(0)
print(json.dumps(failures))
'''
TOOL_CMD = re.compile(r'^(?:[A-Z_]+=\S+\s+)*(?:\S*/)?python\s+(tools/\S+\.py)(.*)$')
ASSIGN = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=\S*$')


def _record_script(block: Block) -> Optional[str]:
    """A bash script that prints the argv (expanded as bash would) of each
    tool command of the block, one per line, fields separated by \\x1f."""
    lines, out, tools = block.code.replace('\\\n', ' ').split('\n'), [], 0
    for line in lines:
        line = re.sub(r'\s+#.*$', '', line).strip()
        if ASSIGN.match(line):
            out.append(line)
            continue
        m = TOOL_CMD.match(line)
        if m and '<' not in line:
            out.append(f'record {m.group(1)}{m.group(2)}')
            tools += 1
    if not tools:
        return None
    return "record() { printf '%s\\x1f' \"$@\"; printf '\\n'; }\n" + '\n'.join(out)


NOT_RUN_COMMANDS = [b for page in PAGES for b in BLOCKS[page]
                    if b.lang == 'bash' and b.not_run and _record_script(b)]


def test_not_run_commands_parse(tmp_path):
    """The arguments of every tool command that is not run parse: each
    script runs in one shared process until its argparse parser returns."""
    commands = []
    for block in NOT_RUN_COMMANDS:
        out = subprocess.run(['bash', '-e', '-c', _record_script(block)], text=True, check=True,
                             stdout=subprocess.PIPE).stdout
        commands += [line.split('\x1f')[:-1] for line in out.splitlines() if line]
    assert len(commands) >= 15, commands
    (tmp_path / 'commands.json').write_text(json.dumps(commands))
    (tmp_path / 'parse_only.py').write_text(PARSE_ONLY)
    proc = subprocess.run([sys.executable, str(tmp_path / 'parse_only.py'),
                           str(tmp_path / 'commands.json')], cwd=ROOT, env=_env(ROOT), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    failures = json.loads(proc.stdout.strip().split('\n')[-1])
    assert not failures, '\n'.join(f'{" ".join(argv)}: {why}' for argv, why in failures)


# --------------------------------------------------------------- run the docs

def _env(root: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env['PATH'] = os.pathsep.join([str(Path(sys.executable).parent), env.get('PATH', '')])
    env['PYTHONPATH'] = str(root)
    env['OMP_NUM_THREADS'] = '1'
    env['MPLBACKEND'] = 'Agg'
    env.pop('PYTHONSTARTUP', None)
    return env


def _copy_repo(dst: Path) -> None:
    def ignore(directory: str, names: List[str]) -> List[str]:
        rel = Path(directory).resolve().relative_to(ROOT.resolve())
        skipped = [n for n in names if n == '__pycache__' or n.endswith('.egg-info')]
        if rel == Path('.'):
            skipped += [n for n in names if n in SKIP_TOP]
        if rel == Path('docs'):
            skipped += [n for n in names if n == '_build']
        return skipped

    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)
    (dst / '.venv').symlink_to(Path(sys.prefix))


@pytest.fixture(scope='module')
def sandbox_base(tmp_path_factory) -> Path:
    """The repository with the demo data, copied once per module."""
    base = tmp_path_factory.mktemp('docs_repo') / 'repo'
    _copy_repo(base)
    subprocess.run([sys.executable, 'tools/make_demo_data.py', '--out', 'data/demo'], cwd=base,
                   env=_env(base), check=True, stdout=subprocess.DEVNULL, timeout=300)
    return base


def _norm(text: str) -> str:
    return ' '.join(text.split())


def check_output(expected: str, output: str) -> Optional[str]:
    """None if every expected line is found, in order, in the output's lines."""
    got = [_norm(line) for line in output.split('\n')]
    pos = 0
    for line in expected.split('\n'):
        want = _norm(line)
        if not want:
            continue
        while pos < len(got) and want not in got[pos]:
            pos += 1
        if pos == len(got):
            return want
        pos += 1
    return None


def test_check_output():
    assert check_output('a 1\nb  2', 'x\na 1 y\nz\nb 2\n') is None
    assert check_output('b 2\na 1', 'a 1\nb 2') == 'a 1'   # order matters
    assert check_output('5,727,528', '5,727,529') == '5,727,528'


def run_page(page: Path, base: Path, workdir: Path) -> Optional[str]:
    """Run a page's blocks in order in its own copy of ``base``; None when
    all pass, else what failed."""
    repo = workdir / 'repo'
    shutil.copytree(base, repo, symlinks=True)
    env = _env(repo)
    for n, block in enumerate(BLOCKS[page]):
        if block.lang not in RUN_LANGS or block.not_run is not None:
            continue
        if block.lang == 'bash':
            cmd = ['bash', '-e', '-o', 'pipefail', '-c', block.code]
        else:
            script = workdir / f'block{n}.py'
            script.write_text(block.code)
            cmd = [sys.executable, str(script)]
        try:
            proc = subprocess.run(cmd, cwd=repo, env=env, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f'{block.where} ran longer than {BLOCK_TIMEOUT_S} s:\n{block.code}'
        if proc.returncode:
            return (f'{block.where} exited with {proc.returncode}:\n{block.code}\n'
                    f'--- output ---\n{proc.stdout[-6000:]}')
        if block.expected is not None:
            missing = check_output(block.expected, proc.stdout)
            if missing is not None:
                return (f'{block.where}: the output contradicts the checked figure {missing!r}:'
                        f'\n{proc.stdout[-4000:]}')
    return None


@pytest.fixture(scope='module')
def page_runs(sandbox_base, tmp_path_factory):
    """All pages, started at once on two workers (each block is one process;
    the pages that train run first), so the module takes the time of the
    longest half rather than the sum."""
    trains = {page: sum(b.code.count('tools/train.py') for b in BLOCKS[page]
                        if b.lang in RUN_LANGS and b.not_run is None) for page in RUN_PAGES}
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {page: pool.submit(run_page, page, sandbox_base, tmp_path_factory.mktemp('page'))
               for page in sorted(RUN_PAGES, key=lambda p: -trains[p])}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize('page', RUN_PAGES, ids=_ids(RUN_PAGES))
def test_page_runs(page, page_runs):
    """Each page's blocks, in order, in its own copy of the repository."""
    failure = page_runs[page].result()
    assert failure is None, failure
