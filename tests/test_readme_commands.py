"""The README's commands work as written. Each shell line of its fenced blocks (and each command in its code spans)
is run where CI can run it (making the venv), else checked against what it names: a ``basicsr`` command line
against that command's own parser (every flag, choice and type), ``-opt`` files against the checkout, ``make``
targets against the Makefile, ``pip install`` extras and pins against setup.py. The ``basicsr`` lines of docs/'s
shell blocks get the parser check too, and docs/options.md's ``basicsr check`` examples are what it prints."""
import glob
import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from dvmsr_mma.cli import COMMANDS, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
FENCE = re.compile(r'^```(?:bash|sh|shell)\n(.*?)^```', re.MULTILINE | re.DOTALL)
SPAN = re.compile(r'`((?:basicsr|python|pip|make) [^`]+)`')


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def shell_lines(text):
    """The commands of a markdown file's shell blocks: comments dropped, ``a && b`` split."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.splitlines():
            line = re.split(r'\s+#\s', ' ' + line, maxsplit=1)[0].strip()
            lines += [part.strip() for part in line.split('&&') if part.strip()]
    return lines


def readme_commands():
    """The shell lines, and the code spans of the prose that are command lines (with an option, not a mere name such
    as `basicsr test`)."""
    text = read(README)
    spans = [' '.join(span.split()) for span in SPAN.findall(FENCE.sub('', text))]
    return shell_lines(text) + [span for span in spans if ' -' in span or span.startswith('python ')]


def words(command):
    """The command's words as a shell passes them; a synopsis's ``[--flag]`` taken as given, ``a|b`` as ``a``."""
    out = []
    for word in shlex.split(command):
        word = word[1:] if word.startswith('[') else word
        word = word[:-1] if word.endswith(']') and '[' not in word else word  # keeps '.[train]'
        word = word.split('|')[0]
        if word and word != '...':
            out.append(word)
    return out


def parse_basicsr(argv):
    """``basicsr ARGV`` through the parser of that command: the namespace, or the one-line error."""
    command, rest = argv[0], argv[1:]
    if command in ('prep', 'lmdb'):
        from datasets_prep.cli import _parser
        return _parser('basicsr prep').parse_args(['make_lmdb', *rest] if command == 'lmdb' else rest)
    return importlib.import_module(COMMANDS[command]).parser().parse_args(rest)


def test_the_readme_has_commands_to_check():
    """The checks below would pass vacuously if the reader found nothing."""
    commands = readme_commands()
    assert sum(c.startswith('basicsr ') for c in commands) >= 6
    assert any(c.startswith('pip install') for c in commands) and any(c.startswith('make ') for c in commands)
    assert any(c.startswith('basicsr lam ') for c in commands)  # the picture's caption


@pytest.mark.parametrize('command', [c for c in readme_commands() if c.startswith('basicsr ')])
def test_readme_basicsr_lines_parse(command, capsys):
    argv = words(command)
    try:
        args = parse_basicsr(argv[1:])
    except SystemExit:
        pytest.fail(f'{command}: {capsys.readouterr().err.strip()}')
    opt = getattr(args, 'opt', None)
    assert opt is None or os.path.isfile(os.path.join(REPO, opt)), f'{command}: no {opt} in the checkout'


def test_the_lam_caption_names_what_the_demo_writes():
    """The caption's paths are where ``basicsr demo`` puts its validation image and its weights."""
    caption = next(c for c in readme_commands() if c.startswith('basicsr lam '))
    args = parse_basicsr(words(caption)[1:])
    demo = yaml.safe_load(read(os.path.join(REPO, 'dvmsr_mma', 'demo', 'train_demo_x2.yml')))
    assert args.weights == f'demo_output/experiments/{demo["name"]}/models/net_g_latest.pth'
    assert args.input == 'demo_output/datasets/samples/val/chelsea.png'
    source = read(os.path.join(REPO, 'dvmsr_mma', 'demo', '__init__.py'))
    assert "'chelsea'" in source and "osp.join(root, 'samples', 'val')" in source
    assert "osp.join(workdir, 'datasets')" in source


@pytest.mark.parametrize('command', [c for c in readme_commands() if c.startswith('make ')])
def test_readme_make_targets_exist(command):
    target = command.split()[1]
    assert re.search(rf'^{re.escape(target)}:', read(os.path.join(REPO, 'Makefile')), re.M), command


@pytest.mark.parametrize('command', [c for c in readme_commands() if c.startswith('pip install')])
def test_readme_pip_lines_name_what_setup_py_has(command):
    setup = read(os.path.join(REPO, 'setup.py'))
    for word in words(command)[2:]:
        if word.startswith('.['):
            for extra in word[2:-1].split(','):
                assert f"'{extra}': [" in setup, f'{command}: setup.py has no [{extra}] extra'
        elif '==' in word:
            assert f"'{word}'" in setup, f'{command}: setup.py does not pin {word}'
        elif word.startswith('https://'):
            assert word == 'https://download.pytorch.org/whl/cpu', command
        else:
            assert word in ('-e', '--no-build-isolation', '--index-url', 'setuptools', 'wheel', 'torch',
                            'torchvision'), f'{command}: {word}?'

def test_readme_venv_line_runs(tmp_path):
    """``python -m venv .venv && . .venv/bin/activate`` as written, in an empty folder."""
    line = next(c for c in shell_lines(read(README)) if c.startswith('python -m venv'))
    assert line == 'python -m venv .venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', '.venv'], cwd=tmp_path, check=True, timeout=120)
    assert '. .venv/bin/activate' in shell_lines(read(README))
    assert (tmp_path / '.venv' / 'bin' / 'activate').is_file()


@pytest.mark.parametrize('command', [c for c in readme_commands() if c.startswith('python ')])
def test_readme_python_scripts_exist(command):
    script = words(command)[1]
    assert script == '-m' or os.path.isfile(os.path.join(REPO, script)), command


DOC_LINES = [(os.path.basename(path), line) for path in sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
             for line in shell_lines(read(path)) if line.startswith('basicsr ')]


@pytest.mark.parametrize('page, command', DOC_LINES, ids=[f'{p}:{c[:40]}' for p, c in DOC_LINES])
def test_docs_basicsr_lines_parse(page, command, capsys):
    try:
        parse_basicsr(words(command)[1:])
    except SystemExit:
        pytest.fail(f'docs/{page}: {command}: {capsys.readouterr().err.strip()}')


@pytest.mark.parametrize('kind, key, value', [('wrong type', ('datasets', 'train', 'batch_size_per_gpu'), 'four'),
                                              ('not a mapping', ('datasets', 'val'), None),
                                              ('not registered', ('train', 'pixel_opt', 'type'), 'abc')])
def test_options_md_check_examples_are_what_check_prints(kind, key, value, tmp_path, capsys):
    row = re.search(rf'^\| {kind} \| `([^`]+)` \|$', read(os.path.join(REPO, 'docs', 'options.md')), re.M).group(1)
    opt = yaml.safe_load(read(os.path.join(REPO, 'options', 'train_dvmsr_x4_scratch.yml')))
    node = opt
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    path = tmp_path / 'opt.yml'
    path.write_text(yaml.safe_dump(opt))
    assert main(['check', '-opt', str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(row.split('...')[0]), (row, err)
